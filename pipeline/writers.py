"""Shards written where the rows are: writer actors on the worker nodes, the driver tracks markers.

    ... -> map_batches: T5 (actor pool)
        -> map_batches: route (tasks, on whichever node holds the batch): encode each row's members
           (float16 casts, .npy bytes: `shards.encode.encode_sample`) and hand them to the writer
           actor that owns the row's shard (shard s -> writer s mod K), waiting for it
        -> iter_rows in the driver: one small row per clip (index, manifest row, the shards that
           clip completed), never the clip's arrays

Each writer actor (0 CPUs; writer w on alive node w mod nodes) runs the one `ShardAssembler` of the shards it
owns, so every shard is still written in input order, to the same bytes, and published as
before (tar fsync + rename, then the `.json` marker: the commit point). For an output in a
bucket the writer assembles the shard in its own staging folder on its node, then uploads the
tar and then the marker (shards/remote_out.py). A clip's ~10 MB travels once, from the node
that encoded it to its writer's node, through Ray's object store: the driver's one core is no
longer the ceiling (docs/benchmarks.md, "Preprocess at scale").

`--retry-failed`: a rebuilt shard whose rows come out as before (every retried clip failed again,
with the same reason) is not published again: its old tar and marker stay (`unchanged`).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROUTE_CPUS = 0.25  # a route task encodes a batch and waits for the writers
WRITERS_PER_NODE = 2


def writer_count(nodes: int, shards: int) -> int:
    """Writer actors: WRITERS_PER_NODE per alive node, at most one per shard to write."""
    return max(1, min(shards, WRITERS_PER_NODE * max(1, nodes)))


def summary(marker: dict[str, Any]) -> dict[str, Any]:
    """What the driver keeps of a published marker."""
    return {k: marker[k] for k in ("shard", "bytes", "num_samples", "num_failed", "num_skipped")}


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001
        return "local"


class ShardWriterActor:
    """One writer: the assembler of the shards s with s mod K == its number (Ray actor)."""

    def __init__(self, number: int, out: str, slots: dict[int, list[int]], keep: list[int],
                 redo: list[int], tars: Optional[str] = None, remote_url: Optional[str] = None,
                 staging: Optional[str] = None):
        from tsa.shards.writer import ShardAssembler

        self.number = number
        self.node = _node_id()
        self.remote = None
        local = Path(out)
        if remote_url is not None:
            from tsa.shards.remote_out import RemoteOutput, staging_folder

            local = staging_folder(remote_url, staging) / f"writer-{number}"
            if local.exists():  # left by a killed run on this node
                shutil.rmtree(local)
            (local / "shards").mkdir(parents=True)
            self.remote = RemoteOutput(remote_url, staging)
            self.remote.staging = local
        self.local = local
        self.assembler = ShardAssembler(local, {int(s): ix for s, ix in slots.items()}, tars)
        self.redo = set(redo)
        # kept shards (--retry-failed): their markers are read when their first redone row comes,
        # so a writer holds only the kept shards that are open, not every one of them
        self.keep_pending = {int(s) for s in keep}
        self.markers_at = tars if tars is not None else str(Path(out) / "shards")

    def add(self, rows: list[tuple[int, str, Optional[dict[str, bytes]]]]) -> list[dict[str, Any]]:
        """Rows (input position, manifest row JSON, members or None); per row, the shards it
        published (marker summaries) and left unchanged."""
        out = []
        for index, row_json, members in rows:
            shard = self.assembler.shard_of.get(int(index))
            if shard in self.keep_pending:
                self._keep(shard)
            before = len(self.assembler.unchanged)
            marker = self.assembler.add(int(index), json.loads(row_json), members)
            published = []
            if marker is not None:
                if self.remote is not None:
                    self.remote.publish(marker)
                published.append(dict(summary(marker), node=self.node))
            out.append({"published": published, "unchanged": self.assembler.unchanged[before:]})
        return out

    def _keep(self, shard: int) -> None:
        from tsa.shards.layout import shard_name
        from tsa.shards.storage import join, open_store

        store = open_store(self.markers_at)
        try:
            marker = json.loads(store.read_bytes(join(self.markers_at, f"{shard_name(shard)}.json")))
        finally:
            store.close()
        self.keep_pending.discard(shard)
        self.assembler.keep(shard, marker, self.redo)

    def close(self) -> dict[int, int]:
        """Shards still missing rows (-> how many); those are dropped. Staging is removed."""
        pending = self.assembler.pending()
        self.assembler.abort()
        self._cleanup()
        return pending

    def abort(self) -> None:
        self.assembler.abort()
        self._cleanup()

    def _cleanup(self) -> None:
        if self.remote is not None:
            shutil.rmtree(self.local, ignore_errors=True)


def start_writers(ray_module, count: int, out: str, slots: dict[int, list[int]], keep: list[int],
                  redo: list[int], tars: Optional[str], remote_url: Optional[str], staging: Optional[str]) -> list:
    """`count` writer actors, writer w on alive node w mod (nodes), each given its shards' slots
    and kept markers. The affinity is hard: a soft one let Ray place every writer on one node
    of an idle two-node cluster (each node then stages and writes what the plan did not say).
    A writer whose node is lost dies with it, and the run stops saying that the same command
    resumes, as for a node lost mid-run."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray_module.remote(num_cpus=0, max_restarts=0)(ShardWriterActor)
    nodes = sorted(n["NodeID"] for n in ray_module.nodes() if n.get("Alive"))
    writers = []
    for w in range(count):
        place = NodeAffinitySchedulingStrategy(nodes[w % len(nodes)], soft=False) if nodes else "SPREAD"
        mine = {s: ix for s, ix in slots.items() if s % count == w}
        kept = [s for s in keep if s % count == w]
        positions = {i for ix in mine.values() for i in ix}
        writers.append(actor.options(scheduling_strategy=place).remote(
            w, out, mine, kept, [i for i in redo if i in positions], tars, remote_url, staging))
    return writers


