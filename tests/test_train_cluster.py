"""`tsa train` as a cluster user runs it (issue 10): relative paths from any folder with Ray
Train workers, FSDP2 sharded checkpoints that resume exactly on the same and on another
number of workers, a requeued command that repeats --config, and --workers the cluster
cannot place."""
import json
import re
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from tsa.cli import app
from tsa.configs import load_config
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("cluster") / "ds", load_config("tiny"), n=8, seed=3)


STRAIGHT = ["--config", "tiny", "-o", "train.checkpoint_every=1", "-o", "train.keep_last=4"]


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory):
    """The reference both strategies must equal step for step: 4 steps in this process."""
    ref = tmp_path_factory.mktemp("straight") / "ref"
    code, output = _cli("--shards", shards, "--out", ref, "--max-steps", 4, *STRAIGHT)
    assert code == 0, output
    return ref


def _cli(*args):
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _losses(out):
    return {r["step"]: (r["loss"], r["loss_diffusion"], r["loss_align"], r["grad_norm"]) for r in read_metrics(out)}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_two_workers_from_relative_paths_resume_exactly_on_two_then_one_worker(shards, tmp_path, monkeypatch,
                                                                               strategy, straight, ray_local):
    """2 workers (relative --shards/--out, as the README writes them) for 2 steps, the same
    command again with --config and --resume to step 3, then 1 worker to step 4 (for FSDP2 from
    the sharded optimizer): every step equals a straight 4-step single-process run."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "ds").symlink_to(shards, target_is_directory=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "prompts.txt").write_text("a ball rolls across the table\n")
    validation = ["-o", "train.validate_every=2", "-o", "train.validation_steps=1",
                  "-o", f"train.validation_prompts={tmp_path / 'prompts.txt'}"]  # must not change the steps
    args = ["--shards", "ds", "--out", "runs/x", "--strategy", strategy, *STRAIGHT, *validation]
    # As a user's terminal shows it (a process of its own: Ray's native lines go to fd 2): each
    # step once, tsa's own lines only, none of Ray's (controller, placement group, worker logs).
    done = subprocess.run([sys.executable, "-m", "tsa", "train", *map(str, args), "--workers", "2",
                           "--max-steps", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert [line.split("  ")[0] for line in lines if line.startswith("step 1/") or line.startswith("step 2/")] == \
        ["step 1/2", "step 2/2"], lines
    own = re.compile(r"^(step \d+/\d+  loss |step \d+: validation videos in |trained to step \d+ )")
    assert all(own.match(line) for line in lines), lines
    run = tmp_path / "elsewhere" / "runs" / "x"
    ckpt = run / "checkpoint-2"
    if strategy == "fsdp2":
        written = sorted(p.name for p in (ckpt / "optimizer").iterdir())
        assert "param_groups.json" in written and len([n for n in written if n.endswith(".safetensors")]) == 2
        assert not (ckpt / "optimizer.pt").exists()  # nothing gathered on rank 0
    else:
        assert (ckpt / "optimizer.pt").is_file() and not (ckpt / "optimizer").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in ckpt.glob("rng-rank*.pt")) == ["rng-rank0.pt", "rng-rank1.pt"]

    code, output = _cli(*args, "--workers", 2, "--max-steps", 3, "--resume")  # the requeued command
    assert code == 0, output
    code, output = _cli(*args, "--workers", 1, "--max-steps", 4, "--resume")
    assert code == 0, output
    assert json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())["world_size"] == 1

    for step in (2, 4):  # by 2 workers (FSDP2: every rank in each forward), then by 1
        videos = json.loads((run / "validation" / f"step-{step}" / "prompts.json").read_text())["videos"]
        assert [v["file"] for v in videos] == ["00_s42.mp4"]
    want, got = _losses(straight), _losses(run)
    assert sorted(got) == [1, 2, 3, 4]
    for step in range(1, 5):
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-6), step


def test_resume_accepts_the_runs_own_config_and_names_the_keys_of_another(shards, tmp_path):
    out = tmp_path / "run"
    common = ["--shards", shards, "--out", out, "-o", "align.tau=0.2"]
    assert _cli(*common, "--config", "tiny", "--max-steps", 1)[0] == 0
    code, output = _cli(*common, "--config", "tiny", "--max-steps", 2, "--resume")
    assert code == 0, output
    assert [r["step"] for r in read_metrics(out)] == [1, 2]

    other = tmp_path / "other.yaml"
    data = load_config("tiny").to_dict()
    data["align"]["ratio"] = 0.3
    data["train"]["lr"] = 5e-4
    import yaml

    other.write_text(yaml.safe_dump(data))
    code, output = _cli("--shards", shards, "--out", out, "--config", other, "--max-steps", 3, "--resume",
                        "-o", "align.tau=0.2")
    assert code == 1
    assert "differs from the run's" in output and "align.ratio: 0.3 != 0.2" in output and "train.lr" in output
    assert "align.tau" not in output  # set by -o: allowed to differ
    # A key set with -o on resume is not a difference (it is the allowed way to change one).
    code, output = _cli(*common, "--config", "tiny", "--max-steps", 3, "--resume", "-o", "train.lr=2e-4")
    assert code == 0, output


@pytest.mark.slow
def test_more_workers_than_the_cluster_has_is_a_clear_error_at_once(shards, tmp_path, ray_local):
    from tsa.train.launch import TrainError, check_workers

    assert check_workers(8, {"GPU": 8.0, "CPU": 96.0}) is True
    assert check_workers(2, {"CPU": 2.0}) is False
    with pytest.raises(TrainError, match="--workers 16 but the Ray cluster has 8 GPU"):
        check_workers(16, {"GPU": 8.0, "CPU": 96.0})
    with pytest.raises(TrainError, match="no GPU and 2 CPU"):
        check_workers(3, {"CPU": 2.0})
    code, output = _cli("--shards", shards, "--out", tmp_path / "w", "--config", "tiny", "--workers", 64)
    assert code == 1 and "--workers 64 but the Ray cluster has no GPU" in output
    assert not (tmp_path / "w" / "checkpoint-1").exists()


class _TwoRanks:
    """Rank 0 of a 2-worker run whose other worker wrote its probe somewhere rank 0 cannot see."""

    rank, world, is_main, active = 0, 2, True, True

    def gather(self, obj):
        return [obj, []]

    def barrier(self):
        pass


def test_storage_check_names_node_and_path(shards, tmp_path):
    from tsa.train.distributed import Dist
    from tsa.train.preflight import StorageError, check_storage, node_name

    cfg = load_config("tiny")
    check_storage(str(shards), str(tmp_path / "ok"), cfg, Dist())
    assert not list((tmp_path / "ok").iterdir())  # the probe is removed

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError) as e:
        check_storage(str(tmp_path / "nowhere"), str(blocker / "out"), cfg, Dist())
    msg = str(e.value)
    assert f"worker 0 on node {node_name()}" in msg
    assert f"cannot read --shards {tmp_path / 'nowhere'}" in msg and f"cannot write --out {blocker / 'out'}" in msg

    cfg.models.student = str(tmp_path / "weights" / "CogVideoX-2b")
    with pytest.raises(StorageError, match=r"models.student=.*weights/CogVideoX-2b: not found"):
        check_storage(str(shards), str(tmp_path / "ok"), cfg, Dist())

    with pytest.raises(StorageError, match=r"is not shared storage: it does not see the files that worker\(s\) 1"):
        check_storage(str(shards), str(tmp_path / "ok"), load_config("tiny"), _TwoRanks())


def test_projector_init_does_not_depend_on_how_the_transformer_loads(monkeypatch):
    import tsa.models.student as model
    from tsa.models.cogvideox import FAMILY
    from tsa.models.tiny import resolve_tiny

    cfg = resolve_tiny(load_config("tiny"))
    first = model.build_student(cfg).projector.state_dict()
    real = FAMILY.load_transformer
    monkeypatch.setattr(FAMILY, "load_transformer", lambda ref: real(ref, low_cpu_mem_usage=False))
    torch.manual_seed(1234)
    torch.randn(100)  # whatever drew from the global RNG before
    second = model.build_student(cfg).projector.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_adamw_is_fused_on_cuda():
    from tsa.train.optim import build_optimizer

    lin = torch.nn.Linear(3, 3)
    assert build_optimizer(lin, load_config("tiny").train, torch.device("cuda")).defaults["fused"] is True
    assert not build_optimizer(lin, load_config("tiny").train).defaults["fused"]


def test_microbatches_are_stacked_straight_into_pinned_memory(monkeypatch):
    """On a GPU the loader's micro-batch tensors are page-locked (no CPU here to pin for real:
    torch.empty's pin flag is recorded and dropped), and equal a plain torch.stack."""
    import tsa.train.data as data

    asked = []
    real_empty = torch.empty

    def empty(*shape, pin_memory=False, **kw):
        asked.append(pin_memory)
        return real_empty(*shape, **kw)

    monkeypatch.setattr(data.torch, "empty", empty)
    parts = [torch.randn(2, 3, dtype=torch.float16) for _ in range(4)]
    pinned = data.stack(parts, pin=True)
    assert asked == [True] and pinned.dtype == torch.float16 and torch.equal(pinned, torch.stack(parts))
    assert torch.equal(data.stack(parts, pin=False), torch.stack(parts)) and asked == [True]
