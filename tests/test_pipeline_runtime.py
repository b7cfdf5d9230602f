"""`tsa preprocess` runtime pieces without Ray: the out-of-order shard assembler, per-clip
model-stage failures, the killable decode, the plan, the storage check, the watchdog, the exit rule."""
from __future__ import annotations

import json
import os
import random
import re
import time

import numpy as np
import pytest

from tsa.shards.layout import shard_marker, shard_tar
from tsa.shards.writer import ShardAssembler, ShardWriter


def _members(i: int) -> dict[str, bytes]:
    rng = np.random.default_rng(i)
    return {"latent.npy": rng.bytes(3000 + 17 * i), "text.npy": rng.bytes(700), "meta.json": b'{"i": %d}' % i}


def _row(i: int, ok: bool = True) -> dict:
    return {"key": f"clip{i}", "status": "ok" if ok else "failed", "error": None if ok else "decode: broken"}


def _in_order(out, n, sps, failed=()):
    for s in range((n + sps - 1) // sps):
        w = ShardWriter(out, s)
        for i in range(s * sps, min(n, (s + 1) * sps)):
            w.add(_row(i, i not in failed), None if i in failed else _members(i))
        w.close()


def test_assembler_any_order_gives_the_in_order_bytes(tmp_path):
    n, sps, failed = 11, 4, {2, 9}
    _in_order(tmp_path / "ref", n, sps, failed)
    order = list(range(n))
    random.Random(0).shuffle(order)
    asm = ShardAssembler(tmp_path / "out", {s: list(range(s * sps, min(n, (s + 1) * sps))) for s in range(3)})
    published = []
    for k, i in enumerate(order):
        if asm.add(i, _row(i, i not in failed), None if i in failed else _members(i)) is not None:
            published.append(i)
        # At most the open shards' spill files exist; nothing is held as samples in memory.
        assert all(p.suffix == ".tmp" or p.suffix in (".tar", ".json") for p in (tmp_path / "out/shards").iterdir())
    assert asm.pending() == {} and len(published) == 3
    for s in range(3):
        assert shard_tar(tmp_path / "out", s).read_bytes() == shard_tar(tmp_path / "ref", s).read_bytes()
        assert shard_marker(tmp_path / "out", s).read_bytes() == shard_marker(tmp_path / "ref", s).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out/shards").iterdir()) == \
        sorted(p.name for p in (tmp_path / "ref/shards").iterdir())  # no spill file left


def test_assembler_keep_replaces_failed_rows_in_place(tmp_path):
    """--retry-failed: a finished shard with failed rows is rebuilt from its stored bytes plus the
    redone rows, equal to a shard written whole; the old marker goes before the tar is replaced."""
    from tsa.shards.reader import read_marker

    n, sps = 4, 4
    _in_order(tmp_path / "ref", n, sps)
    out = tmp_path / "out"
    _in_order(out, n, sps, failed={1, 3})
    asm = ShardAssembler(out, {0: [0, 1, 2, 3]})
    assert asm.keep(0, read_marker(out, 0), redo={1, 3}) is None
    assert asm.add(3, _row(3), _members(3)) is None
    assert asm.add(1, _row(1), _members(1)) is not None
    assert shard_tar(out, 0).read_bytes() == shard_tar(tmp_path / "ref", 0).read_bytes()
    assert shard_marker(out, 0).read_bytes() == shard_marker(tmp_path / "ref", 0).read_bytes()


def test_assembler_abort_and_errors(tmp_path):
    asm = ShardAssembler(tmp_path, {0: [0, 1, 2]})
    asm.add(2, _row(2), _members(2))  # early: spilled
    with pytest.raises(ValueError, match="arrived twice"):
        asm.add(2, _row(2), _members(2))
    with pytest.raises(ValueError, match="not part of this run"):
        asm.add(7, _row(7), _members(7))
    assert asm.pending() == {0: 2}
    asm.abort()
    assert list((tmp_path / "shards").iterdir()) == []


def _batch(n: int) -> dict[str, np.ndarray]:
    return {"ok": np.array([True] * (n - 1) + [False]), "key": np.array([f"k{i}" for i in range(n)]),
            "row_json": np.array([json.dumps({"key": f"k{i}", "status": "ok" if i < n - 1 else "failed",
                                              "error": None if i < n - 1 else "decode: x"}) for i in range(n)])}


def test_model_stage_error_fails_only_its_clip():
    from tsa.pipeline.encoders import run_rows

    batch, out, calls = _batch(4), np.zeros(4), []

    def compute(rows):
        calls.append(list(rows))
        if 1 in rows:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out[rows] = 1

    run_rows("vae", batch, compute)
    assert calls == [[0, 1, 2], [0], [1], [2]]  # the batch, then clip by clip
    assert list(batch["ok"]) == [True, False, True, False] and list(out) == [1, 0, 1, 0]
    row = json.loads(batch["row_json"][1])
    assert row["status"] == "failed" and row["error"].startswith("vae: RuntimeError: CUDA out of memory")
    assert json.loads(batch["row_json"][3])["error"] == "decode: x"  # an earlier failure is kept


def test_injected_stage_failure_through_a_real_stage(tmp_path, monkeypatch, tiny_cfg):
    from tsa.pipeline.encoders import TextStage

    hooks = tmp_path / "hooks.json"
    hooks.write_text(json.dumps({"raise_stage": "text:k2"}))
    monkeypatch.setenv("TSA_TEST_HOOKS", str(hooks))
    stage = TextStage(tiny_cfg.to_dict())
    batch = _batch(4)
    batch["caption"] = np.array(["a", "b", "c", "d"])
    res = stage(batch)
    assert list(res["ok"]) == [True, True, False, False]
    assert "injected failure" in json.loads(res["row_json"][2])["error"]
    assert np.abs(res["text"][0]).sum() > 0 and np.abs(res["text"][2]).sum() == 0


def test_decode_timeout_kills_a_native_hang_and_recovers(tmp_path, monkeypatch, tiny_cfg):
    from tsa.pipeline.decode import DecodeError, decode_clip
    from tsa.pipeline.decode_proc import DecodeClient
    from tsa.testing.sample_clips import make_sample_clips

    clips = make_sample_clips(tmp_path / "clips", n=2, seed=1, broken=False)
    a, b = sorted((clips / "videos").iterdir())[:2]
    hooks = tmp_path / "hooks.json"
    hooks.write_text(json.dumps({"hang_decode": a.name}))
    monkeypatch.setenv("TSA_TEST_HOOKS", str(hooks))
    client = DecodeClient()
    try:
        with pytest.raises(DecodeError, match=r"decode timed out after 3 s"):
            client.decode(str(a), tiny_cfg.geometry, 3)
        assert client.proc is None  # the hung child was killed
        got = client.decode(str(b), tiny_cfg.geometry, 120)  # a fresh child takes the next clip
        want = decode_clip(str(b), tiny_cfg.geometry)
        np.testing.assert_array_equal(got.frames, want.frames)
        assert got.indices == want.indices and got.crop_box == want.crop_box and got.fps == want.fps
        with pytest.raises(DecodeError, match="file not found"):
            client.decode(str(tmp_path / "nope.mp4"), tiny_cfg.geometry, 120)
    finally:
        client.kill()


def test_a_decode_deadline_does_not_count_the_childs_start(tmp_path, monkeypatch, tiny_cfg):
    """A fresh decode child that takes 3 s to import (a loaded node) still decodes a clip within a
    2 s deadline: the deadline counts from the request to a ready child."""
    from tsa.pipeline.decode import decode_clip
    from tsa.pipeline.decode_proc import DecodeClient
    from tsa.testing.sample_clips import make_sample_clips

    clips = make_sample_clips(tmp_path / "clips", n=1, seed=1, broken=False)
    clip = sorted((clips / "videos").iterdir())[0]
    hooks = tmp_path / "hooks.json"
    hooks.write_text(json.dumps({"slow_start": 3}))
    monkeypatch.setenv("TSA_TEST_HOOKS", str(hooks))
    client = DecodeClient()
    try:
        t0 = time.monotonic()
        got = client.decode(str(clip), tiny_cfg.geometry, 2)
        assert time.monotonic() - t0 > 3  # the slow start did happen
        np.testing.assert_array_equal(got.frames, decode_clip(str(clip), tiny_cfg.geometry).frames)
    finally:
        client.kill()


def test_plan_sizes_pools_from_the_cluster():
    from tsa.configs import load_config
    from tsa.pipeline.plan import make_plan

    cfg = load_config("cogvideox2b_mtsa", optional=["models.teacher.checkpoint"])
    plan = make_plan(cfg, nodes=2, cpus=128, gpus=16, num_clips=64000)
    assert plan.actors == {"vae": 16, "teacher": 16, "text": 16}  # 0.5 + 0.25 + 0.25 per GPU
    assert sum(plan.actors[s] * getattr(cfg.preprocess, s).num_gpus for s in plan.actors) == 16
    assert make_plan(cfg, 1, 8, 1, 100).actors == {"vae": 1, "teacher": 1, "text": 1}
    cfg = load_config("cogvideox2b_mtsa", ["preprocess.vae.actors=3"], optional=["models.teacher.checkpoint"])
    plan = make_plan(cfg, 1, 64, 8, num_clips=20)
    assert plan.actors == {"vae": 3, "teacher": 5, "text": 2}  # config wins; no more actors than batches
    assert any("text" in n for n in plan.notes)
    lines = plan.lines(cfg)
    assert lines[0].startswith("plan: 1 node(s), 64 CPUs, 8 GPUs") and "vae      3 actor(s)" in lines[1]
    tiny = load_config("tiny", ["preprocess.model_actors=separate", "preprocess.vae.actors=auto"])
    assert make_plan(tiny, 1, 2, 0, 10).actors["vae"] == 1  # a CPU stage: one actor unless told


def test_shared_model_actors_make_one_pool_of_the_three_shares():
    from tsa.configs import ConfigError, load_config
    from tsa.pipeline.plan import make_plan, pool_resources

    opt = ["models.teacher.checkpoint"]
    cfg = load_config("cogvideox2b_mtsa", ["preprocess.model_actors=shared"], optional=opt)
    (name, res), = pool_resources(cfg).items()
    # 0.5 + 0.25 + 0.25 GPU, the most CPUs (1), the smallest batch (the VAE's 1)
    assert (name, res.num_gpus, res.num_cpus, res.batch_size, res.actors) == ("models", 1.0, 1.0, 1, "auto")
    plan = make_plan(cfg, nodes=2, cpus=128, gpus=16, num_clips=64000)
    assert plan.actors == {"models": 16}  # one actor per GPU
    assert "models   16 actor(s) VAE + teacher + T5 x (1 GPU, 1 CPU), batch 1 (auto)" in plan.lines(cfg)[1]
    assert make_plan(cfg, 1, 8, 1, 3).actors == {"models": 1}
    cfg = load_config("cogvideox2b_mtsa", ["preprocess.model_actors=shared", "preprocess.text.actors=3",
                                           "preprocess.teacher.actors=2"], optional=opt)
    assert make_plan(cfg, 1, 64, 8, num_clips=20).actors == {"models": 3}  # the largest integer of the three
    for bad, field in ((["preprocess.model_actors=shared", "preprocess.vae.num_gpus=1"], "1.5 GPUs"),
                       (["preprocess.model_actors=both"], "preprocess.model_actors='both'")):
        with pytest.raises(ConfigError, match=re.escape(field)):
            load_config("cogvideox2b_mtsa", bad, optional=opt)
    two = load_config("cogvideox2b_mtsa", ["preprocess.model_actors=shared", "preprocess.vae.num_gpus=1.5",
                                           "preprocess.teacher.num_gpus=0.25", "preprocess.text.num_gpus=0.25"],
                      optional=opt)
    assert pool_resources(two)["models"].num_gpus == 2  # whole GPUs are fine


def test_a_shared_actor_gives_the_three_stages_outputs_and_failures(tmp_path, monkeypatch, tiny_cfg):
    """SharedModelsStage = VaeStage, TeacherStage, TextStage one after another: same columns, same
    bytes, the same failed rows (a decode failure kept, an injected teacher failure added)."""
    from tsa.configs import load_config
    from tsa.pipeline.encoders import SharedModelsStage, TeacherStage, TextStage, VaeStage

    hooks = tmp_path / "hooks.json"
    hooks.write_text(json.dumps({"raise_stage": "teacher:k1"}))
    monkeypatch.setenv("TSA_TEST_HOOKS", str(hooks))
    g = tiny_cfg.geometry
    rng = np.random.default_rng(0)

    def batch():
        b = _batch(3)
        b["frames"] = rng.integers(0, 256, (3, g.num_frames, g.height, g.width, 3), dtype=np.uint8)
        b["teacher_in"] = rng.standard_normal((3, 3, *g.teacher_input)).astype(np.float32)
        b["caption"] = np.array(["a ball rolls", "honey pours", "x"])
        return b

    one = batch()
    rng = np.random.default_rng(0)
    got = SharedModelsStage(tiny_cfg.to_dict())(one)
    want = batch()
    for stage in (VaeStage, TeacherStage, TextStage):
        want = stage(load_config("tiny").to_dict())(want)
    assert sorted(got) == sorted(want) and "frames" not in got and "teacher_in" not in got
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert list(got["ok"]) == [True, False, False]
    assert "teacher: RuntimeError: injected failure" in json.loads(got["row_json"][1])["error"]
    assert json.loads(got["row_json"][2])["error"] == "decode: x"
    assert np.abs(got["latent"][0]).sum() > 0 and np.abs(got["text"][0]).sum() > 0


def test_storage_problems_name_the_path(tmp_path):
    from tsa.pipeline.plan import node_storage_problems

    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"x")
    assert node_storage_problems(str(tmp_path), [str(clip)], str(tmp_path)) == []
    (tmp_path / "file").write_text("")
    problems = node_storage_problems(str(tmp_path / "src"), [str(tmp_path / "gone.mp4")], str(tmp_path / "file"))
    assert problems[0] == f"cannot see --src {tmp_path / 'src'}"
    assert problems[1].startswith(f"cannot read {tmp_path / 'gone.mp4'}")
    assert problems[2].startswith(f"cannot write --out {tmp_path / 'file'}")


