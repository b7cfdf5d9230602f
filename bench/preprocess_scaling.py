"""Does `tsa preprocess` scale with GPUs? Stand-in model stages on a fake N-GPU Ray.

One machine, `ray.init(num_gpus=N)` for N = 1, 2, 4, 8, or with `--nodes K` a
`ray.cluster_utils.Cluster` of K simulated nodes of N/K fake GPUs each: the real pipeline
structure (Ray Data map -> three actor pools sized by `pipeline.plan.make_plan` from the paper
config's fractional `num_gpus` -> the route stage and the writer actors of pipeline/writers.py:
float16 casts, .npy, the shard assembler, fsync, on the nodes -> small rows to the driver,
`pipeline.run.collect_rows`), with stand-ins for what needs a GPU:
  * decode: a CPU task returning the paper's arrays (frames uint8 [49, 480, 720, 3], teacher
    input float32 [3, 48, 160, 240], motion, mask, a 30 kB preview) after `--decode-s` seconds;
  * VAE / teacher / T5 actors: sleep a fixed cost per clip (`--vae-s`, `--teacher-s`, `--text-s`),
    then return float32 latent [16, 13, 60, 90], teacher [3600, 768], text [226, 4096].
The actors sleep, so the fake GPUs cost no CPU: what is measured is whether the pools, Ray
Data's scheduling, the object store, the writers and the driver keep N pools busy.
One run of n = clips-per-gpu x N clips per N; steady clips/s is measured inside the run,
between the rows written at 25 % and at 90 % of n (actor start-up, fill and drain left out:
on a 2-core machine starting 20 actors takes longer than the work, so differencing two runs
as bench/preprocess.py does is meaningless here). The expected figure is N / max(stage cost);
"driver busy" is the share of that window the driver spent on its rows rather than waiting.

    python bench/preprocess_scaling.py --gpus 1,2,4,8
    python bench/preprocess_scaling.py --gpus 8,16 --nodes 2
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def _decode_standin(row, cfg_dict, cost):
    import numpy as np

    from tsa.configs.schema import config_from_dict

    g = config_from_dict(cfg_dict, optional=["models.teacher.checkpoint"]).geometry
    t, h, w = g.teacher_input
    time.sleep(cost)
    grid = tuple(g.teacher_grid)
    return {"index": row["index"], "key": row["key"], "caption": "c", "ok": True,
            "row_json": json.dumps({"key": row["key"], "video": row["key"] + ".mp4", "caption": "c", "status": "ok",
                                    "error": None}),
            "meta_json": json.dumps({"caption": "c", "source": row["key"] + ".mp4"}),
            "frames": np.zeros((g.num_frames, g.height, g.width, 3), np.uint8),
            "teacher_in": np.zeros((3, t, h, w), np.float32), "motion": np.zeros(grid, np.float32),
            "mask": np.zeros(grid, bool), "preview": bytes(30_000)}


class StandIn:
    """A model stage that sleeps `cost` s per clip and returns zero outputs of the paper's shapes."""

    def __init__(self, name: str, cost: float, cfg_dict: dict):
        from tsa.configs.schema import config_from_dict

        cfg = config_from_dict(cfg_dict, optional=["models.teacher.checkpoint"])
        g = cfg.geometry
        grid = g.teacher_grid
        self.cost, self.name = cost, name
        self.take = {"vae": "frames", "teacher": "teacher_in", "text": None}[name]
        self.give = {"vae": ("latent", tuple(g.latent_shape)),
                     "teacher": ("teacher", (grid[0] * grid[1] * grid[2], cfg.models.teacher.dim)),
                     "text": ("text", tuple(g.text_shape))}[name]

    def __call__(self, batch):
        import numpy as np

        n = len(batch["ok"])
        time.sleep(self.cost * n)
        if self.take:
            batch.pop(self.take)
        name, shape = self.give
        batch[name] = np.zeros((n, *shape), np.float32)
        return batch


def build(items, cfg, actors, costs, writers=None):
    import ray
    from ray.data import ActorPoolStrategy

    from tsa.pipeline.run import configure_ray_data
    from tsa.pipeline.writers import add_route_stage

    configure_ray_data()
    p = cfg.preprocess
    rows = [{"index": it.index, "key": it.key} for it in items]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
        _decode_standin, fn_kwargs={"cfg_dict": cfg.to_dict(), "cost": costs["decode"]}, num_cpus=p.decode.num_cpus)
    for name in ("vae", "teacher", "text"):
        r = getattr(p, name)
        ds = ds.map_batches(StandIn, fn_constructor_args=(name, costs[name], cfg.to_dict()), batch_format="numpy",
                            batch_size=r.batch_size, compute=ActorPoolStrategy(size=actors[name]),
                            num_gpus=r.num_gpus, num_cpus=r.num_cpus, zero_copy_batch=False)
    return add_route_stage(ds, cfg, writers) if writers is not None else ds


