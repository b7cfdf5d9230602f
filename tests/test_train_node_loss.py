"""Losing a node mid-training (issue 21): a `ray.cluster_utils.Cluster` of 1-CPU nodes on this
machine (a head without CPUs, three workers' nodes, one spare), 2 Ray Train workers, the node of
one of them removed once the first checkpoint is written. Ray Train restarts the workers
(train.max_failures), they continue from the run's last checkpoint by themselves, the console
names the lost node, and the run ends where a straight run ends.

Marked `slow` (four Ray nodes and two worker groups on a shared 2-core machine: about a minute).
"""
from __future__ import annotations

import threading
import time

import pytest
import torch

from tsa.configs import load_config
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.train.command import prepare_job
from tsa.train.launch import launch
from tsa.train.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
STEPS = 12
OVERRIDES = [f"train.max_steps={STEPS}", "train.checkpoint_every=1", "train.keep_last=2", "train.global_batch=4"]


def _job(shards, out):
    job, _ = prepare_job(shards, out, "tiny", OVERRIDES)
    job.tensorboard = False
    return job


def _weights(out):
    from safetensors.torch import load_file

    ckpt = out / f"checkpoint-{STEPS}"
    return {**load_file(str(ckpt / "transformer" / "diffusion_pytorch_model.safetensors")),
            **{f"projector.{k}": v for k, v in load_file(str(ckpt / "projector.safetensors")).items()}}


def _remove_a_workers_node(cluster, nodes, out, removed):
    """When checkpoint-1 is complete: remove the node of one Ray Train worker."""
    import ray

    deadline = time.monotonic() + 240
    while not (out / "checkpoint-1").is_dir() and time.monotonic() < deadline:
        time.sleep(0.02)
    hosting = {a["Address"]["NodeID"] for a in ray._private.state.actors().values()
               if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"}
    for node in nodes:
        if node.node_id in hosting:
            removed.append((node.node_id, (out / f"checkpoint-{STEPS}").exists()))
            cluster.remove_node(node)
            return


def test_a_node_lost_mid_run_restarts_from_the_last_checkpoint_and_ends_like_a_straight_run(tmp_path, capsys):
    import ray
    from ray.cluster_utils import Cluster

    shards = make_synthetic_dataset(tmp_path / "ds", load_config("tiny"), n=8, seed=4)
    straight = tmp_path / "straight"
    launch(_job(shards, straight))  # one process, uninterrupted

    assert not ray.is_initialized()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # workers only on the others
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]  # two for the workers, one spare
    cluster.wait_for_nodes()
    out = tmp_path / "run"
    removed: list = []
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        job = _job(shards, out)
        killer = threading.Thread(target=_remove_a_workers_node, args=(cluster, nodes, out, removed), daemon=True)
        killer.start()
        state = launch(job, workers=2)
        killer.join()
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert removed and removed[0][1] is False, "the node was not removed while the run was going"
    lost = removed[0][0][:8]
    console = capsys.readouterr().err
    restarts = [line for line in console.splitlines() if "restarting the workers" in line]
    assert len(restarts) == 1 and f"node {lost}) was lost" in restarts[0], console
    assert "(restart 1 of 3, train.max_failures)" in restarts[0]
    assert "resuming " in console and state["step"] == STEPS and state["world_size"] == 2

    want, got = read_metrics(straight), read_metrics(out)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # the lines after the checkpoint again, once
    for key in ("loss", "loss_diffusion", "loss_align", "grad_norm"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in want], rel=1e-4, abs=1e-6), key
    a, b = _weights(straight), _weights(out)
    assert a.keys() == b.keys()
    for k in a:  # Adam turns round-off in near-zero gradients into full steps: 1 % of one step
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