def test_watchdog_names_the_stall():
    from tsa.pipeline.run import RunStalled, iter_with_watchdog

    def rows():
        yield 1
        time.sleep(60)  # a pipeline that stopped producing (the helper thread is a daemon)
        yield 2

    got = []
    with pytest.raises(RunStalled, match="waiting for decode"):
        for r in iter_with_watchdog(rows(), 0.5, lambda s: f"no clip for {s} s; waiting for decode"):
            got.append(r)
    assert got == [1]
    assert list(iter_with_watchdog(iter(range(3)), 5, str)) == [0, 1, 2]

    def broken():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(iter_with_watchdog(broken(), 5, str))


def test_watchdog_polls_and_reports_a_lost_node():
    from tsa.pipeline.run import NodeWatch, RunStalled, iter_with_watchdog

    class FakeRay:
        def __init__(self):
            self.views = [[("a", "10.0.0.1"), ("b", "10.0.0.2")], [("a", "10.0.0.1")]]

        def nodes(self):
            view = self.views.pop(0) if len(self.views) > 1 else self.views[0]
            return [{"NodeID": i, "NodeManagerAddress": addr, "Alive": True} for i, addr in view]

    notices = []
    watch = NodeWatch(FakeRay(), notices.append)

    def rows():
        time.sleep(60)
        yield 1

    with pytest.raises(RunStalled):
        list(iter_with_watchdog(rows(), 1.0, str, poll=watch, poll_s=0.2))
    assert len(notices) == 1 and notices[0].startswith("node 10.0.0.2 (id b) left the Ray cluster; the run goes "
                                                       "on with 1 node(s)")


