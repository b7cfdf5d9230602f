"""`tsa train` end to end on the tiny config: CLI, checkpoints in diffusers format, exact
resume, over-fitting, non-finite losses and errors that stop before step 1."""
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from tsa.cli import app
from tsa.configs import load_config
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.train.command import prepare_job
from tsa.train.launch import launch
from tsa.train.metrics import read_metrics


pytestmark = pytest.mark.usefixtures("one_torch_thread")


METRIC_KEYS = {"step", "loss", "loss_diffusion", "loss_align", "lr", "grad_norm", "samples_per_s", "data_wait_frac"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("train_e2e") / "ds", load_config("tiny"), n=8, seed=5)


def _train(shards, out, *overrides, resume=False, config="tiny"):
    job, _ = prepare_job(shards, out, None if resume else config, list(overrides), resume=resume)
    job.tensorboard = False
    return launch(job)


def _cli(*args):
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_cli_trains_and_the_checkpoint_drops_into_cogvideox_pipeline(shards, tmp_path):
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel
    from safetensors.torch import load_file

    from tsa.models.tiny import resolve_tiny

    out = tmp_path / "run"
    code, output = _cli("--shards", shards, "--out", out, "--config", "tiny", "--max-steps", 2,
                        "--checkpoint-every", 1, "-o", "train.keep_last=1")
    assert code == 0, output
    assert "trained to step 2 (4 samples" in output
    lines = read_metrics(out)
    assert [r["step"] for r in lines] == [1, 2] and all(METRIC_KEYS <= r.keys() for r in lines)
    assert lines[0]["lr"] == pytest.approx(5e-4) and lines[1]["lr"] == pytest.approx(1e-3)  # warm-up
    assert 0 <= lines[1]["data_wait_frac"] <= 1 and lines[1]["samples_per_s"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "config.yaml", "metrics.jsonl", "tensorboard"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    saved = load_config(out / "config.yaml")
    assert saved.models.student == "tiny" and saved.train.max_steps == 2  # refs as given, for tsa sample
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["data"]["consumed"] == 4

    base_dir = resolve_tiny(load_config("tiny")).models.student
    trained = CogVideoXTransformer3DModel.from_pretrained(out / "checkpoint-2" / "transformer")
    base = CogVideoXTransformer3DModel.from_pretrained(base_dir, subfolder="transformer")
    moved = [n for n, p in trained.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert moved and "transformer_blocks.0.attn1.to_q.weight" in moved
    assert "mlp.0.weight" in load_file(str(out / "checkpoint-2" / "projector.safetensors"))
    pipe = CogVideoXPipeline.from_pretrained(base_dir, transformer=trained)
    g = load_config("tiny").geometry
    latents = pipe("a ball rolls", num_inference_steps=1, num_frames=g.num_frames, height=g.height, width=g.width,
                   max_sequence_length=g.text_length,
                   output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    assert latents.shape[1:] == (g.latent_shape[1], g.latent_shape[0], g.latent_shape[2], g.latent_shape[3])


def test_resume_gives_the_same_losses_as_straight_training(shards, tmp_path):
    straight = tmp_path / "straight"
    _train(shards, straight, "train.max_steps=6", "train.checkpoint_every=3")
    split = tmp_path / "split"
    _train(shards, split, "train.max_steps=4", "train.checkpoint_every=3")
    shutil.rmtree(split / "checkpoint-4")  # as if the run died after step 4, before saving it
    state = _train(shards, split, "train.max_steps=6", resume=True)
    assert state["step"] == 6 and state["data"]["consumed"] == 12
    a, b = read_metrics(straight), read_metrics(split)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]  # step 4's first line was dropped on resume
    for key in ("loss", "loss_diffusion", "loss_align", "grad_norm", "lr"):
        assert [r[key] for r in b[3:]] == pytest.approx([r[key] for r in a[3:]], rel=1e-6, abs=1e-9), key
    sa = torch.load(straight / "checkpoint-6" / "optimizer.pt", weights_only=True)
    sb = torch.load(split / "checkpoint-6" / "optimizer.pt", weights_only=True)
    for name, st in sa["state"].items():
        assert torch.allclose(st["exp_avg"], sb["state"][name]["exp_avg"], rtol=1e-5, atol=1e-9), name


def test_loss_falls_when_overfitting_two_clips(tmp_path):
    two = make_synthetic_dataset(tmp_path / "two", load_config("tiny"), n=2, seed=1)
    _train(two, tmp_path / "fit", "train.max_steps=20", "train.checkpoint_every=0", "train.data_streams=1",
           "train.lr=3e-3", "train.projector_lr=3e-3")
    m = read_metrics(tmp_path / "fit")
    assert len(m) == 20 and not list((tmp_path / "fit").glob("checkpoint-*"))[:-1]  # only the final one

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    for key, factor in (("loss", 0.7), ("loss_align", 0.5), ("loss_diffusion", 0.9)):
        assert mean(m[-5:], key) < factor * mean(m[:5], key), key


def test_non_finite_losses_are_skipped_then_stop_the_run(shards, tmp_path):
    code, output = _cli("--shards", shards, "--out", tmp_path / "nan", "--config", "tiny", "--max-steps", 8,
                        "-o", "train.lr=1e30", "-o", "train.warmup_steps=0", "-o", "train.grad_clip=0",
                        "-o", "train.max_nonfinite_in_row=3")
    assert code == 1
    assert "3 optimizer steps in a row had a non-finite loss" in output and "lower train.lr" in output
    assert "step skipped (1 in a row)" in output
    assert all(r["nonfinite_skipped"] == 0 for r in read_metrics(tmp_path / "nan"))


def test_mismatched_shards_stop_before_step_one(shards, tmp_path):
    out = tmp_path / "bad"
    code, output = _cli("--shards", shards, "--out", out, "--config", "tiny", "-o", "geometry.num_frames=13")
    assert code == 1
    assert "geometry.latent_shape=[16, 3, 24, 36]" in output and "[16, 4, 24, 36]" in output
    assert not list(out.glob("checkpoint-*")) and not read_metrics(out)


def test_corrupt_sample_stops_or_is_skipped_and_counted(shards, tmp_path):
    from tsa.shards.reader import read_marker

    ds = tmp_path / "ds"
    shutil.copytree(shards, ds)
    marker_path = ds / "shards" / "shard-000001.json"
    marker = json.loads(marker_path.read_text())
    key = sorted(marker["index"])[0]
    del marker["index"][key]["latent.npy"]
    marker_path.write_text(json.dumps(marker))
    assert "latent.npy" not in read_marker(ds, 1)["index"][key]
    args = ["--shards", ds, "--config", "tiny", "--max-steps", 4, "-o", "train.num_workers=1",
            "-o", "train.shuffle_buffer=0"]  # 4 steps read all of shard 1
    code, output = _cli(*args, "--out", tmp_path / "strict")
    assert code == 1 and f"shard-000001.tar: sample '{key}' has no member latent.npy" in output
    assert "Traceback" not in output  # the DataLoader worker's error arrives as a plain message
    code, output = _cli(*args, "--out", tmp_path / "skip", "--skip-bad-samples")
    assert code == 0, output
    # Stream 1 holds shard 1 only: 4 steps read it twice, and its first key is the bad one.
    assert f"skipped bad sample: shard-000001.tar: sample '{key}'" in output and "2 bad samples skipped" in output


def test_run_folder_rules(shards, tmp_path):
    out = tmp_path / "run"
    assert _cli("--shards", shards, "--out", out, "--resume")[0] == 1
    _train(shards, out, "train.max_steps=1")
    code, output = _cli("--shards", shards, "--out", out, "--config", "tiny")
    assert code == 1 and "already holds checkpoints: pass --resume" in output
    # The run was trained with -o train.max_steps=1: plain tiny differs from its config.yaml there.
    code, output = _cli("--shards", shards, "--out", out, "--resume", "--config", "tiny")
    assert code == 1 and "differs from the run's" in output and "train.max_steps: 20 != 1" in output


def test_zero_workers_is_a_usage_error_not_a_traceback(shards, tmp_path):
    code, output = _cli("--shards", shards, "--out", tmp_path / "w0", "--config", "tiny", "--workers", 0)
    assert code == 2 and "--workers" in output and "Traceback" not in output


def test_resume_may_change_the_global_batch(shards, tmp_path):
    """The data order does not depend on the batch size: a resumed run with another
    train.global_batch continues with the next global samples."""
    out = tmp_path / "gb"
    _train(shards, out, "train.max_steps=2")  # global_batch 2: samples 0-3
    state = _train(shards, out, "train.max_steps=3", "train.global_batch=4", resume=True)
    assert state["step"] == 3 and state["global_batch"] == 4
    assert state["data"]["consumed"] == 4 + 4
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


def test_resume_applies_changed_optimizer_settings(shards, tmp_path):
    """-o on --resume changes lr, projector_lr, weight decay and warm-up (the checkpoint's
    optimizer and scheduler state used to bring back the old values while config.yaml said
    otherwise); the step count carries over, so warm-up continues where it was."""
    out = tmp_path / "lr"
    _train(shards, out, "train.max_steps=2", "train.warmup_steps=4")  # lr 1e-3 x 1/4, 2/4
    _train(shards, out, "train.max_steps=4", "train.lr=1e-4", "train.projector_lr=3e-4",
           "train.weight_decay=0.01", resume=True)
    assert [r["lr"] for r in read_metrics(out)] == pytest.approx([2.5e-4, 5e-4, 7.5e-5, 1e-4])
    groups = torch.load(out / "checkpoint-4" / "optimizer.pt", weights_only=True)["param_groups"]
    got = sorted((g["name"], g["lr"], g["weight_decay"]) for g in groups)
    assert [name for name, _, _ in got] == ["projector", "student"]
    # pytest >= 9.2 refuses approx on nested tuples: compare the numbers as one flat list.
    assert [x for _, lr, wd in got for x in (lr, wd)] == pytest.approx([3e-4, 0.01, 1e-4, 0.01])


def test_resume_drops_a_metrics_line_torn_by_a_crash(tmp_path):
    from tsa.train.metrics import MetricsLog

    lines = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "lo')
    MetricsLog(tmp_path, start_step=2, total_steps=4, tensorboard=False, progress=False).close()
    assert read_metrics(tmp_path) == lines


def test_a_failed_resume_leaves_config_yaml_as_it_was(shards, tmp_path):
    out = tmp_path / "run"
    _train(shards, out, "train.max_steps=1")
    before = (out / "config.yaml").read_text()
    code, output = _cli("--shards", shards, "--out", out, "--resume", "--max-steps", 2, "-o", "train.data_streams=1")
    assert code == 1 and "train.data_streams=1 but the checkpoint's data position has 2 streams" in output
    assert (out / "config.yaml").read_text() == before  # the next plain --resume uses the run's config
    code, output = _cli("--shards", shards, "--out", out, "--resume", "--max-steps", 2)
    assert code == 0, output


@pytest.mark.parametrize("override, message", [
    ("align.loss=none", "was saved with a projector, but this config has align.loss=none"),
    ("align.projector_hidden=32", "projector.safetensors does not fit this config's projector"),
])
def test_resume_with_a_config_the_checkpoint_does_not_fit_is_a_clear_error(shards, tmp_path, override, message):
    out = tmp_path / "run"
    _train(shards, out, "train.max_steps=1")
    code, output = _cli("--shards", shards, "--out", out, "--resume", "--max-steps", 2, "-o", override)
    assert code == 1 and message in output and "Traceback" not in output
