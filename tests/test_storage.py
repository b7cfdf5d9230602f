"""Shards in object storage: `tsa train` and `tsa view` on s3:// against a real S3 API on
localhost (moto's server in its own process, authentication on), byte-range reads, exact
resume, clear errors for a missing bucket, bad credentials, a truncated shard and a missing
extra, and relative local paths."""
from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tsa.cli import app
from tsa.configs import load_config
from tsa.shards.reader import open_output, read_marker
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.shards.storage import RemoteStore, is_url, ranges_for, resolve
from tsa.train.command import prepare_job
from tsa.train.data import RankLoader
from tsa.train.dataset_check import open_dataset
from tsa.train.launch import launch
from tsa.train.metrics import read_metrics

import s3_server  # tests/s3_server.py; s3fs and moto[server] come with the dev extra: a missing one fails

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server():
    with s3_server.S3Server() as s3, pytest.MonkeyPatch.context() as mp:
        for k, v in s3.env().items():
            mp.setenv(k, v)
        yield s3


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """8 samples, 4 a shard, and one failed clip (shard 2 has a marker but no sample)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("storage") / "ds", load_config("tiny"), n=8, n_failed=1,
                                  seed=5)


@pytest.fixture(scope="module")
def remote(server, local):
    return server.upload(local, "s3://tsa-test/runs/ds")


def _cli(*args):
    result = CliRunner().invoke(app, list(map(str, args)))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _train(shards, out, *overrides, resume=False):
    job, _ = prepare_job(shards, out, None if resume else "tiny", list(overrides), resume=resume)
    job.tensorboard = False
    return launch(job)


def test_locations_are_resolved_and_urls_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve("out/ds") == str(tmp_path / "out" / "ds")
    assert resolve("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert is_url("gs://b/p") and not is_url("file:///x") and resolve("file:///x/y") == "/x/y"


def test_a_sample_is_read_with_byte_ranges_not_the_whole_tar(remote, local, monkeypatch):
    reads = []
    original = RemoteStore.read_ranges

    def spy(self, path, ranges):
        reads.append((path, list(ranges)))
        return original(self, path, ranges)

    monkeypatch.setattr(RemoteStore, "read_ranges", spy)
    info = open_output(remote)
    assert info.shards == [f"{remote}/shards/shard-00000{i}.tar" for i in range(3)]
    key = info.keys[5]
    names = ["teacher.npy", "preview.jpg", "meta.json"]
    sample = info.read_sample(key, names)
    local_sample = open_output(local).read_sample(key, names)
    assert sample.keys() == local_sample.keys()
    assert np.array_equal(sample["teacher.npy"], local_sample["teacher.npy"])
    assert sample["preview.jpg"] == local_sample["preview.jpg"] and sample["meta.json"] == local_sample["meta.json"]
    # One request: the three members lie next to each other (mask and motion between them).
    (path, ranges), = reads
    tar = local / "shards" / path.rsplit("/", 1)[1]
    entry = read_marker(local, int(path[-10:-4]))["index"][key]
    first = min(entry[n][0] for n in names) - 512
    last = max(entry[n][0] + entry[n][1] for n in names)
    assert ranges == [(first, last)] and last - first < tar.stat().st_size / 2


def test_merged_ranges():
    assert ranges_for([(600, 900), (0, 500), (5000, 6000)], max_gap=100) == [(0, 900), (5000, 6000)]
    assert ranges_for([(0, 500), (500, 900)], max_gap=0) == [(0, 900)]


def test_dataloader_workers_read_s3_like_local(remote, local):
    """Each worker process opens its own S3 filesystem (an fsspec one cannot cross a fork)."""
    cfg = load_config("tiny", ["train.data_streams=2", "train.num_workers=2"])
    from_s3 = RankLoader(open_dataset(remote), cfg, 0, 1)
    assert from_s3.workers == 2
    a = [from_s3.next_item() for _ in range(6)]
    from_s3.close()
    loader = RankLoader(open_dataset(local), load_config("tiny"), 0, 1)
    b = [loader.next_item() for _ in range(6)]
    assert [x["key"] for x in a] == [y["key"] for y in b]
    assert all(torch.equal(x["teacher"], y["teacher"]) and torch.equal(x["latent"], y["latent"]) for x, y in zip(a, b))


def test_train_on_s3_matches_local_and_resumes_exactly(remote, local, tmp_path):
    _train(local, tmp_path / "local", "train.max_steps=4", "train.checkpoint_every=2")
    _train(remote, tmp_path / "s3", "train.max_steps=2", "train.checkpoint_every=2")
    state = _train(remote, tmp_path / "s3", "train.max_steps=4", resume=True)
    assert state["step"] == 4 and state["data"]["consumed"] == 8
    a, b = read_metrics(tmp_path / "local"), read_metrics(tmp_path / "s3")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "loss_diffusion", "loss_align", "grad_norm"):
        assert [r[key] for r in b] == [r[key] for r in a], key  # the same samples, noise and order
    # The data position counts references, not places: a run started on a local copy resumes on S3.
    _train(local, tmp_path / "moved", "train.max_steps=2", "train.checkpoint_every=2")
    _train(remote, tmp_path / "moved", "train.max_steps=4", resume=True)
    assert [r["loss"] for r in read_metrics(tmp_path / "moved")] == [r["loss"] for r in a]


def test_cli_train_and_view_on_s3(remote, local, tmp_path):
    code, output = _cli("train", "--shards", remote, "--out", tmp_path / "run", "--config", "tiny",
                        "--max-steps", 1)
    assert code == 0, output
    assert "trained to step 1 (2 samples" in output

    key = open_output(local).keys[2]
    for where, shards in (("local", local), ("s3", remote)):
        code, output = _cli("view", "--shards", shards, "--key", key, "--out", tmp_path / f"{where}.png",
                            "--ratio", "0.1,0.5")
        assert code == 0, output
    # Locally motion and mask come from masks.h5, from S3 with the sample: the same picture.
    assert np.array_equal(np.asarray(Image.open(tmp_path / "local.png")), np.asarray(Image.open(tmp_path / "s3.png")))

    code, output = _cli("view", "--shards", remote, "--out", tmp_path / "g" / "gallery.html")
    assert code == 0, output
    assert "(8 clips, 1 failed or skipped" in output
    assert len(list((tmp_path / "g" / "gallery_files").glob("*_thumb.png"))) == 8


@pytest.mark.parametrize("command", ["train", "view"])
def test_missing_bucket_is_named_and_nothing_is_written(server, tmp_path, command):
    url = "s3://no-such-bucket/ds"
    out = tmp_path / "out" / ("run" if command == "train" else "clip.png")
    extra = ["--config", "tiny"] if command == "train" else ["--key", "k"]
    code, output = _cli(command, "--shards", url, "--out", out, *extra)
    assert code == 1, output
    assert url in output and "bucket does not exist" in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "view"])
def test_bad_credentials_are_named_and_nothing_is_written(remote, tmp_path, monkeypatch, command):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    out = tmp_path / "out" / ("run" if command == "train" else "clip.png")
    extra = ["--config", "tiny"] if command == "train" else ["--key", "k"]
    code, output = _cli(command, "--shards", remote, "--out", out, *extra)
    assert code == 1, output
    assert f"{remote}/dataset.json: access denied" in output and "AWS_ACCESS_KEY_ID" in output
    assert not (tmp_path / "out").exists()


def _truncated_copy(local, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(local, copy)
    tar = copy / "shards" / "shard-000001.tar"
    marker = read_marker(copy, 1)
    end = max(off + size for entry in marker["index"].values() for off, size in entry.values())
    with open(tar, "r+b") as f:
        f.truncate(end - 1000)
    return copy, end


@pytest.mark.parametrize("where", ["local", "s3"])
def test_truncated_shard_is_found_before_step_one(server, local, tmp_path, where):
    copy, end = _truncated_copy(local, tmp_path)
    shards = str(copy) if where == "local" else server.upload(copy, f"s3://tsa-test/trunc-{os.getpid()}/ds")
    out = tmp_path / "run"
    code, output = _cli("train", "--shards", shards, "--out", out, "--config", "tiny", "--skip-bad-samples")
    assert code == 1, output
    assert (f"1 truncated shard(s): {shards}/shards/shard-000001.tar: {end - 1000} bytes, but its marker "
            f"shard-000001.json records members up to byte {end}") in " ".join(output.split())
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("checkpoint-*"))


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # absent, whether or not this machine has it
    code, output = _cli("view", "--shards", "gs://bucket/ds", "--key", "k", "--out", "/nonexistent/x.png")
    assert code == 1
    # (the runner's output holds stderr twice: mixed into output and on its own)
    assert set(output.strip().splitlines()) == {"tsa view: error: gs://bucket/ds: gs:// needs gcsfs: "
                                                "pip install 'tsa[gcs]'"}


def test_relative_local_paths_work_from_another_directory(local, tmp_path, monkeypatch):
    monkeypatch.chdir(local.parent)
    job, _ = prepare_job(local.name, "run-relative", "tiny", [])
    assert (job.shards, job.out) == (str(local), str(local.parent / "run-relative"))  # as Ray workers need
    code, output = _cli("view", "--shards", local.name, "--key", open_output(local).keys[0],
                        "--out", tmp_path / "c.png")
    assert code == 0, output


@pytest.mark.slow
def test_ray_workers_read_s3(remote, local, tmp_path):
    """Two Ray Train workers inherit the driver's AWS_* variables on one machine."""
    _train(local, tmp_path / "one", "train.max_steps=2", "train.checkpoint_every=0")
    job, cfg = prepare_job(remote, tmp_path / "two", "tiny", ["train.max_steps=2", "train.checkpoint_every=0"])
    job.tensorboard = False
    state = launch(job, workers=2, strategy=cfg.train.strategy)
    assert state["step"] == 2 and state["world_size"] == 2
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
