"""`tsa preprocess --out s3://...` against moto's S3 server (tests/s3_server.py, authentication
on): the same bytes as a local run (every object downloaded and compared), SIGKILL + rerun,
--retry-failed, clear errors for a missing bucket and bad credentials with nothing written,
and `tsa train` / `tsa view` reading the output from the bucket."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REFERENCE_OPTS
from processes import kill_session
from typer.testing import CliRunner

from tsa.cli import app
from tsa.pipeline.run import PreprocessError, run_preprocess

import s3_server  # tests/s3_server.py; s3fs and moto[server] come with the dev extra: a missing one fails

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SPS = REFERENCE_OPTS
BUCKET = "tsa-out"


@pytest.fixture(scope="module")
def server():
    with s3_server.S3Server() as s3, pytest.MonkeyPatch.context() as mp:
        for k, v in s3.env().items():
            mp.setenv(k, v)
        s3.s3.create_bucket(Bucket=BUCKET)
        yield s3


@pytest.fixture(scope="module")
def clips(reference_output):
    return reference_output[0]


@pytest.fixture(scope="module")
def cfg():
    from tsa.configs import load_config

    return load_config("tiny", SPS)


@pytest.fixture(scope="module")
def local_ref(server, ray_own, reference_output):
    """The run's shared local output of these clips and this config (conftest.py), read-only."""
    return reference_output[1]


