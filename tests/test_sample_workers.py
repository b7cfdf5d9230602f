"""`tsa sample --workers N` on fake GPUs (a local Ray with 2 GPUs declared, the pipelines on the
CPU) with the tiny models: the same files and bytes as one worker, a worker that dies loses only
its video, a killed run finishes when rerun; and the loop `tsa sample --benchmark videophy
--limit N` -> the evaluators' files -> `tsa score`."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from conftest import start_local_ray
from score_fixtures import eval_rows, videocon_file
from tsa.configs import load_config
from tsa.evaluate.render import Job
from tsa.evaluate.samples_log import read_samples, write_eval_csv
from tsa.evaluate.workers import PoolEvents, run_jobs
from tsa.models.tiny import resolve_tiny

LIMIT = 3


def _cli(*args: str):
    from tsa.cli import app

    return CliRunner().invoke(app, list(map(str, args)))


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.mp4"))}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fake_gpus():
    """A fresh local Ray declaring 2 GPUs on this CPU machine (each worker takes one)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    start_local_ray(num_gpus=2)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stand-in renderers below
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """RUN/config.yaml (tiny models) and RUN/checkpoint-1/transformer (the base tiny transformer)."""
    cfg = load_config("tiny")
    run = tmp_path_factory.mktemp("run")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    base = Path(resolve_tiny(load_config("tiny")).models.student)
    shutil.copytree(base / "transformer", run / "checkpoint-1" / "transformer")
    return SimpleNamespace(run=run, ckpt=run / "checkpoint-1")


def _sample_args(tiny_run, out: Path, *extra) -> list:
    return ["sample", "--checkpoint", tiny_run.ckpt, "--benchmark", "videophy", "--limit", LIMIT, "--steps", 2,
            "--dtype", "fp32", "--no-progress", "--out", out, *extra]


@pytest.fixture(scope="module")
def one_worker(tiny_run, tmp_path_factory):
    """The reference: `tsa sample --benchmark videophy --limit 3` in this process."""
    out = tmp_path_factory.mktemp("one_worker")
    res = _cli(*_sample_args(tiny_run, out))
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_two_fake_gpus_make_the_same_files_and_bytes(tiny_run, one_worker, fake_gpus, tmp_path):
    out = tmp_path / "two"
    res = _cli(*_sample_args(tiny_run, out, "--workers", 2))
    assert res.exit_code == 0, res.output
    assert "2 worker(s), one GPU each" in res.output
    assert f"{LIMIT} video(s) written, 0 already there" in res.output
    reference = _digests(one_worker)
    assert len(reference) == LIMIT and _digests(out) == reference
    # one line per video, written by the driver (in completion order), the same records otherwise
    key = lambda r: r["file"]  # noqa: E731
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in sorted(_records(out), key=key)] == [strip(r) for r in sorted(_records(one_worker), key=key)]
    assert not list(out.glob(".*.tmp"))


class DyingRenderer:
    """Stand-in pipeline: b"video <file>"; its process dies (as on a lost node or an OOM kill)
    the first time it gets `victim`."""

    def __init__(self, marker: str, victim: str):
        self.marker, self.victim = Path(marker), victim

    def render(self, job: Job) -> bytes:
        time.sleep(0.2)
        if job.file == self.victim and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return f"video {job.file}".encode()


@pytest.mark.slow
def test_a_dead_worker_loses_only_its_video(fake_gpus, tmp_path):
    import functools

    jobs = [Job(f"{i:05d}.mp4", i, f"prompt {i}", 42) for i in range(8)]
    done, notices = [], []
    factory = functools.partial(DyingRenderer, str(tmp_path / "died"), "00003.mp4")
    run_jobs(jobs, factory, 2, PoolEvents(done=lambda job, data, s: done.append((job.file, data)),
                                          notice=notices.append), ray_address=None)
    assert (tmp_path / "died").exists()  # the worker did die on 00003
    assert sorted(done) == [(j.file, f"video {j.file}".encode()) for j in jobs]  # every video exactly once
    died = [n for n in notices if "died" in n]
    assert len(died) == 1 and "00003.mp4 goes back in the queue" in died[0]


