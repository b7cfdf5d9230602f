"""LoRA fine-tuning (train.lora.rank > 0): only adapters and projector train, checkpoints hold
diffusers-format LoRA weights that CogVideoXPipeline.load_lora_weights takes, and resume is exact."""
import pytest
import torch

from tsa.configs import load_config
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.train.command import prepare_job
from tsa.train.launch import launch
from tsa.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LORA = ["train.lora.rank=4", "train.lora.alpha=8", "train.checkpoint_every=2", "train.keep_last=3"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("lora") / "ds", load_config("tiny"), n=8, seed=7)


def _train(shards, out, *overrides, resume=False):
    job, _ = prepare_job(shards, out, None if resume else "tiny", list(overrides), resume=resume)
    job.tensorboard = False
    return launch(job)


def test_lora_trains_only_adapters_and_projector():
    from tsa.models.tiny import resolve_tiny
    from tsa.models.student import build_student

    cfg = resolve_tiny(load_config("tiny", [*LORA, "train.gradient_checkpointing=true"]))
    student = build_student(cfg)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or n.startswith("projector.") for n in trainable)
    assert any(".to_q.lora_A." in n for n in trainable) and any(".to_out.0.lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in student.named_parameters() if p.requires_grad)
    # Gradients reach the adapters through the checkpointed blocks (frozen inputs do not stop them).
    g = cfg.geometry
    c, f, h, w = g.latent_shape
    pred, projected = student(torch.randn(1, c, f, h, w), torch.randn(1, g.text_length, g.text_dim),
                              torch.tensor([500]))
    (pred.square().mean() + projected.square().mean()).backward()
    lora_b = [p.grad for n, p in student.named_parameters() if ".lora_B." in n]
    assert lora_b and all(gr is not None for gr in lora_b) and any(gr.abs().sum() > 0 for gr in lora_b)
    assert all(p.grad is None for n, p in student.named_parameters() if not p.requires_grad)


def test_lora_checkpoint_loads_into_cogvideox_pipeline_and_resumes_exactly(shards, tmp_path):
    from diffusers import CogVideoXPipeline

    from tsa.models.tiny import resolve_tiny
    from tsa.train.checkpoint import load_checkpoint
    from tsa.train.distributed import Dist
    from tsa.models.student import build_student
    from tsa.train.optim import build_lr_scheduler, build_optimizer

    straight, split = tmp_path / "straight", tmp_path / "split"
    _train(shards, straight, "train.max_steps=4", *LORA)
    _train(shards, split, "train.max_steps=2", *LORA)
    _train(shards, split, "train.max_steps=4", resume=True)
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "loss_diffusion", "loss_align", "grad_norm"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-6, abs=1e-9), key

    ckpt = split / "checkpoint-4"
    assert (ckpt / "pytorch_lora_weights.safetensors").is_file() and not (ckpt / "transformer").exists()

    # The pipeline with the LoRA file predicts what the trained student predicts.
    cfg = resolve_tiny(load_config("tiny", LORA))
    student = build_student(cfg)
    optimizer = build_optimizer(student, cfg.train)
    load_checkpoint(ckpt, student, optimizer, build_lr_scheduler(optimizer, cfg.train), Dist())
    pipe = CogVideoXPipeline.from_pretrained(cfg.models.student)
    pipe.load_lora_weights(str(ckpt))
    g = cfg.geometry
    c, f, h, w = g.latent_shape
    x, text, t = torch.randn(1, f, c, h, w), torch.randn(1, g.text_length, g.text_dim), torch.tensor([300])
    student.eval()
    with torch.no_grad():
        want = student.transformer(hidden_states=x, encoder_hidden_states=text, timestep=t, return_dict=False)[0]
        got = pipe.transformer(hidden_states=x, encoder_hidden_states=text, timestep=t, return_dict=False)[0]
        base = CogVideoXPipeline.from_pretrained(cfg.models.student).transformer(
            hidden_states=x, encoder_hidden_states=text, timestep=t, return_dict=False)[0]
    assert not torch.allclose(want, base, atol=1e-6)  # training moved the adapters
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_resuming_a_lora_run_without_lora_is_a_clear_error(shards, tmp_path):
    from tsa.train.checkpoint import CheckpointMismatch

    out = tmp_path / "run"
    _train(shards, out, "train.max_steps=2", *LORA)
    with pytest.raises(CheckpointMismatch, match="holds LoRA adapters, but this config has train.lora.rank=0"):
        _train(shards, out, "train.max_steps=3", "train.lora.rank=0", resume=True)


