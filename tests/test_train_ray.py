"""`tsa train` against Ray as a cluster user meets it (issue 21): a wrong address or a refused
token is one line and exit 2 within seconds with nothing written, `--out` on a bucket is refused
the same way, and when workers fail the decision (restart or stop) and the one error line name
the cause and the node. The end-to-end runs (a healthy 2-worker run's console, a node removed
mid-run) are in tests/test_train_cluster.py and tests/test_train_node_loss.py (slow)."""
from __future__ import annotations

import socket
import time

import pytest
from typer.testing import CliRunner

from tsa.cli import app
from tsa.configs import load_config
from tsa.testing.synthetic import make_synthetic_dataset

# Ray Train's report of a worker whose node went away, as seen on a 2-node cluster
# (ray.cluster_utils.Cluster, node removed mid-run): the message the controller builds.
LOST = """A worker health check failed.
Worker info: Worker(
  actor=Actor(RayTrainWorker, cd7b4b1f9b52203e339a120e01000000),
  metadata=ActorMetadata(
    hostname='gpu-node-7',
    node_id='a6461c40d178ad3ce3a2c1bb3cc9683038e763eb3144e15591f30c05',
    node_ip='10.0.3.17',
    pid=27141,
  ),
  distributed_context=DistributedContext(world_rank=1, world_size=2, local_rank=0, local_world_size=1, node_rank=1),
)"""
DIED = """The actor died unexpectedly before finishing this task.
\tclass_name: RayTrainWorker
\tactor_id: cd7b4b1f9b52203e339a120e01000000
\tpid: 27141
\tip: 10.0.3.17
The actor died because its node has died. Node Id: a6461c40d178ad3ce3a2c1bb3cc9683038e763eb3144e15591f30c05
\tthe actor's node was terminated expectedly: received SIGTERM"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("ray") / "ds", load_config("tiny"), n=4, seed=5)


def _cli(*args):
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    return result.exit_code, result.output, time.perf_counter() - t0  # output: stdout and stderr


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_an_unreachable_cluster_is_one_line_and_exit_2_before_anything_is_written(shards, tmp_path):
    import ray

    assert not ray.is_initialized()
    out = tmp_path / "run"
    code, output, seconds = _cli("--shards", shards, "--out", out, "--config", "tiny", "--workers", 2,
                                 "--ray-address", "127.0.0.1:1")
    assert code == 2, output
    assert _errors(output) == ["error: --ray-address 127.0.0.1:1: cannot reach the Ray cluster "
                               "(ConnectionRefusedError: Connection refused)"]
    assert seconds < 20 and not out.exists() and not ray.is_initialized()


def test_an_unreachable_ray_address_from_the_environment_is_named_as_such(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # as `ray job submit` would set it, here wrong
    code, output, seconds = _cli("--shards", shards, "--out", tmp_path / "run", "--config", "tiny", "--workers", 2)
    assert code == 2 and _errors(output) == ["error: RAY_ADDRESS=127.0.0.1:1: cannot reach the Ray cluster "
                                             "(ConnectionRefusedError: Connection refused)"], output
    assert seconds < 20 and not (tmp_path / "run").exists()


def test_a_cluster_that_refuses_the_token_is_one_line_and_exit_2(shards, tmp_path, monkeypatch):
    """A token-authenticated head answers a client without its token at once (GcsClient raises
    AuthenticationError, seen against a real `RAY_AUTH_MODE=token ray start --head`)."""
    import ray._raylet
    from ray.exceptions import AuthenticationError

    class Refusing:
        def __init__(self, address):
            raise AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect. "
                                      "Note: RAY_AUTH_MODE is currently 'disabled'")

    monkeypatch.setattr(ray._raylet, "GcsClient", Refusing)
    with socket.socket() as head:  # something listens at the address, as a real head does
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        out = tmp_path / "run"
        code, output, seconds = _cli("--shards", shards, "--out", out, "--config", "tiny", "--workers", 2,
                                     "--ray-address", address)
    assert code == 2, output
    (line,) = _errors(output)
    assert line.startswith(f"error: --ray-address {address}: cannot reach the Ray cluster (AuthenticationError: "
                           "RPC error: InvalidAuthToken: Authentication token is missing or incorrect; ")
    assert "RAY_AUTH_MODE=token" in line and "RAY_AUTH_TOKEN" in line
    assert seconds < 20 and not out.exists()


@pytest.mark.parametrize("url", ["s3://bucket/run", "gs://bucket/runs/x", "s3:/bucket/run"])
def test_out_on_object_storage_is_refused_and_no_local_folder_is_made(shards, tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    code, output, _ = _cli("--shards", shards, "--out", url, "--config", "tiny", "--max-steps", 1)
    assert code == 2, output
    (line,) = _errors(output)
    assert line.startswith(f"error: --out {url}: tsa train writes its run folder") and "--shards" in line
    assert not list(tmp_path.iterdir())  # no `s3:` / `gs:` folder
    from tsa.train.command import RunFolderError, prepare_job

    with pytest.raises(RunFolderError):
        prepare_job(shards, url, "tiny", [])
    assert not list(tmp_path.iterdir())


def test_a_lost_worker_is_named_by_node_and_restarts():
    from ray.train import FailureConfig
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from tsa.train.ray_run import TsaFailurePolicy, describe_failure

    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:55201: Connection reset by peer")
    error = WorkerGroupError("...", {0: gloo, 1: WorkerHealthCheckFailedError(LOST, RuntimeError(DIED))})
    line = describe_failure(error, {0: "head (10.0.3.16, node 11111111)", 1: "gpu-node-7 (10.0.3.17, node a6461c40)"})
    assert line == ("worker 1 on node gpu-node-7 (10.0.3.17, node a6461c40) was lost: The actor died because its "
                    "node has died; the actor's node was terminated expectedly: received SIGTERM (and 1 other "
                    "worker(s) stopped with it)")
    policy = TsaFailurePolicy(FailureConfig(max_failures=2))
    assert [policy.make_decision(error) for _ in range(3)] == [FailureDecision.RETRY, FailureDecision.RETRY,
                                                               FailureDecision.RAISE]
    assert TsaFailurePolicy(FailureConfig(max_failures=0)).make_decision(error) == FailureDecision.RAISE


def test_an_error_of_the_run_itself_stops_at_once_and_names_the_node():
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from tsa.train.preflight import StorageError
    from tsa.train.ray_run import TsaFailurePolicy, describe_failure
    from tsa.train.shards import DataError

    nodes = {0: "a (10.0.0.1, node 0a0a0a0a)", 1: "b (10.0.0.2, node 0b0b0b0b)"}
    bad = WorkerGroupError("...", {0: RuntimeError("gloo: Connection closed by peer"),
                                   1: DataError("/s/shards/shard-000001.tar: sample 'clip_17' has no member "
                                                "teacher.npy")})
    assert TsaFailurePolicy(FailureConfig(max_failures=3)).make_decision(bad) == FailureDecision.RAISE
    assert describe_failure(bad, nodes) == ("worker 1 on node b (10.0.0.2, node 0b0b0b0b): DataError: "
                                            "/s/shards/shard-000001.tar: sample 'clip_17' has no member teacher.npy "
                                            "(and 1 other worker(s) stopped with it)")
    storage = StorageError("storage check failed before loading any model:\n  worker 1 on node b (10.0.0.2, "
                           "node 0b0b0b0b): cannot read --shards /data/ds (dataset.json: No such file or directory)")
    line = describe_failure(WorkerGroupError("...", {1: storage}), nodes)
    assert line.startswith("StorageError: storage check failed") and line.count("on node") == 1
    # Any other error of one worker: retried, and named with its node when it stops.
    other = WorkerGroupError("...", {0: ValueError("boom")})
    assert TsaFailurePolicy(FailureConfig(max_failures=1)).make_decision(other) == FailureDecision.RETRY
    assert describe_failure(other, nodes, ["c (10.0.0.3, node 0c0c0c0c)"]) == (
        "worker 0 on node a (10.0.0.1, node 0a0a0a0a): ValueError: boom; node(s) that left the Ray cluster during "
        "the run: c (10.0.0.3, node 0c0c0c0c)")


def test_waiting_for_the_cluster_to_place_workers_again_stops_with_a_clear_line():
    from ray.train import FailureConfig
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import ControllerError

    from tsa.train.ray_run import RESOURCE_WAIT_S, TsaFailurePolicy, describe_failure

    error = ControllerError(WorkerGroupStartupTimeoutError(2))
    policy = TsaFailurePolicy(FailureConfig(max_failures=3))
    decisions = [policy.make_decision(error) for _ in range(int(RESOURCE_WAIT_S // 60))]
    assert decisions[:-1] == [FailureDecision.RETRY] * (len(decisions) - 1) and decisions[-1] == FailureDecision.RAISE
    line = describe_failure(error, {}, ["gpu-node-7 (10.0.3.17, node a6461c40)"])
    assert line.startswith(f"the Ray cluster could not place 2 workers within {RESOURCE_WAIT_S:.0f} s")
    assert line.endswith("node(s) that left the Ray cluster during the run: gpu-node-7 (10.0.3.17, node a6461c40)")


def test_ray_train_still_takes_the_tsa_failure_policy():
    """The policy goes in through Ray Train's factory (train/launch.py `_failure_policy`); a Ray
    release without it would silently retry config and data errors: this test says so."""
    from ray.train import FailureConfig
    from ray.train.v2.api import data_parallel_trainer

    from tsa.train.launch import _failure_policy
    from tsa.train.ray_run import TsaFailurePolicy

    original = data_parallel_trainer.create_failure_policy
    with _failure_policy(console=None, nodes={}) as installed:
        assert installed
        assert isinstance(data_parallel_trainer.create_failure_policy(FailureConfig(max_failures=1)), TsaFailurePolicy)
    assert data_parallel_trainer.create_failure_policy is original