class FailingRenderer:
    def render(self, job: Job) -> bytes:
        raise ValueError(f"cannot render {job.prompt!r}")


@pytest.mark.slow
def test_an_error_inside_a_worker_stops_the_run_with_its_message(fake_gpus):
    from tsa.evaluate.workers import WorkerError

    with pytest.raises(WorkerError, match=r"00000\.mp4 \(prompt 0\): .*cannot render 'prompt 0'"):
        run_jobs([Job("00000.mp4", 0, "prompt 0", 42)] * 2, FailingRenderer, 2, PoolEvents(done=lambda *a: None))


@pytest.mark.slow
def test_benchmark_sample_then_score(one_worker, tmp_path):
    """`tsa sample --benchmark videophy --limit 3` -> VideoCon-Physics files of its eval.csv -> `tsa score`."""
    rows = eval_rows(one_worker)
    assert [Path(r["videopath"]).name for r in rows] == [f"{i:05d}_s42_v0.mp4" for i in range(LIMIT)]
    assert [r["caption"] for r in rows][:2] == ["A blender spins, mixing squeezed juice within it.",
                                                "Honey diffusing into warm milk."]
    recs = sorted(_records(one_worker), key=lambda r: r["index"])
    assert recs[0]["prompt"].startswith("In a bright, modern kitchen")  # VideoREPA's upsampled caption
    assert [r["category"] for r in recs] == ["solid_fluid", "fluid_fluid", "solid_fluid"]
    plan = json.loads((one_worker / "sample.json").read_text())
    assert plan["benchmark"] == "videophy" and len(plan["expected"]) == LIMIT
    out = tmp_path / "scored"
    shutil.copytree(one_worker, out)  # the reference folder stays read-only for the other tests
    write_eval_csv(out, read_samples(out))  # the copy's own videopaths
    sa = videocon_file(tmp_path / "sa.csv", out, [0.8, 0.1, 0.6], "SA")  # good: 1 0 1
    pc = videocon_file(tmp_path / "pc.csv", out, [0.2, 0.9, 0.4], "PC")  # good: 0 1 0
    res = _cli("score", out, "--sa", sa, "--pc", pc)
    assert res.exit_code == 0, res.output
    s = json.loads((out / "scores.json").read_text())
    assert s["metrics"]["SA"]["value"] == pytest.approx(200 / 3, abs=1e-4)
    assert s["metrics"]["PC"]["value"] == pytest.approx(100 / 3, abs=1e-4)
    assert s["categories"]["solid_fluid"]["SA"]["value"] == 100.0  # prompts 0 and 2
    assert s["categories"]["solid_fluid"]["PC"]["value"] == 0.0
    assert s["categories"]["fluid_fluid"]["PC"]["value"] == 100.0  # prompt 1


@pytest.mark.slow
def test_killed_mid_run_then_rerun_ends_complete(tiny_run, one_worker, fake_gpus, tmp_path):
    """SIGKILL `tsa sample --workers 2` (driver, local Ray and workers) once the first video is
    recorded; the same command again (here in this process, on the module's Ray) finishes the
    folder with the reference bytes."""
    from processes import kill_session

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tsa", *map(str, _sample_args(tiny_run, out, "--workers", 2))]
    env = {**os.environ, "TSA_CACHE": os.environ["TSA_CACHE"]}
    with (tmp_path / "log1").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            deadline = time.monotonic() + 240
            while not ((out / "samples.jsonl").is_file() and (out / "samples.jsonl").read_text().strip()):
                assert proc.poll() is None, (tmp_path / "log1").read_text()
                assert time.monotonic() < deadline, "no video within 240 s"
                time.sleep(0.05)
        finally:
            kill_session(proc)
    done_before = len(_records(out))
    assert 1 <= done_before < LIMIT, "the kill landed after the run finished"
    rerun = _cli(*_sample_args(tiny_run, out, "--workers", 2))
    assert rerun.exit_code == 0, rerun.output
    assert f"{LIMIT - done_before} video(s) written, {done_before} already there" in rerun.output
    assert _digests(out) == _digests(one_worker)
    assert sorted(r["file"] for r in _records(out)) == sorted(_digests(one_worker))
    assert not list(out.glob(".*.tmp"))