@pytest.mark.slow
def test_tsa_sample_takes_a_lora_checkpoint(shards, tmp_path):
    """`tsa sample --checkpoint RUN/checkpoint-N` of a LoRA run: the base from RUN/config.yaml
    with the adapters loaded. Adapters made large on purpose change the video; the base alone
    (its transformer folder as the checkpoint) gives another one."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from tsa.cli import app

    def read_frames(path):
        import av

        with av.open(str(path)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])

    out = tmp_path / "run"
    _train(shards, out, "train.max_steps=2", *LORA)
    ckpt = out / "checkpoint-2"
    path = ckpt / "pytorch_lora_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    gen = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(v.shape, generator=gen) * 0.5 if ".lora_B." in k else v) for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=meta)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a ball rolls across the table\n")

    def video(checkpoint, name, *extra):
        res = CliRunner().invoke(app, ["sample", "--checkpoint", str(checkpoint), "--prompts", str(prompts),
                                       "--out", str(tmp_path / name), "--steps", "2", *extra])
        assert res.exit_code == 0, res.output
        return read_frames(next((tmp_path / name).glob("*.mp4")))

    adapted = video(ckpt, "lora")
    from tsa.models.tiny import resolve_tiny

    root = resolve_tiny(load_config("tiny")).models.student
    g = load_config("tiny").geometry
    base = video(root + "/transformer", "base", "--base", root, "--frames", str(g.num_frames),
                 "--height", str(g.height), "--width", str(g.width))
    assert adapted.shape == base.shape
    assert np.abs(adapted.astype(np.int16) - base.astype(np.int16)).mean() > 1.0


def test_lora_adapters_train_at_train_lora_lr_and_old_runs_keep_train_lr(shards, tmp_path):
    """train.lora.lr (1e-4 by default) is the adapters' rate, not train.lr (the full fine-tune's,
    1e-3 in tiny); a LoRA run whose config.yaml predates the key resumes at the rate it trained at."""
    import yaml

    from tsa.train.optim import build_optimizer

    cfg = load_config("tiny", LORA)
    assert cfg.train.lora.lr == 1e-4 and cfg.train.lr == 1e-3
    student = torch.nn.Sequential()
    student.add_module("projector", torch.nn.Linear(2, 2))
    student.add_module("body", torch.nn.Linear(2, 2))
    groups = {g["name"]: g["lr"] for g in build_optimizer(student, cfg.train).param_groups}
    assert groups == {"student": 1e-4, "projector": 1e-3}
    full = {g["name"]: g["lr"] for g in build_optimizer(student, load_config("tiny").train).param_groups}
    assert full == {"student": 1e-3, "projector": 1e-3}

    out = tmp_path / "run"
    _train(shards, out, "train.max_steps=1", *LORA)
    assert read_metrics(out)[0]["lr"] == pytest.approx(0.5e-4)  # warm-up step 1 of 2
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["train"]["lora"]["lr"]  # as written before train.lora.lr existed
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    _train(shards, out, "train.max_steps=2", resume=True)
    assert read_metrics(out)[1]["lr"] == pytest.approx(1e-3)
    assert load_config(out / "config.yaml").train.lora.lr == 1e-3  # written down now
