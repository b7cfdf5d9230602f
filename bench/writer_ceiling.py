"""The driver's writing ceiling at paper-size arrays: clips/s that `write_rows` can store.

The real driver path on ready rows (no Ray, no models): float32 arrays cast to float16,
`.npy` encoding, `ShardAssembler` (tar members, spill files for early rows), shard publish
(fsync, rename, marker). Paper sample: latent [16, 13, 60, 90], text [226, 4096], teacher
[3600, 768] (float16), motion/mask [24, 10, 15], a 30 kB preview: ~9.7 MB a clip.

Orders: `in-order` (every row is next in its shard: straight into the tar), `reversed` (each
shard's rows arrive last-first: all but one spill, the worst case), `shuffled` (random order
within a window of 2 shards, what an unordered pipeline delivers).

    python bench/writer_ceiling.py --clips 208 --out /tmp/tsa-writer
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path


def make_rows(cfg, n: int, order: str):
    """Rows like the pipeline's last stage delivers them (arrays float32, shared between rows:
    the bench measures writing, not random number generation)."""
    import numpy as np

    g = cfg.geometry
    grid = tuple(g.teacher_grid)
    rng = np.random.default_rng(0)
    arrays = {"latent": rng.standard_normal(g.latent_shape, dtype=np.float32),
              "text": rng.standard_normal(tuple(g.text_shape), dtype=np.float32),
              "teacher": rng.standard_normal((grid[0] * grid[1] * grid[2], cfg.models.teacher.dim), dtype=np.float32),
              "motion": rng.random(grid, dtype=np.float32), "mask": rng.random(grid) < 0.2}
    preview = rng.bytes(30_000)
    sps = cfg.preprocess.samples_per_shard
    idx = list(range(n))
    if order == "reversed":
        idx = [i for s in range(0, n, sps) for i in reversed(range(s, min(n, s + sps)))]
    elif order == "shuffled":
        rnd = random.Random(0)
        idx = []
        for s in range(0, n, 2 * sps):
            block = list(range(s, min(n, s + 2 * sps)))
            rnd.shuffle(block)
            idx += block
    for i in idx:
        row = {"index": i, "ok": True, "preview": preview,
               "row_json": json.dumps({"key": f"clip{i:06d}", "video": f"clip{i:06d}.mp4", "caption": "c",
                                       "status": "ok", "error": None}),
               "meta_json": json.dumps({"caption": "c", "source": f"clip{i:06d}.mp4"})}
        row.update(arrays)
        yield row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="cogvideox2b_mtsa")
    ap.add_argument("--clips", type=int, default=208)
    ap.add_argument("--out", type=Path, default=Path("/tmp/tsa-writer-bench"))
    ap.add_argument("--orders", default="in-order,shuffled,reversed")
    args = ap.parse_args()

    from tsa.configs import load_config
    from tsa.pipeline.run import write_rows
    from tsa.pipeline.sources import ClipItem

    cfg = load_config(args.config, optional=["models.teacher.checkpoint"])
    items = [ClipItem(index=i, key=f"clip{i:06d}", video=f"clip{i:06d}.mp4", path="", caption="c")
             for i in range(args.clips)]
    print(f"{args.clips} clips, {cfg.preprocess.samples_per_shard} a shard, config {args.config}, out {args.out}")
    for order in args.orders.split(","):
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        t0 = time.perf_counter()
        written, _ = write_rows(args.out, make_rows(cfg, args.clips, order), items, cfg)
        dt = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (args.out / "shards").glob("*.tar"))
        print(f"{order:9} {written} shards, {size / 1e6 / args.clips:.2f} MB a clip: {dt:.1f} s, "
              f"{args.clips / dt:.1f} clips/s, {size / 1e6 / dt:.0f} MB/s")
    shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
