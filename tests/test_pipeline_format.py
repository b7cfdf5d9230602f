"""The output format (SPEC section 4) through the synthetic maker: writer, reader, finalize."""
from __future__ import annotations

import hashlib
import io
import json

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from tsa.shards.encode import dequantize_int8, quantize_int8
from tsa.shards.layout import MANIFEST_COLUMNS, member_specs, shard_tar
from tsa.shards.reader import NotAnOutput, iter_shard_paths, open_output, read_sample
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.shards.writer import ShardWriter, remove_partial_shards

DATASET_KEYS = {"format_version", "tool_version", "config", "config_fingerprint", "geometry", "frame_rule",
                "latents", "scaling_factor", "teacher_dtype", "mask_ratio", "members", "models",
                "samples_per_shard", "num_shards"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tsa.configs import load_config

    cfg = load_config("tiny")  # samples_per_shard 4
    out = make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "out", cfg, n=9, seed=3, n_failed=2)
    return cfg, out


def test_dataset_json_schema(synth):
    cfg, out = synth
    ds = json.loads((out / "dataset.json").read_text())
    assert DATASET_KEYS <= set(ds)
    g = ds["geometry"]
    assert g["latent_shape"] == [16, 3, 24, 36] and g["text_shape"] == [16, 32]
    assert g["teacher_grid"] == [4, 4, 6] and g["teacher_input"] == [8, 64, 96] and g["teacher_dim"] == 32
    assert ds["config"]["models"]["vae"] == "tiny"  # refs unresolved
    assert ds["num_shards"] == 3 and ds["samples_per_shard"] == 4
    assert ds["latents"] == "sample" and ds["teacher_dtype"] == "float16" and ds["mask_ratio"] == 0.2
    assert set(ds["members"]) == set(member_specs(cfg)) | {"preview.jpg", "meta.json"}


def test_samples_match_declared_members(synth):
    cfg, out = synth
    info = open_output(out)
    members = info.dataset["members"]
    assert len(info.keys) == 9 and len(info.shards) == 3
    for key in info.keys:
        s = read_sample(out, key)
        assert set(s) == set(members)
        for name, spec in members.items():
            if name.endswith(".npy"):
                assert s[name].dtype == np.dtype(spec["dtype"]) and list(s[name].shape) == spec["shape"], name
        img = Image.open(io.BytesIO(s["preview.jpg"]))
        assert img.format == "JPEG" and [img.height, img.width, 3] == members["preview.jpg"]["shape"]
        assert s["meta.json"]["caption"]
        # mask = top-k of motion at the preprocess ratio: round(0.2 * 24) = 5 per frame
        assert (s["mask.npy"].sum(axis=(1, 2)) == 5).all()
        motion = s["motion.npy"].astype(np.float32)
        for f in range(motion.shape[0]):  # top-k per frame
            assert motion[f][s["mask.npy"][f]].min() >= motion[f][~s["mask.npy"][f]].max()


def test_manifest_and_masks(synth):
    _, out = synth
    table = pq.read_table(out / "manifest.parquet")
    assert table.column_names[:len(MANIFEST_COLUMNS)] == MANIFEST_COLUMNS
    rows = table.to_pylist()
    assert len(rows) == 11
    assert [r["status"] for r in rows].count("failed") == 2
    assert all(r["error"] for r in rows if r["status"] == "failed")
    assert [r["shard"] for r in rows] == [i // 4 for i in range(11)]  # input order -> shard
    with h5py.File(out / "masks.h5") as h5:
        keys = [k.decode() for k in h5["keys"][:]]
        assert keys == [r["key"] for r in rows if r["status"] == "ok"]
        assert h5["motion"].dtype == np.float16 and h5["mask"].dtype == bool
        assert h5["motion"].shape == (9, 4, 4, 6)
        i = keys.index(keys[4])
        s = read_sample(out, keys[4], names=["motion.npy", "mask.npy"])
        np.testing.assert_array_equal(h5["motion"][i], s["motion.npy"])
        np.testing.assert_array_equal(h5["mask"][i], s["mask.npy"])


def test_webdataset_reads_shards(synth):
    _, out = synth
    ds = wds.WebDataset([str(p) for p in iter_shard_paths(out)], shardshuffle=False)
    samples = list(ds)
    keys = open_output(out).keys
    assert [s["__key__"] for s in samples] == keys
    first = read_sample(out, keys[0])
    np.testing.assert_array_equal(np.load(io.BytesIO(samples[0]["teacher.npy"]), allow_pickle=False),
                                  first["teacher.npy"])


def test_read_sample_errors(synth, tmp_path):
    _, out = synth
    key = open_output(out).keys[0]
    with pytest.raises(KeyError, match="close matches: " + key):
        read_sample(out, key + "z")
    failed = [r for r in open_output(out).rows() if r["status"] == "failed"][0]["key"]
    with pytest.raises(KeyError, match="failed clip"):
        read_sample(out, failed)
    with pytest.raises(NotAnOutput, match="is not a tsa preprocess output"):
        open_output(tmp_path)


def test_synthetic_is_deterministic(synth, tmp_path):
    cfg, out = synth
    again = make_synthetic_dataset(tmp_path / "again", cfg, n=9, seed=3, n_failed=2)
    for a, b in zip(iter_shard_paths(out), iter_shard_paths(again), strict=True):
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_int8_and_moments_variants(tmp_path, tiny_cfg):
    tiny_cfg.preprocess.teacher_dtype = "int8"
    tiny_cfg.preprocess.latents = "moments"
    out = make_synthetic_dataset(tmp_path / "v", tiny_cfg, n=2)
    s = read_sample(out, open_output(out).keys[0])
    assert s["teacher.npy"].dtype == np.int8 and s["teacher_scale.npy"].shape == (96,)
    assert s["latent_mean.npy"].shape == s["latent_logvar.npy"].shape == (16, 3, 24, 36)
    assert "latent.npy" not in s


def test_int8_quantization_error_is_bounded():
    x = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32) * np.linspace(0.01, 10, 50)[:, None]
    q, scale = quantize_int8(x)
    assert q.dtype == np.int8 and scale.dtype == np.float16 and np.abs(q).max() <= 127
    err = np.abs(dequantize_int8(q, scale) - x)
    assert (err <= scale.astype(np.float32)[:, None] * 0.5 + 1e-6).all()
    zero_q, zero_s = quantize_int8(np.zeros((2, 4), np.float32))
    assert (dequantize_int8(zero_q, zero_s) == 0).all()


