"""Before any model loads: size the actor pools from the cluster, and check shared storage.

`make_plan` turns `preprocess.<stage>.actors: auto` into a number from what Ray reports:
a GPU stage gets one actor per "GPU share", share = the sum of the GPU stages' `num_gpus`
(0.5 + 0.25 + 0.25 = 1 GPU at paper defaults), so on 8 GPUs each of VAE, teacher and T5 gets
8 actors and the three pools fill the 8 GPUs exactly (`model_actors: shared`: one pool whose
actors hold the three models, one per share, see `pool_resources`). A CPU stage (`num_gpus: 0`)
gets one actor: more actors would take cores from the decode tasks; set an integer to have more. An
integer in the config always wins. No pool gets more actors than it has batches to run.
Decode tasks are not pooled: Ray Data runs as many as the CPUs left over allow.

`check_storage` runs one task pinned to every alive node: each checks that it can read the
source folder and a sample of the clips the driver can read, and create and delete a file in
`--out`. A node that cannot stops the run with an error naming the node and the path (else
it would mark good clips "file not found"). Answers are keyed by Ray node id, not address:
nodes that share an IP (containers on the host network, `ray.cluster_utils.Cluster`) are
each checked and named apart (`node 10.0.0.7 (worker-3, id 5f1c2a9e)`).
"""
from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from tsa.configs.schema import Config, StageResources, shared_actor_gpus

MODEL_STAGES = ("vae", "teacher", "text")  # pipeline order
CHECK_CLIPS = 8  # clips each node opens in the storage check


def pool_resources(cfg: Config) -> dict[str, StageResources]:
    """The model actor pools in pipeline order, each with what one actor asks for: the three
    `preprocess.<stage>` sections, or for `model_actors: shared` one pool "models" whose actor
    holds the three models: their GPU shares summed, the most CPUs of the three, the smallest
    batch (the VAE's at paper defaults: a batch's frames are what fills memory) and the largest
    integer `actors` (else auto)."""
    p = cfg.preprocess
    if p.model_actors != "shared":
        return {s: getattr(p, s) for s in MODEL_STAGES}
    res = [getattr(p, s) for s in MODEL_STAGES]
    fixed = [r.actors for r in res if isinstance(r.actors, int)]
    return {"models": StageResources(num_gpus=shared_actor_gpus(p), num_cpus=max(r.num_cpus for r in res),
                                     batch_size=min(r.batch_size for r in res),
                                     actors=max(fixed) if fixed else "auto")}


@dataclass
class Plan:
    nodes: int
    cpus: float
    gpus: float
    actors: dict[str, int] = field(default_factory=dict)  # model stage -> pool size
    notes: list[str] = field(default_factory=list)
    clips_per_block: int = 1  # clips a decode task takes in turn (see `blocks`)

    def lines(self, cfg: Config) -> list[str]:
        p = cfg.preprocess
        pools = pool_resources(cfg)
        used_cpus = sum(self.actors[s] * r.num_cpus for s, r in pools.items())
        decode_slots = max(0, math.floor((self.cpus - used_cpus) / p.decode.num_cpus)) if p.decode.num_cpus else 0
        per = f", {self.clips_per_block} clips a task" if self.clips_per_block > 1 else ""
        out = [f"plan: {self.nodes} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs; decode tasks "
               f"{p.decode.num_cpus:g} CPU each (about {decode_slots} at once{per}), timeout {p.decode.timeout_s:g} s"]
        for s, r in pools.items():
            how = "auto" if r.actors == "auto" else "config"
            what = " VAE + teacher + T5" if s == "models" else ""
            out.append(f"  {s:8} {self.actors[s]} actor(s){what} x ({r.num_gpus:g} GPU, {r.num_cpus:g} CPU), batch "
                       f"{r.batch_size} ({how})")
        return out + [f"  note: {n}" for n in self.notes]


def cluster_totals(ray_module) -> tuple[int, float, float]:
    """(alive nodes, CPUs, GPUs) as Ray reports them now."""
    nodes = [n for n in ray_module.nodes() if n.get("Alive")]
    res = ray_module.cluster_resources()
    return len(nodes), float(res.get("CPU", 0)), float(res.get("GPU", 0))