def test_exit_rule():
    from tsa.pipeline.run import RunResult

    def r(ok, failed, skipped=0, frac=0.5):
        return RunResult(out=None, total=ok + failed + skipped, counts={"ok": ok, "failed": failed,
                                                                        "skipped": skipped},
                         processed=0, shards_written=0, shards_done_before=0, max_failed_fraction=frac)

    assert not r(5, 5).too_many_failed and r(4, 5).too_many_failed
    assert r(0, 3, frac=1.0).too_many_failed  # every clip failed: always non-zero
    assert not r(0, 0, skipped=2).too_many_failed and not r(3, 0).too_many_failed
    assert not r(1, 0, skipped=5).too_many_failed and r(1, 2, skipped=5).too_many_failed


def test_unreachable_cluster_is_a_quick_error_before_writing(tmp_path, tiny_cfg):
    import ray

    from tsa.pipeline.run import PreprocessError, run_preprocess
    from tsa.testing.sample_clips import make_sample_clips

    clips = make_sample_clips(tmp_path / "clips", n=1, seed=1, broken=False)
    assert not ray.is_initialized()
    with pytest.raises(PreprocessError, match=r"--ray-address 127\.0\.0\.1:9: cannot reach the Ray cluster"):
        run_preprocess(clips, tmp_path / "out", tiny_cfg, ray_address="127.0.0.1:9")
    assert not (tmp_path / "out").exists()


