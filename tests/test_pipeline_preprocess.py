"""`tsa preprocess` end to end on CPU with the tiny config: one reference run, checks of its
arrays against direct model calls, a rerun, config mismatch, and a SIGKILL + resume.

The reference output is the run's shared one (conftest.py `reference_output`, also compared
against by test_preprocess_s3.py); the other runs use the worker's shared Ray. The killed run is
a real `tsa` subprocess with its own Ray, killed with SIGKILL together with every process of its
session.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REFERENCE_OPTS
from processes import kill_session
import torch
from PIL import Image

from tsa.pipeline.decode import decode_clip, frame_indices
from tsa.shards.reader import iter_shard_paths, open_output, read_sample
from tsa.pipeline.run import run_preprocess
from tsa.testing.sample_clips import BROKEN

pytestmark = pytest.mark.slow
SPS = REFERENCE_OPTS  # 12 inputs -> 6 shards: room to kill between two of them


@pytest.fixture(scope="module")
def clips(reference_output):
    return reference_output[0]


@pytest.fixture(scope="module")
def cfg():
    from tsa.configs import load_config

    return load_config("tiny", SPS)


@pytest.fixture(scope="module")
def ref(ray_local, reference_output):
    """The run's one reference output (conftest.py), shared read-only: (out, its RunResult)."""
    return reference_output[1], reference_output[2]


def test_statuses_and_reasons(ref):
    out, result = ref
    rows = open_output(out).rows()
    assert len(rows) == 5 + len(BROKEN) == result.total
    status = {r["key"]: r["status"] for r in rows}
    assert [k for k, s in status.items() if s == "ok"] == ["landscape", "portrait", "tiny", "short", "long"]
    assert all(status[f"broken_{kind}"] == "failed" for kind in BROKEN)
    errors = {r["key"]: r["error"] for r in rows}
    assert "empty file" in errors["broken_empty"] and "file not found" in errors["broken_missing"]
    assert result.counts == {"ok": 5, "failed": len(BROKEN), "skipped": 0, "masks": 5}
    assert sum(result.reasons.values()) == len(BROKEN)
    by_key = {r["key"]: r for r in rows}
    assert by_key["long"]["frames"] == 160 and by_key["long"]["fps"] == pytest.approx(25.0)
    assert by_key["portrait"]["width"] == 144 and by_key["portrait"]["height"] == 256
    assert by_key["short"]["aesthetic score"] == 4.75  # CSV columns are kept


def test_samples_follow_the_declared_schema(ref, cfg):
    out, _ = ref
    info = open_output(out)
    assert info.dataset["num_shards"] == 6 and len(info.shards) == 6
    assert info.dataset["config"]["models"]["vae"] == "tiny"
    assert all(info.dataset["models"][m]["sha256"] for m in ("vae", "text_encoder", "tokenizer", "teacher"))
    with h5py.File(out / "masks.h5") as h5:
        assert [k.decode() for k in h5["keys"][:]] == info.keys
        for i, key in enumerate(info.keys):
            s = read_sample(out, key)
            for name, spec in info.dataset["members"].items():
                if name.endswith(".npy"):
                    assert s[name].dtype == np.dtype(spec["dtype"]) and list(s[name].shape) == spec["shape"]
            np.testing.assert_array_equal(h5["mask"][i], s["mask.npy"])
            meta = s["meta.json"]
            rows = {r["key"]: r for r in info.rows()}
            assert meta["frame_indices"] == frame_indices(rows[key]["frames"], cfg.geometry.num_frames)
            img = Image.open(io.BytesIO(s["preview.jpg"]))
            assert (img.width, img.height) == (4 * 48, 32)  # 4 teacher slots at half of 64 x 96


def test_arrays_equal_direct_model_calls(ref, cfg, clips):
    """The Ray pipeline stores what the models give when called directly on the decoded clip."""
    import copy

    from tsa.models.tiny import resolve_tiny
    from tsa.pipeline.encoders import TextStage, VaeStage
    from tsa.models.teacher import load_teacher, preprocess_frames, teacher_features
    from tsa.core import motion_map, topk_mask

    out, _ = ref
    s = read_sample(out, "portrait")
    clip = decode_clip(str(clips / "videos" / "portrait.mp4"), cfg.geometry)
    pixels01, normalized = preprocess_frames(torch.from_numpy(clip.frames)[None], cfg.geometry)
    motion = motion_map(pixels01, tuple(cfg.geometry.tubelet))
    np.testing.assert_array_equal(s["motion.npy"], motion[0].numpy().astype(np.float16))
    np.testing.assert_array_equal(s["mask.npy"], topk_mask(motion, cfg.preprocess.mask_ratio)[0].numpy())
    resolved = resolve_tiny(copy.deepcopy(cfg))
    teacher = load_teacher(resolved.models.teacher, resolved.geometry)
    feats = teacher_features(teacher, normalized)[0].numpy()
    np.testing.assert_allclose(s["teacher.npy"].astype(np.float32), feats, rtol=2e-3, atol=2e-3)
    latent = VaeStage(cfg.to_dict())({"ok": np.array([True]), "key": np.array(["portrait"]),
                                      "frames": clip.frames[None].copy()})["latent"][0]
    np.testing.assert_array_equal(s["latent.npy"], latent.astype(np.float16))
    text = TextStage(cfg.to_dict()).encode([s["meta.json"]["caption"]])[0]
    np.testing.assert_array_equal(s["text.npy"], text.astype(np.float16))
    assert s["latent.npy"].astype(np.float32).std() > 0 and s["text.npy"].astype(np.float32).std() > 0


