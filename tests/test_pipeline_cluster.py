"""What a cluster user meets first, on a two-node `ray.cluster_utils.Cluster` of 1-CPU nodes on
this machine: both nodes have the address 127.0.0.1, as containers on the host network do.
The storage check must run on, and name, each node (it keyed its answers by address, so one
node hid the other). A node without the shared mount is simulated with the `storage_blind`
hook (pipeline/hooks.py): on that node id only, paths under the prefix behave as missing.

Marked `slow` (starting two Ray nodes on a shared 2-core machine).
"""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    hooks = tmp_path_factory.mktemp("hooks") / "hooks.json"
    hooks.write_text("{}")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"TSA_TEST_HOOKS": str(hooks)}})
    try:
        yield ray, hooks
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_storage_check_runs_on_every_node_of_one_address(two_nodes, tmp_path):
    from tsa.pipeline.plan import check_storage

    ray, hooks = two_nodes
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2 and len({n["NodeManagerAddress"] for n in nodes}) == 1  # one address, two nodes
    src = tmp_path / "src"
    src.mkdir()
    clip = src / "a.mp4"
    clip.write_bytes(b"x")
    out = tmp_path / "out"
    hooks.write_text("{}")
    assert check_storage(ray, str(src), [str(clip)], str(out)) == []
    for node in nodes:  # whichever node is blind, it is found and named by its id
        hooks.write_text(json.dumps({"storage_blind": {"node": node["NodeID"], "path": str(src)}}))
        lines = check_storage(ray, str(src), [str(clip)], str(out))
        label = f"node {node['NodeManagerAddress']} ("
        assert len(lines) == 2, lines
        assert all(line.startswith(label) and f"id {node['NodeID'][:8]})" in line for line in lines), lines
        assert lines[0].endswith(f"cannot see --src {src}") and f"cannot read {clip}" in lines[1]
    hooks.write_text("{}")


def test_shards_are_written_on_both_nodes_to_the_bytes_of_one_writer(two_nodes, tmp_path, monkeypatch):
    """Writer actors spread over the nodes assemble and publish the shards (the driver sees only
    small rows); the shards, markers and manifest equal those of a single writer."""
    import tsa.pipeline.writers as writers
    from tsa.configs import load_config
    from tsa.pipeline.run import run_preprocess
    from tsa.shards.reader import iter_shard_paths, open_output
    from tsa.testing.sample_clips import make_sample_clips

    ray, hooks = two_nodes
    hooks.write_text("{}")
    clips = make_sample_clips(tmp_path / "clips", n=4, seed=5, broken=False)
    cfg = load_config("tiny", ["preprocess.samples_per_shard=1", "preprocess.text.batch_size=1",
                               "preprocess.teacher.batch_size=1"])
    spread = run_preprocess(clips, tmp_path / "spread", cfg)
    assert spread.shards_written == 4 and len(spread.shards_by_node) == 2, spread.shards_by_node
    monkeypatch.setattr(writers, "writer_count", lambda nodes, shards: 1)
    one = run_preprocess(clips, tmp_path / "one", cfg)
    assert len(one.shards_by_node) == 1
    for p, q in zip(iter_shard_paths(tmp_path / "one"), iter_shard_paths(tmp_path / "spread"), strict=True):
        assert p.read_bytes() == q.read_bytes(), p.name
        assert p.with_suffix(".json").read_bytes() == q.with_suffix(".json").read_bytes()
    assert open_output(tmp_path / "one").manifest.equals(open_output(tmp_path / "spread").manifest)