def test_an_unreachable_ray_address_from_the_environment_is_named_as_such(tmp_path, tiny_cfg, monkeypatch):
    """As train and sample do: RAY_ADDRESS (as `ray job submit` sets it, here wrong) is checked
    before ray.init's own retries, and the error names the variable, not --ray-address."""
    import time

    import ray

    from tsa.pipeline.run import PreprocessError, run_preprocess
    from tsa.testing.sample_clips import make_sample_clips

    clips = make_sample_clips(tmp_path / "clips", n=1, seed=1, broken=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(PreprocessError, match=r"^RAY_ADDRESS=127\.0\.0\.1:9: cannot reach the Ray cluster \("):
        run_preprocess(clips, tmp_path / "out", tiny_cfg)
    assert time.monotonic() - start < 20 and not ray.is_initialized()
    assert not (tmp_path / "out").exists()


def test_retry_and_overwrite_exclude_each_other(tmp_path, tiny_cfg):
    from tsa.pipeline.run import PreprocessError, run_preprocess
    from tsa.testing.sample_clips import make_sample_clips

    clips = make_sample_clips(tmp_path / "clips", n=1, seed=1, broken=False)
    with pytest.raises(PreprocessError, match="exclude each other"):
        run_preprocess(clips, tmp_path / "out", tiny_cfg, retry_failed=True, overwrite=True)
    with pytest.raises(PreprocessError, match="holds no tsa preprocess output"):
        run_preprocess(clips, tmp_path / "out", tiny_cfg, retry_failed=True)
    assert not os.path.exists(tmp_path / "out")


def test_a_refused_token_is_named(monkeypatch):
    """What `ray start` with token auth answers to a client without its token (seen against a
    real head: GcsClient raises in milliseconds where ray.init retries ~20 s)."""
    import ray._raylet
    from ray.exceptions import AuthenticationError

    from tsa.cluster.connect import refused as _refused

    class Refusing:
        def __init__(self, address):
            raise AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect. "
                                      "Note: RAY_AUTH_MODE is currently 'disabled'")

    class Accepting:
        def __init__(self, address):
            self.cluster_id = "c0ffee"

    monkeypatch.setattr(ray._raylet, "GcsClient", Refusing)
    why = _refused("10.0.0.1:6379")
    assert why.startswith("AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or "
                          "incorrect; ") and "RAY_AUTH_MODE=token" in why
    monkeypatch.setattr(ray._raylet, "GcsClient", Accepting)
    assert _refused("10.0.0.1:6379") is None