def make_plan(cfg: Config, nodes: int, cpus: float, gpus: float, num_clips: int) -> Plan:
    """Actors per model stage (see the module docstring)."""
    p = cfg.preprocess
    plan = Plan(nodes=nodes, cpus=cpus, gpus=gpus)
    pools = pool_resources(cfg)
    gpu_stages = [s for s, r in pools.items() if r.num_gpus > 0]
    share = sum(pools[s].num_gpus for s in gpu_stages)
    sets = max(1, math.floor(gpus / share + 1e-9)) if share and gpus else 1
    for s, r in pools.items():
        if r.actors != "auto":
            plan.actors[s] = int(r.actors)
            continue
        n = sets if r.num_gpus > 0 else 1
        batches = max(1, math.ceil(num_clips / r.batch_size))
        if n > batches:
            plan.notes.append(f"{s}: {n} actors would fit, {batches} used ({num_clips} clips)")
            n = batches
        plan.actors[s] = n
    used = sum(plan.actors[s] * r.num_cpus for s, r in pools.items())
    slots = max(1, math.floor((cpus - used) / p.decode.num_cpus)) if p.decode.num_cpus and cpus else 1
    plan.clips_per_block = blocks(num_clips, slots)
    asked = sum(plan.actors[s] * pools[s].num_gpus for s in gpu_stages)
    if gpus and asked > gpus + 1e-9:
        plan.notes.append(f"the pools ask for {asked:g} GPUs of {gpus:g}: some actors wait for a GPU")
    return plan


def _blind(path: str) -> bool:
    """Test hook `storage_blind: {"node": NODE_ID, "path": PREFIX}`: on that Ray node, paths
    under PREFIX behave as missing (a node without the shared mount); nothing without the hook."""
    from tsa.pipeline.hooks import test_hook

    spec = test_hook("storage_blind")
    if not spec:
        return False
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 (not in a Ray worker)
        return False
    return node == spec.get("node") and (path == spec.get("path") or path.startswith(spec.get("path", "") + "/"))


MAX_CLIPS_PER_BLOCK = 32


def blocks(num_clips: int, decode_slots: int) -> int:
    """Clips a decode task takes in turn: 1 (a task per clip) until there are 8 clips per decode
    slot, then more, up to 32: Ray Data's cost per task (~7 ms of driver CPU and ~14 kB of driver
    memory with a block per clip, docs/benchmarks.md) is paid per block, while a block's clips wait
    for each other only inside one task, with 8 or more tasks per slot left to balance the load."""
    return max(1, min(MAX_CLIPS_PER_BLOCK, num_clips // (8 * max(1, decode_slots))))


def node_storage_problems(src: str, clips: list[str], out: str) -> list[str]:
    """What this machine cannot do: read `src` and `clips` (which the driver could read), write `out`."""
    problems = []
    if "://" in src:  # a bucket: each decode worker fetches its clips (pipeline/remote_src.py)
        clips = []
    elif _blind(src) or not os.path.isdir(src):
        problems.append(f"cannot see --src {src}")
    for path in clips:
        try:
            if _blind(path):
                raise FileNotFoundError(2, "No such file or directory")
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            problems.append(f"cannot read {path} ({e.strerror or type(e).__name__})")
            break
    if not out:  # an output in a bucket: only the driver writes (shards/remote_out.py)
        return problems
    probe = os.path.join(out, f".tsa-write-check-{uuid.uuid4().hex}")
    try:
        if _blind(out):
            raise FileNotFoundError(2, "No such file or directory")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.unlink(probe)
    except OSError as e:
        problems.append(f"cannot write --out {out} ({e.strerror or type(e).__name__})")
    return problems


def _node_check(src: str, clips: list[str], out: str) -> dict[str, Any]:
    import socket

    return {"host": socket.gethostname(), "problems": node_storage_problems(src, clips, out)}


def readable_sample(paths: list[str], n: int = CHECK_CLIPS) -> list[str]:
    """Up to `n` clips the driver itself can read, spread over the list."""
    step = max(1, len(paths) // (4 * n))
    return [p for p in paths[::step][:4 * n] if os.path.isfile(p)][:n]


def node_label(node: dict[str, Any], host: str = "") -> str:
    """`10.0.0.7 (worker-3, id 5f1c2a9e)`: the address, the host name when known, and the
    start of the Ray node id (two nodes may share an address)."""
    inside = ", ".join(x for x in (host, f"id {node['NodeID'][:8]}") if x)
    return f"{node.get('NodeManagerAddress', '?')} ({inside})"


def check_storage(ray_module, src: str, clips: list[str], out: str, timeout_s: float = 120.0) -> list[str]:
    """Run `node_storage_problems` on every alive node (keyed by node id); returns one line
    per problem, each naming its node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if out:
        os.makedirs(out, exist_ok=True)
    task = ray_module.remote(num_cpus=0)(_node_check)
    nodes = {n["NodeID"]: n for n in ray_module.nodes() if n.get("Alive")}
    refs = {node_id: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
                                  ).remote(src, clips, out) for node_id in nodes}
    ready, _ = ray_module.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    lines = []
    for node_id, ref in refs.items():
        if ref not in ready:
            lines.append(f"node {node_label(nodes[node_id])}: the storage check did not answer within "
                         f"{timeout_s:g} s")
            continue
        res = ray_module.get(ref)
        lines += [f"node {node_label(nodes[node_id], res['host'])}: {p}" for p in res["problems"]]
    return lines