def test_rerun_does_nothing_and_other_config_is_refused(ref, clips, cfg, tmp_path):
    import shutil

    from tsa.configs import load_config
    from tsa.shards.dataset_info import OutputMismatch

    out = tmp_path / "out"  # a copy: the reference is read by other modules meanwhile
    shutil.copytree(ref[0], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = run_preprocess(clips, out, cfg)
    assert again.processed == 0 and again.shards_done_before == 6 and again.counts["ok"] == 5
    with pytest.raises(OutputMismatch, match="preprocess.latents: 'sample' -> 'moments'"):
        run_preprocess(clips, out, load_config("tiny", SPS + ["preprocess.latents=moments"]))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_cli_errors_exit_2(ref, clips, tmp_path):
    from typer.testing import CliRunner

    from tsa.cli import app

    out, _ = ref
    runner = CliRunner()
    res = runner.invoke(app, ["preprocess", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                              "--config", "tiny"])
    assert res.exit_code == 2 and "not a folder" in res.output
    res = runner.invoke(app, ["preprocess", "--src", str(clips), "--out", str(out), "--config", "tiny",
                              "-o", SPS[0], "--teacher-dtype", "int8", "--no-progress"])
    assert res.exit_code == 2 and "preprocess.teacher_dtype" in res.output
    res = runner.invoke(app, ["preprocess", "--src", str(clips), "--out", str(out), "--config", "tiny",
                              "-o", "preprocess.mask_ratio=2"])
    assert res.exit_code == 2 and "config error" in res.output


def test_sigkill_then_resume_equals_uninterrupted(ref, clips, cfg, tmp_path):
    ref_out, _ = ref
    out = tmp_path / "out"
    # Batch size 1 everywhere, so rows (and shards) finish one by one and the kill lands mid-run;
    # three separate actor pools, where the reference and the resume share one actor. Both are
    # resources, not part of the config fingerprint: the two layouts must give the same bytes.
    cmd = [sys.executable, "-m", "tsa", "preprocess", "--src", str(clips), "--out", str(out),
           "--config", "tiny", "-o", SPS[0], "-o", "preprocess.text.batch_size=1", "-o",
           "preprocess.teacher.batch_size=1", "-o", "preprocess.model_actors=separate", "--no-progress"]
    # The last decodable clip hangs in its decode child (pipeline/hooks.py) until the kill, so the
    # killed run cannot have finished every shard however fast the machine is.
    from tsa.pipeline.inputs import list_clips

    last = [it for it in list_clips(clips) if it.status == "ok"][-1]
    hooks = tmp_path / "hooks.json"
    hooks.write_text(json.dumps({"hang_decode": Path(last.path).name}))
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, TSA_TEST_HOOKS=str(hooks)))
    marker = out / "shards" / "shard-000000.json"
    deadline = time.monotonic() + 240
    try:
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        kill_session(proc)
    log.close()
    assert marker.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    for tar in (out / "shards").glob("*.tar"):  # anything under a final name is a complete tar
        with tarfile.open(tar) as t:
            t.getmembers()

    resumed = run_preprocess(clips, out, cfg)  # default batch sizes, in-process Ray
    assert 1 <= resumed.shards_done_before < 6, "the kill did not land mid-run"
    assert resumed.shards_written == 6 - resumed.shards_done_before

    a, b = open_output(ref_out), open_output(out)
    assert a.keys == b.keys
    assert a.manifest.equals(b.manifest)
    for key in a.keys:
        x, y = read_sample(ref_out, key), read_sample(out, key)
        assert x.keys() == y.keys()
        for name in x:
            if name.endswith(".npy"):
                np.testing.assert_array_equal(x[name], y[name], err_msg=f"{key} {name}")
            else:
                assert x[name] == y[name], f"{key} {name}"
    for p, q in zip(iter_shard_paths(ref_out), iter_shard_paths(out), strict=True):
        assert p.read_bytes() == q.read_bytes(), p.name
    with h5py.File(ref_out / "masks.h5") as h, h5py.File(out / "masks.h5") as g:
        np.testing.assert_array_equal(h["motion"][:], g["motion"][:])
    assert pq.read_table(out / "manifest.parquet").num_rows == 5 + len(BROKEN)