class Timed:
    """Wraps the row iterator: when each row was written, and how long the driver waited for
    each (the rest of its time it writes)."""

    def __init__(self, rows):
        self.rows, self.waits, self.done = iter(rows), [], []

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self.rows)
        finally:
            self.waits.append(time.perf_counter() - t)

    def on_row(self, row) -> None:
        self.done.append(time.perf_counter())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="cogvideox2b_mtsa")
    ap.add_argument("--gpus", default="1,2,4,8")
    ap.add_argument("--clips-per-gpu", type=int, default=16, help="n = this x N clips per run")
    ap.add_argument("--decode-s", type=float, default=0.0)
    ap.add_argument("--vae-s", type=float, default=4.0)
    ap.add_argument("--teacher-s", type=float, default=1.0)
    ap.add_argument("--text-s", type=float, default=0.2)
    ap.add_argument("--samples-per-shard", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=1, help="simulated nodes (ray.cluster_utils.Cluster), N/K GPUs each")
    ap.add_argument("--store-gb", type=float, default=2.0, help="object store per simulated node, GB")
    ap.add_argument("-o", "--override", action="append", default=None,
                    help="config override (default: teacher and T5 batch size 1: the stand-in costs are per clip, "
                         "and the paper's batches of 4 and 16 would hand rows out in bursts, too coarse for a "
                         "window of a few dozen clips)")
    args = ap.parse_args()

    import ray

    from tsa.configs import load_config
    from tsa.pipeline.plan import make_plan
    from tsa.pipeline.run import collect_rows
    from tsa.pipeline.sources import ClipItem
    from tsa.pipeline.writers import slots_for, start_writers, writer_count

    overrides = args.override if args.override is not None else ["preprocess.teacher.batch_size=1", "preprocess.text.batch_size=1"]
    cfg = load_config(args.config, [f"preprocess.samples_per_shard={args.samples_per_shard}", *overrides],
                      optional=["models.teacher.checkpoint"])
    if cfg.preprocess.model_actors != "separate":
        raise SystemExit("preprocess.model_actors: this bench measures the three separate pools (its stand-in "
                         "stages are per model)")
    costs = {"decode": args.decode_s, "vae": args.vae_s, "teacher": args.teacher_s, "text": args.text_s}
    print(f"stand-in costs per clip: {costs}; config {args.config} {' '.join(overrides)}; "
          f"{args.clips_per_gpu} clips per GPU a run")
    print(f"{'GPUs':>4} {'actors v/t/x':>12} {'clips':>5} {'first row s':>11} {'total s':>8} {'steady clips/s':>15} "
          f"{'expected':>9} {'vs N=1':>7} {'driver busy':>12}")
    base = None
    tmp = Path(tempfile.mkdtemp(prefix="tsa-scaling-"))
    try:
        for n_gpus in [int(x) for x in args.gpus.split(",")]:
            n = args.clips_per_gpu * n_gpus
            items = [ClipItem(index=i, key=f"clip{i:05d}", video="", path="", caption="c") for i in range(n)]
            plan = make_plan(cfg, args.nodes, 0, n_gpus, num_clips=n)
            cpus = sum(plan.actors[s] * getattr(cfg.preprocess, s).num_cpus for s in plan.actors) + 8
            cluster = None
            if args.nodes > 1:
                from ray.cluster_utils import Cluster

                per = {"num_cpus": -(-cpus // args.nodes), "num_gpus": n_gpus // args.nodes,
                       "object_store_memory": int(args.store_gb * 1e9)}
                cluster = Cluster(initialize_head=True, head_node_args=per)
                for _ in range(args.nodes - 1):
                    cluster.add_node(**per)
                cluster.wait_for_nodes()
                ray.init(address=cluster.address, log_to_driver=False)
            else:
                ray.init(num_cpus=cpus, num_gpus=n_gpus, include_dashboard=False, log_to_driver=False)
            try:
                out = tmp / f"g{n_gpus}"
                out.mkdir()
                slots = slots_for([it.index for it in items], cfg.preprocess.samples_per_shard, n)
                writers = start_writers(ray, writer_count(args.nodes, len(slots)), str(out), slots, [], [], None,
                                        None, None)
                rows = Timed(build(items, cfg, plan.actors, costs, writers).iter_rows())
                t0 = time.perf_counter()
                by_node: dict = {}
                published, _, _ = collect_rows(rows, on_row=rows.on_row, by_node=by_node)
                assert not any(ray.get([w.close.remote() for w in writers]))
                total = time.perf_counter() - t0
                shutil.rmtree(out)
            finally:
                ray.shutdown()
                if cluster is not None:
                    cluster.shutdown()
            a, b = int(0.25 * n), int(0.9 * n) - 1
            window = rows.done[b] - rows.done[a]
            steady = (b - a) / window
            busy = 1 - sum(rows.waits[a + 1:b + 1]) / window
            expected = n_gpus / max(args.vae_s, args.teacher_s, args.text_s)
            base = base or steady
            act = plan.actors
            print(f"{n_gpus:>4} {act['vae']:>4}/{act['teacher']}/{act['text']:<5} {n:>5} {rows.done[0] - t0:>11.1f} "
                  f"{total:>8.1f} {steady:>15.2f} {expected:>9.2f} {steady / base:>6.2f}x {100 * busy:>11.0f}%"
                  f"  shards {len(published)} by {len(by_node)} node(s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
