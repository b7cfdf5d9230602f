"""Validation videos during training (train.validate_every): fixed prompts and seeds, mp4s under
RUN/validation/step-N/ and frame strips in TensorBoard, without touching the training itself."""
import json

import numpy as np
import pytest
import torch

from tsa.configs import load_config
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.train.command import prepare_job
from tsa.train.launch import launch
from tsa.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("val") / "ds", load_config("tiny"), n=8, seed=9)


def _train(shards, out, *overrides, resume=False, tensorboard=False):
    job, _ = prepare_job(shards, out, None if resume else "tiny", list(overrides), resume=resume)
    job.tensorboard = tensorboard
    return launch(job)


def _frames(path):
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.slow
def test_validation_videos_are_fixed_and_leave_training_alone(shards, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na ball rolls across the table\n\nwater flows from a tap into a white sink\n")
    val = ["train.validate_every=2", "train.validation_steps=2", f"train.validation_prompts={prompts}"]
    plain, with_val, again = tmp_path / "plain", tmp_path / "val", tmp_path / "again"
    _train(shards, plain, "train.max_steps=4")
    _train(shards, with_val, "train.max_steps=2", *val, tensorboard=True)
    _train(shards, with_val, "train.max_steps=4", resume=True, tensorboard=True)
    _train(shards, again, "train.max_steps=2", *val)

    # The training is the same with and without validation (its RNG and modes are restored).
    for key in ("loss", "loss_diffusion", "loss_align", "grad_norm"):
        assert [r[key] for r in read_metrics(with_val)] == pytest.approx([r[key] for r in read_metrics(plain)],
                                                                            rel=1e-6, abs=1e-9), key
    g = load_config("tiny").geometry
    for step in (2, 4):
        folder = with_val / "validation" / f"step-{step}"
        record = json.loads((folder / "prompts.json").read_text())
        assert record["step"] == step
        assert [v["prompt"] for v in record["videos"]] == ["a ball rolls across the table",
                                                            "water flows from a tap into a white sink"]
        assert [v["seed"] for v in record["videos"]] == [42, 43]
        for v in record["videos"]:
            assert _frames(folder / v["file"]).shape == (g.num_frames, g.height, g.width, 3)
    # Same weights, same prompts and seeds: the same videos in another run.
    for name in ("00_s42.mp4", "01_s43.mp4"):
        assert np.array_equal(_frames(with_val / "validation" / "step-2" / name),
                              _frames(again / "validation" / "step-2" / name))
    # Training moved the weights between step 2 and step 4.
    assert not np.array_equal(_frames(with_val / "validation" / "step-2" / "00_s42.mp4"),
                              _frames(with_val / "validation" / "step-4" / "00_s42.mp4"))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(with_val / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["validation/00", "validation/01"]
    assert sorted(e.step for e in events.Images("validation/00")) == [2, 4]


def test_bundled_prompts_and_a_missing_file(tmp_path):
    from tsa.configs.schema import ConfigError
    from tsa.train.validate import validation_prompts

    bundled = validation_prompts(load_config("tiny"))
    assert 3 <= len(bundled) <= 8 and all(not p.startswith("#") for p in bundled)
    with pytest.raises(ConfigError, match="train.validation_prompts=.*nope.txt: file not found"):
        validation_prompts(load_config("tiny", [f"train.validation_prompts={tmp_path / 'nope.txt'}"]))


class _Rank:
    """One rank of a 2-worker run, for the Validator (no process group: every collective is local)."""

    active, world = True, 2

    def __init__(self, rank: int, strategy: str):
        self.rank, self.strategy, self.device, self.barriers = rank, strategy, torch.device("cpu"), 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        self.barriers += 1

    def broadcast(self, obj):
        return obj


def _validator(tmp_path, name="tiny", rank=0, strategy="ddp"):
    from tsa.models.student import build_student
    from tsa.models.tiny import resolve_tiny
    from tsa.train.distributed import Dist
    from tsa.train.validate import Validator, embed_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a ball rolls across the table\n")
    cfg = resolve_tiny(load_config(name, ["train.validation_steps=1", f"train.validation_prompts={prompts}"]))
    embeds = embed_prompts(cfg, tmp_path / "run", Dist())
    student = build_student(cfg)
    return Validator(cfg, tmp_path / "run", _Rank(rank, strategy), embeds), student


def _count_forwards(module, seen):
    real = module.forward

    def forward(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(*args, **kwargs)

    module.forward = forward


def test_under_ddp_only_rank_0_renders_and_the_others_wait(tmp_path):
    validator, student = _validator(tmp_path, rank=1, strategy="ddp")
    assert validator.renders_alone
    student.transformer.forward = lambda *a, **k: pytest.fail("rank 1 ran the transformer")
    folder = validator(2, student, student.transformer)
    assert validator.dist.barriers == 1 and not folder.exists() and validator._pipe_parts is None


def test_under_fsdp2_every_rank_runs_the_transformer_and_only_rank_0_decodes(tmp_path):
    validator, student = _validator(tmp_path, rank=1, strategy="fsdp2")
    assert not validator.renders_alone
    seen = []
    _count_forwards(student.transformer, seen)
    folder = validator(2, student, student.transformer)
    assert len(seen) >= 1 and validator.dist.barriers == 1 and not folder.exists()
    assert validator._pipe_parts[0] is None  # no VAE on a rank that does not decode


@pytest.mark.parametrize("name, vae_autocast", [("tiny", True), ("tiny_wan21", False)])
def test_the_vae_decodes_in_its_own_dtype_and_waits_on_the_cpu(tmp_path, monkeypatch, name, vae_autocast):
    """bf16 autocast (on a GPU; here forced on the CPU) covers the transformer; the VAE decodes
    under it only where the family allows a bf16 VAE (CogVideoX), Wan's in fp32. Afterwards the
    VAE is moved back to the CPU."""
    from tsa.train.validate import Validator

    monkeypatch.setattr(Validator, "compute_dtype", property(lambda self: torch.bfloat16))
    validator, student = _validator(tmp_path, name)
    in_transformer, in_decode, moves = [], [], []
    _count_forwards(student.transformer, in_transformer)
    vae, _ = validator._parts()
    real_decode, real_to = vae.decode, vae.to

    def decode(*args, **kwargs):
        in_decode.append((torch.is_autocast_enabled("cpu"), next(vae.parameters()).dtype))
        return real_decode(*args, **kwargs)

    def to(*args, **kwargs):
        moves.append(str(args[0]))
        return real_to(*args, **kwargs)

    vae.decode, vae.to = decode, to
    folder = validator(2, student, student.transformer)
    assert (folder / "prompts.json").is_file() and validator.dist.barriers == 1
    assert in_transformer and all(in_transformer)
    assert in_decode == [(vae_autocast, torch.float32)]
    assert moves[-1] == "cpu"
    assert "decode" not in vars(vae) or vars(vae)["decode"] is decode  # the patch is undone
    assert "forward" in vars(student.transformer)  # our counting wrapper, left as it was