def objects(server, url: str) -> dict[str, bytes]:
    """Every object under an s3:// prefix: relative name -> bytes."""
    bucket, _, prefix = url[len("s3://"):].partition("/")
    s3 = server.s3
    got = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            got[obj["Key"][len(prefix) + 1:]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return got


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same(server, url: str, folder: Path) -> None:
    remote, local = objects(server, url), files(folder)
    assert sorted(remote) == sorted(local)
    differ = [n for n in local if remote[n] != local[n]]
    assert not differ, f"objects that differ from the local run: {differ}"


@pytest.fixture(scope="module")
def s3_ref(server, local_ref, clips, cfg, tmp_path_factory):
    url = f"s3://{BUCKET}/ref"
    staging = tmp_path_factory.mktemp("staging")
    result = run_preprocess(clips, url, cfg, staging=staging)
    assert result.out == url and result.shards_written == 6
    assert list(staging.iterdir()) == []  # the staging folder is removed at the end
    return url


def test_s3_output_is_byte_identical(server, s3_ref, local_ref):
    assert_same(server, s3_ref, local_ref)
    names = objects(server, s3_ref)
    assert {"dataset.json", "manifest.parquet", "masks.h5", "shards/shard-000000.tar",
            "shards/shard-000000.json"} <= set(names)


def test_rerun_on_s3_does_nothing(server, s3_ref, local_ref, clips, cfg):
    result = run_preprocess(clips, s3_ref, cfg)
    assert result.processed == 0 and result.shards_written == 0 and result.shards_done_before == 6
    assert_same(server, s3_ref, local_ref)


def test_retry_failed_on_s3(server, s3_ref, local_ref, clips, cfg, tmp_path):
    url = f"s3://{BUCKET}/retry"
    server.upload(local_ref, url)
    result = run_preprocess(clips, url, cfg, retry_failed=True)
    # The broken clips fail again the same way: their shards' rows are unchanged, so nothing is
    # uploaded again (pipeline/writers.py), finalize reads nothing, and every object stays.
    assert result.retried > 0 and result.shards_written == 0 and result.shards_unchanged > 0
    assert result.finalize_rebuilt == 0
    assert_same(server, url, local_ref)
    # A tar without its marker (a kill between the two puts) is deleted and its shard redone.
    server.s3.delete_object(Bucket=BUCKET, Key="retry/shards/shard-000001.json")
    result = run_preprocess(clips, url, cfg)
    assert result.shards_written == 1 and result.removed_partial == 1
    assert_same(server, url, local_ref)


def _objects_now(server, prefix):
    return {o["Key"] for o in server.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}


def test_kill_and_rerun_on_s3(server, s3_ref, local_ref, clips, cfg, tmp_path):
    """A real `tsa preprocess` subprocess killed (SIGKILL, its whole session) once its first shard
    is committed; the same command then finishes only the missing shards, and every object
    equals the local run's."""
    url = f"s3://{BUCKET}/killed"
    # Batch size 1 everywhere, so shards finish one by one and the kill lands mid-run (batch
    # sizes are resources, not part of the config fingerprint).
    cmd = [sys.executable, "-m", "tsa", "preprocess", "--src", str(clips), "--out", url,
           "--config", "tiny", "-o", SPS[0], "-o", "preprocess.text.batch_size=1", "-o",
           "preprocess.teacher.batch_size=1", "--staging", str(tmp_path), "--no-progress"]
    # The last decodable clip hangs in its decode child (pipeline/hooks.py) until the kill, so the
    # killed run cannot have finished every shard however fast the machine is.
    from tsa.pipeline.inputs import list_clips

    last = [it for it in list_clips(clips) if it.status == "ok"][-1]
    hooks = tmp_path.parent / f"{tmp_path.name}-hooks.json"
    hooks.write_text(json.dumps({"hang_decode": Path(last.path).name}))
    env = dict(os.environ, TSA_TEST_HOOKS=str(hooks),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if "killed/shards/shard-000000.json" in _objects_now(server, "killed/shards/"):
                break
            time.sleep(0.05)
    finally:
        kill_session(proc)
    log.close()
    assert "killed/shards/shard-000000.json" in _objects_now(server, "killed/"), \
        (tmp_path / "killed.log").read_text()[-3000:]
    assert "killed/manifest.parquet" not in _objects_now(server, "killed/")
    resumed = run_preprocess(clips, url, cfg, staging=tmp_path)  # default batch sizes, in-process Ray
    assert 1 <= resumed.shards_done_before < 6, "the kill did not land mid-run"
    assert resumed.shards_written == 6 - resumed.shards_done_before
    assert_same(server, url, local_ref)
    assert [p.name for p in tmp_path.iterdir()] == ["killed.log"]  # the killed run's staging is gone too


def test_missing_bucket_and_bad_credentials(server, clips, cfg, tmp_path, monkeypatch):
    with pytest.raises(PreprocessError, match=r"s3://no-such-bucket.*not found"):
        run_preprocess(clips, "s3://no-such-bucket/x", cfg, staging=tmp_path)
    for k, v in server.env("AKIAWRONGWRONGWRONG0", "wrongsecret").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(PreprocessError, match=rf"s3://{BUCKET}.*access denied.*AWS_ACCESS_KEY_ID"):
        run_preprocess(clips, f"s3://{BUCKET}/denied", cfg, staging=tmp_path)
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    assert not _objects_now(server, "denied/")
    assert not any(tmp_path.iterdir())  # nothing staged either


def test_missing_extra_is_one_line(clips, cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # absent, whether or not this machine has it
    with pytest.raises(PreprocessError, match=r"gs://b/ds: gs:// needs gcsfs: pip install 'tsa\[gcs\]'"):
        run_preprocess(clips, "gs://b/ds", cfg, staging=tmp_path)
    assert not any(tmp_path.iterdir())


def test_cli_exit_2_names_the_url(server, clips):
    result = CliRunner().invoke(app, ["preprocess", "--src", str(clips), "--out", "s3://no-such-bucket/ds",
                                      "--config", "tiny", "--no-progress"])
    assert result.exit_code == 2
    assert "s3://no-such-bucket" in result.output


def test_src_in_a_bucket(server, local_ref, clips, cfg, tmp_path):
    """--src s3://...: the CSV read through fsspec, clips fetched by the decode workers; the same
    shards as from the local folder (the markers differ only in the `file not found` paths)."""
    from tsa.shards.reader import open_output
    from tsa.pipeline.inputs import select_inputs

    server.s3.create_bucket(Bucket="tsa-src")
    src = server.upload(clips, "s3://tsa-src/openvid")
    picked = select_inputs(src, limit=3).items  # selection only: no clip is fetched
    assert [it.path for it in picked] == [f"{src}/videos/{it.video}" for it in picked]
    out = tmp_path / "out"
    result = run_preprocess(src, out, cfg)
    assert result.counts["ok"] == 5
    ref = files(local_ref)
    got = files(out)
    assert sorted(got) == sorted(ref)
    for name in ref:
        if name.endswith(".tar") or name == "masks.h5":
            assert got[name] == ref[name], name
    a, b = open_output(local_ref).rows(), open_output(out).rows()
    assert [(r["key"], r["status"]) for r in a] == [(r["key"], r["status"]) for r in b]
    missing = next(r for r in b if r["key"] == "broken_missing")
    assert f"{src}/videos/" in missing["error"]


def test_train_and_view_from_s3_output(server, s3_ref, tmp_path):
    result = CliRunner().invoke(app, ["view", "--shards", s3_ref, "--key", "landscape", "--out",
                                      str(tmp_path / "v.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v.png").stat().st_size > 0
    result = CliRunner().invoke(app, ["train", "--shards", s3_ref, "--out", str(tmp_path / "run"), "--config",
                                      "tiny", "--max-steps", "1"])
    assert result.exit_code == 0, result.output