def test_a_kill_while_a_retried_shard_is_published_leaves_it_to_be_redone(tmp_path, monkeypatch):
    """--retry-failed replaces a finished shard: its old marker goes first, so a kill before the
    new tar and marker are in place leaves no marker, and the next run redoes the shard whole
    (never an old marker over a new tar, or the reverse)."""
    from tsa.shards.reader import read_marker
    from tsa.shards.writer import remove_partial_shards

    out = tmp_path / "out"
    _in_order(out, 4, 4, failed={2})
    asm = ShardAssembler(out, {0: [0, 1, 2, 3]})
    asm.keep(0, read_marker(out, 0), redo={2})
    real_replace = os.replace

    def killed_at_the_tar_rename(src, dst):
        if str(dst).endswith(".tar"):
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_tar_rename)
    with pytest.raises(KeyboardInterrupt):
        asm.add(2, _row(2), _members(2))
    monkeypatch.setattr(os, "replace", real_replace)
    assert not shard_marker(out, 0).exists()
    removed = {p.name for p in remove_partial_shards(out)}  # what the next run does first
    # (a kept shard's redone rows wait in its spill file until every row is in)
    assert removed == {"shard-000000.tar.tmp", "shard-000000.spill.tmp", "shard-000000.tar"}
    assert list((out / "shards").iterdir()) == []  # shard 0 is not done: redone in full


