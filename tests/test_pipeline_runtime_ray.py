"""`tsa preprocess` runtime end to end on a local Ray (tiny config, CPU), with injected faults:
a decode that hangs in native code and a model stage that raises fail only their clips; the
exit status follows preprocess.max_failed_fraction; --retry-failed repairs the output in place
to the bytes of a clean run; the storage check names the node and the path; Ray's noise stays
out of a healthy run's output.

Faults come through pipeline/hooks.py: the shared Ray's hooks file (conftest's `ray_hooks`,
named by TSA_TEST_HOOKS in its workers' environment), edited between runs.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tsa.shards.reader import iter_shard_paths, open_output
from tsa.pipeline.run import run_preprocess
from tsa.testing.sample_clips import make_sample_clips

pytestmark = pytest.mark.slow
# Three actor pools (the paper's layout; configs/tiny.yaml shares one actor) for the clean run and
# the stall: the rows-before-the-text-batch and stall tests are about the pools. The faulty runs
# use tiny's one shared actor, and must still end in the clean run's bytes.
OPTS = ["preprocess.samples_per_shard=2", "preprocess.decode.timeout_s=20", "preprocess.model_actors=separate"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_sample_clips(tmp_path_factory.mktemp("clips"), n=3, seed=1, broken=False)  # landscape portrait tiny


@pytest.fixture(scope="module")
def cfg():
    from tsa.configs import load_config

    return load_config("tiny", OPTS)


@pytest.fixture(scope="module")
def clean(ray_local, ray_hooks, clips, cfg, tmp_path_factory):
    """One fault-free run of `clips`, shared read-only: the reference the repaired output must
    equal, and the rows and progress counts it reported as it went."""
    ray_hooks.write_text("{}")
    out = tmp_path_factory.mktemp("clean") / "out"
    seen, rows = [], []
    result = run_preprocess(clips, out, cfg, on_row=rows.append,
                            on_progress=lambda c: seen.append((len(rows), dict(c))))
    return out, result, rows, seen


def test_faults_fail_their_clips_then_retry_failed_repairs_in_place(ray_local, ray_hooks, clips, cfg, clean, tmp_path,
                                                                   monkeypatch):
    import tsa.pipeline.progress as progress

    def no_counter(ray_module):
        raise AssertionError("a progress counter actor started, but no one watches (no on_progress)")

    monkeypatch.setattr(progress, "start_counter", no_counter)  # these runs pass no on_progress
    cfg = copy.deepcopy(cfg)
    cfg.preprocess.model_actors = "shared"
    ray_hooks.write_text(json.dumps({"hang_decode": "landscape.mp4", "raise_stage": "vae:portrait"}))
    out = tmp_path / "out"
    first = run_preprocess(clips, out, cfg)
    errors = {r["key"]: (r["status"], r["error"]) for r in open_output(out).rows()}
    assert errors["landscape"] == ("failed", "decode timed out after 20 s")
    assert errors["portrait"][0] == "failed" and errors["portrait"][1].startswith(
        "vae: RuntimeError: injected failure")
    assert errors["tiny"] == ("ok", None)
    assert first.counts["failed"] == 2 and first.too_many_failed  # 2 of 3 > 0.5

    ray_hooks.write_text("{}")  # the inputs are "fixed"
    again = run_preprocess(clips, out, cfg)  # a plain rerun leaves finished shards alone
    assert again.processed == 0 and again.too_many_failed
    assert again.finalize_rebuilt == 0  # nothing changed: no marker or sample read to finalize

    # --retry-failed while the faults are still there: shard 0's rows come out as before, so it is
    # not published again (same tar, same marker, nothing uploaded), and finalize reads nothing.
    marker0 = out / "shards" / "shard-000000.json"
    before = (marker0.stat().st_mtime_ns, marker0.read_bytes())
    ray_hooks.write_text(json.dumps({"hang_decode": "landscape.mp4", "raise_stage": "vae:portrait"}))
    same = run_preprocess(clips, out, cfg, retry_failed=True)
    assert same.retried == 2
    if json.loads(marker0.read_bytes())["rows"] == json.loads(before[1])["rows"]:
        assert same.shards_written == 0 and same.shards_unchanged == 1
        assert (marker0.stat().st_mtime_ns, marker0.read_bytes()) == before
        assert same.finalize_rebuilt == 0
    else:  # a machine so loaded that portrait's decode missed its 20 s deadline too: another reason
        assert same.shards_written == 1 and same.shards_unchanged == 0

    ray_hooks.write_text("{}")
    fixed = run_preprocess(clips, out, cfg, retry_failed=True)
    still = {r["key"]: r["error"] for r in open_output(out).rows() if r["status"] != "ok"}
    assert not still, still
    assert fixed.retried == 2 and fixed.processed == 2 and fixed.counts == {"ok": 3, "failed": 0, "skipped": 0,
                                                                            "masks": 3}
    assert not fixed.too_many_failed and fixed.shards_written == 1  # only shard 0 held failed rows

    ref = clean[0]  # a clean run of the same clips and config
    a, b = open_output(ref), open_output(out)
    assert a.keys == b.keys == ["landscape", "portrait", "tiny"]
    assert a.manifest.equals(b.manifest)
    for p, q in zip(iter_shard_paths(ref), iter_shard_paths(out), strict=True):
        assert p.read_bytes() == q.read_bytes(), p.name
        assert p.with_suffix(".json").read_bytes() == q.with_suffix(".json").read_bytes()
    with h5py.File(ref / "masks.h5") as h, h5py.File(out / "masks.h5") as g:
        assert list(h["keys"][:]) == list(g["keys"][:])
        np.testing.assert_array_equal(h["motion"][:], g["motion"][:])
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(p.name for p in (ref / "shards").iterdir())


def test_every_clip_failed_exits_1_with_reasons(ray_local, ray_hooks, tmp_path):
    from typer.testing import CliRunner

    from tsa.cli import app

    ray_hooks.write_text("{}")
    src = make_sample_clips(tmp_path / "broken", n=0, broken=True)
    args = ["preprocess", "--src", str(src), "--out", str(tmp_path / "out"), "--config", "tiny", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "failed (this run)" in res.output and "empty file" in res.output
    assert "every clip" in res.output and "--retry-failed" in res.output
    assert (tmp_path / "out" / "manifest.parquet").exists()  # the output is complete, just bad
    res = CliRunner().invoke(app, args)  # nothing to do, but the output is still mostly failed
    assert res.exit_code == 1, res.output


def test_storage_check_names_node_and_path(ray_local, tmp_path):
    from tsa.pipeline.plan import check_storage

    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"x")
    assert check_storage(ray_local, str(tmp_path), [str(clip)], str(tmp_path / "out")) == []
    lines = check_storage(ray_local, str(tmp_path / "not-here"), [str(clip)], str(tmp_path / "out"))
    assert len(lines) == 1 and lines[0].startswith("node ") and f"cannot see --src {tmp_path / 'not-here'}" in lines[0]


def test_healthy_cli_run_prints_the_plan_and_no_ray_noise(tmp_path):
    """A real `tsa preprocess` process with its own Ray (not the module's)."""
    src = make_sample_clips(tmp_path / "clips", n=1, seed=3, broken=False)
    env = {k: v for k, v in os.environ.items() if k != "TSA_TEST_HOOKS"} | {"COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "tsa", "preprocess", "--src", str(src),
                           "--out", str(tmp_path / "out"), "--config", "tiny", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "plan: 1 node(s)" in text and "models   1 actor(s) VAE + teacher + T5" in text  # configs/tiny.yaml
    assert "1 ok, 0 failed" in text
    assert "core_worker.cc" not in text and "Token authentication" not in text, text


def test_a_stalled_run_stops_with_a_message_naming_what_waits(ray_local, ray_hooks, clips, tmp_path):
    """The state a lost node leaves (the restarted actors hold the CPUs the decode tasks need),
    made on purpose: decode tasks ask for both CPUs of the node, the actor pools for 0.75."""
    from tsa.configs import load_config
    from tsa.pipeline.run import RunStalled, _running_executors

    ray_hooks.write_text("{}")
    # Nothing can ever run here, so a short stall timeout stops it as surely as a long one.
    cfg = load_config("tiny", OPTS + ["preprocess.decode.num_cpus=2", "preprocess.stall_timeout_s=12"])
    with pytest.raises(RunStalled) as e:
        run_preprocess(clips, tmp_path / "out", cfg)
    msg = str(e.value)
    assert msg.startswith("no clip finished for 12 s (preprocess.stall_timeout_s) with 3 of 3 clips left")
    assert "1 alive node(s), 0 dead" in msg and "waiting for resources" in msg, msg
    assert not list((tmp_path / "out" / "shards").glob("*.tar"))  # nothing half-written is published
    assert not _running_executors()  # its Ray Data execution was shut down, not left holding the actors


def test_progress_moves_per_clip_before_the_text_batch_lets_rows_out(clean):
    """tiny's T5 batch (8) holds all 3 clips, so no row reaches the driver before the end; the
    stages' own counts (pipeline/progress.py) still move the bar clip by clip."""
    from tsa.pipeline.progress import STAGES, position

    _, result, rows, seen = clean
    assert result.processed == 3 and len(rows) == 3
    early = [c for written, c in seen if written == 0]
    assert any(c.get("decode", 0) >= 1 for c in early), seen  # moved before any row was written
    assert 0 < max(position(c, 0, 3) for c in early) < 3
    assert {s: seen[-1][1].get(s) for s in STAGES} == {s: 3 for s in STAGES}
    assert all(a.get(s, 0) <= b.get(s, 0) for (_, a), (_, b) in zip(seen, seen[1:]) for s in STAGES)