def test_unclosed_shard_is_never_visible(tmp_path):
    w = ShardWriter(tmp_path, 0)
    w.add({"key": "a", "status": "ok", "error": None}, {"x.npy": b"123"})
    assert not shard_tar(tmp_path, 0).exists() and list(iter_shard_paths(tmp_path)) == []
    removed = remove_partial_shards(tmp_path)
    assert [p.name for p in removed] == ["shard-000000.tar.tmp"]
    w2 = ShardWriter(tmp_path, 1)
    w2.add({"key": "b", "status": "failed", "error": "broken"})
    marker = w2.close()
    assert marker["num_samples"] == 0 and marker["num_failed"] == 1
    assert [p.name for p in iter_shard_paths(tmp_path)] == ["shard-000001.tar"]


def test_finalize_reads_nothing_when_no_shard_changed_and_only_the_changed_shards_otherwise(tmp_path,
                                                                                             monkeypatch):
    import shutil

    import tsa.shards.finalize as fin
    from tsa.configs import load_config
    from tsa.shards.reader import read_marker

    cfg = load_config("tiny")
    out = make_synthetic_dataset(tmp_path / "out", cfg, n=9, seed=3, n_failed=2)  # finalized once
    grid = tuple(cfg.geometry.teacher_grid)
    manifest = (out / "manifest.parquet").read_bytes()
    real_markers, real_read = fin.read_markers, fin._read_maps
    monkeypatch.setattr(fin, "read_markers", lambda *a: pytest.fail("a marker was read"))
    monkeypatch.setattr(fin, "_read_maps", lambda *a: pytest.fail("a sample was read"))
    report = {}
    counts = fin.finalize(out, 3, grid, report=report)
    assert report == {"rebuilt": 0} and counts == {"ok": 9, "failed": 2, "skipped": 0, "masks": 9}
    assert (out / "manifest.parquet").read_bytes() == manifest  # not even rewritten

    # Shard 1 rewritten (its first ok clip now failed): only shard 1 is read again.
    marker = read_marker(out, 1)
    w = ShardWriter(out, 1)
    tar = out / "shards" / marker["tar"]
    from tsa.shards.reader import read_members

    for i, row in enumerate(marker["rows"]):
        if row["status"] == "ok" and i > 0:
            w.add({k: v for k, v in row.items() if k != "shard"}, read_members(tar, marker["index"][row["key"]],
                                                                              decode=False))
        else:
            w.add({**{k: v for k, v in row.items() if k != "shard"}, "status": "failed", "error": "gone"})
    w.close()
    seen = []
    monkeypatch.setattr(fin, "read_markers", lambda store, d, shards: seen.append(list(shards)) or
                        real_markers(store, d, shards))
    monkeypatch.setattr(fin, "_read_maps", real_read)
    counts = fin.finalize(out, 3, grid, report=report)
    assert seen == [[1]] and report == {"rebuilt": 1} and counts["failed"] == 3

    full = tmp_path / "full"  # the same shards finalized from scratch
    shutil.copytree(out, full)
    (full / "manifest.parquet").unlink()
    (full / "masks.h5").unlink()
    monkeypatch.setattr(fin, "read_markers", real_markers)
    fin.finalize(full, 3, grid)
    assert pq.read_table(out / "manifest.parquet").equals(pq.read_table(full / "manifest.parquet"))
    assert (out / "manifest.parquet").read_bytes() == (full / "manifest.parquet").read_bytes()
    with h5py.File(out / "masks.h5") as a, h5py.File(full / "masks.h5") as b:
        for name in ("keys", "motion", "mask", "shard_rows"):
            np.testing.assert_array_equal(a[name][()], b[name][()])