def _recorded_ray_inits(monkeypatch) -> list:
    """ray.init replaced by a recorder of (address, env_vars); every address answers."""
    import ray

    import tsa.cluster.connect as connect_module

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append((kw["address"],
                                                                (kw["runtime_env"] or {}).get("env_vars"))))
    monkeypatch.setattr(connect_module, "reachable", lambda target: None)  # 10.0.0.9 answers, say
    monkeypatch.setattr(connect_module, "refused", lambda target: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("TSA_CACHE", "/cache/here")
    return calls


def test_no_ray_address_means_ray_address_env_or_a_new_local_ray(monkeypatch):
    """Never a `ray start` cluster that happens to run on this machine (ray.init()'s default)."""
    from tsa.pipeline.run import start_ray

    calls = _recorded_ray_inits(monkeypatch)
    start_ray(None)
    start_ray("local")
    start_ray("auto")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    start_ray(None)
    # The machine's TSA_CACHE goes only to a Ray started here; a submitted job keeps its own runtime_env.
    local = {"TSA_CACHE": "/cache/here"}
    assert calls == [("local", local), ("local", local), ("auto", None), ("10.0.0.9:6379", None)]


@pytest.mark.parametrize("command", ["preprocess", "train", "sample"])
def test_only_a_ray_started_here_gets_this_machines_cache(command, monkeypatch):
    """Every command decides it in cluster/connect.py: a cluster's workers and a job from `ray job
    submit` (RAY_ADDRESS) keep their own TSA_CACHE (this machine's path need not exist there)."""
    from tsa.evaluate import workers
    from tsa.pipeline.run import start_ray
    from tsa.train import launch

    join = {"preprocess": start_ray, "train": launch.connect_ray, "sample": workers.connect_ray}[command]
    calls = _recorded_ray_inits(monkeypatch)
    join(None)
    join("10.0.0.9:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    join(None)
    cache = [(address, (env or {}).get("TSA_CACHE")) for address, env in calls]
    assert cache == [("local", "/cache/here"), ("10.0.0.9:6379", None), ("10.0.0.9:6379", None)]


def test_the_progress_tick_runs_while_rows_flow_and_while_waiting():
    from tsa.pipeline.progress import position
    from tsa.pipeline.run import iter_with_watchdog

    ticks = []

    def rows():  # each row comes only after two ticks ran while it was awaited (not a sleep: on a
        for i in range(3):  # loaded machine a sleep's worth of ticks can be starved)
            seen = len(ticks)
            while len(ticks) < seen + 2:
                time.sleep(0.01)
            yield i

    assert list(iter_with_watchdog(rows(), 10, str, tick=lambda: ticks.append(time.monotonic()), tick_s=0.1)) == \
        [0, 1, 2]
    assert len(ticks) >= 5
    assert position({"decode": 4, "vae": 2}, 0, 4) == 6 / 5
    assert position({"decode": 9, "vae": 9, "teacher": 9, "text": 9}, 9, 4) == 4  # capped at the clips to do


def test_a_retried_shard_whose_rows_come_out_as_before_is_not_rewritten(tmp_path, monkeypatch):
    """--retry-failed republishes only shards whose rows changed: when every retried clip fails
    again the same way, nothing is read from the old tar, written or published."""
    import tsa.shards.writer as writer
    from tsa.shards.reader import read_marker

    out = tmp_path / "out"
    _in_order(out, 4, 4, failed={1, 3})
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").iterdir()}
    monkeypatch.setattr(writer, "_read_at", lambda *a: pytest.fail("a kept row was read"))
    asm = ShardAssembler(out, {0: [0, 1, 2, 3]})
    asm.keep(0, read_marker(out, 0), redo={1, 3})
    assert asm.add(3, _row(3, ok=False)) is None
    assert asm.add(1, _row(1, ok=False)) is None
    assert asm.unchanged == [0] and asm.published == [] and asm.pending() == {}
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").iterdir()} == before

    asm = ShardAssembler(out, {0: [0, 1, 2, 3]})  # one redone row differs: the shard is rebuilt
    asm.keep(0, read_marker(out, 0), redo={1, 3})
    monkeypatch.undo()
    assert asm.add(3, _row(3, ok=False)) is None
    assert asm.add(1, _row(1), _members(1)) is not None and asm.unchanged == []
    _in_order(tmp_path / "ref", 4, 4, failed={3})
    assert shard_tar(out, 0).read_bytes() == shard_tar(tmp_path / "ref", 0).read_bytes()


def test_decode_tasks_take_blocks_of_clips_only_on_large_runs():
    from tsa.configs import load_config
    from tsa.pipeline.plan import blocks, make_plan

    assert blocks(15, 2) == 1 and blocks(159, 10) == 1 and blocks(160, 10) == 2 and blocks(10**6, 80) == 32
    cfg = load_config("cogvideox2b_mtsa", optional=["models.teacher.checkpoint"])
    plan = make_plan(cfg, 1, 96, 8, num_clips=64000)
    assert plan.clips_per_block == 32 and "32 clips a task" in plan.lines(cfg)[0]
    assert make_plan(load_config("tiny"), 1, 2, 0, 12).clips_per_block == 1


def test_no_progress_passes_no_progress_callback(tmp_path, monkeypatch):
    """`--no-progress` hands run_preprocess no `on_progress`, so no counter actor starts
    (pipeline/run.py); the bar's run gets one."""
    from typer.testing import CliRunner

    import tsa.pipeline.run as run
    from tsa.cli import app

    seen = []

    def fake_run(*args, **kwargs):
        seen.append(kwargs["on_progress"])
        raise run.PreprocessError("stopped here by the test")

    monkeypatch.setattr(run, "run_preprocess", fake_run)
    (tmp_path / "src").mkdir()
    args = ["preprocess", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--config", "tiny"]
    for extra in ([], ["--no-progress"]):
        res = CliRunner().invoke(app, args + extra)
        assert res.exit_code == 2 and "stopped here by the test" in res.output, res.output
    assert callable(seen[0]) and seen[1] is None