_CFG: dict[str, Any] = {}


def route_batch(batch: dict[str, np.ndarray], cfg_dict: dict[str, Any], writers: list) -> dict[str, np.ndarray]:
    """Ray Data map_batches function (see the module docstring): rows in, small rows out
    (`index`, `row_json`: the manifest row as written, `events`: JSON of the shards published)."""
    import ray

    from tsa.configs.schema import config_from_dict
    from tsa.shards.encode import encode_sample
    from tsa.shards.layout import member_specs, shard_of

    tag = json.dumps(cfg_dict, sort_keys=True)
    cfg = _CFG.get(tag)
    if cfg is None:
        cfg = _CFG[tag] = config_from_dict(cfg_dict, optional=["models.teacher.checkpoint"])
    sps = cfg.preprocess.samples_per_shard
    wanted = [n[:-len(".npy")] for n in member_specs(cfg) if n != "teacher_scale.npy"]
    k = len(writers)
    per_writer: dict[int, list[tuple[int, str, Optional[dict[str, bytes]]]]] = {}
    where: dict[int, tuple[int, int]] = {}  # batch row -> (writer, position in its list)
    rows_json = []
    n = len(batch["index"])
    for i in range(n):
        index = int(batch["index"][i])
        manifest = json.loads(str(batch["row_json"][i]))
        members = None
        if bool(batch["ok"][i]):
            try:
                arrays = {name: np.asarray(batch[name][i]) for name in wanted}
                members = encode_sample(arrays, bytes(batch["preview"][i]), json.loads(str(batch["meta_json"][i])),
                                        cfg)
            except (ValueError, KeyError) as e:
                manifest.update(status="failed", error=f"encoding: {e}")
        text = json.dumps(manifest)
        rows_json.append(text)
        w = shard_of(index, sps) % k
        where[i] = (w, len(per_writer.setdefault(w, [])))
        per_writer[w].append((index, text, members))
    refs = {w: writers[w].add.remote(rows) for w, rows in per_writer.items()}
    results = dict(zip(refs, ray.get(list(refs.values()))))
    events = [json.dumps(results[w][j]) for w, j in (where[i] for i in range(n))]
    return {"index": np.asarray(batch["index"], dtype=np.int64), "row_json": np.asarray(rows_json, dtype=object),
            "events": np.asarray(events, dtype=object)}


def add_route_stage(ds, cfg, writers: list):
    """The route stage after the model stages (tasks; each batch is what T5 handed out)."""
    return ds.map_batches(route_batch, fn_kwargs={"cfg_dict": cfg.to_dict(), "writers": writers},
                          batch_format="numpy", batch_size=None, num_cpus=ROUTE_CPUS, zero_copy_batch=False)


def plan_line(count: int) -> str:
    return (f"  writers  {count} actor(s) x (0 GPU, 0 CPU), shard s -> writer s mod {count}, writer w on node "
            f"w mod nodes; route tasks {ROUTE_CPUS:g} CPU each")


def slots_for(todo_indices: list[int], sps: int, total: int) -> dict[int, list[int]]:
    """Every input position of each shard that the clips to do touch."""
    shards = sorted({i // sps for i in todo_indices})
    return {s: list(range(s * sps, min(total, (s + 1) * sps))) for s in shards}


def shards_needed(todo: int, sps: int) -> int:
    return max(1, math.ceil(todo / sps))
