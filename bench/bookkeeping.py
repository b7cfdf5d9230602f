"""tsa's bookkeeping at OpenVid-1M sizes: the real code, with tiny stand-in payloads.

Everything that grows with the number of clips rather than with their pixels, run on `--rows`
rows (64K, the paper's subset, and 1M, all of OpenVid-1M) of OpenVid-1M.csv's shape
(bench/list_clips.py's synthetic CSV: nine columns, 60-130 word captions), 104 rows a shard
(~10K shards at 1M). Each sample holds the members the bookkeeping reads (motion.npy and
mask.npy on the tiny config's teacher grid, meta.json): ~3 KB instead of ~10 MB, so disk and
time go to the bookkeeping, not to the payload.

Steps, each timed once (wall seconds; ms per row; the process's RSS before -> after, MB):
  listing      select_inputs: --sample 64000 from the 1M-row CSV, and every row (clips missing)
  write half   the writer's ShardAssembler (what each writer actor runs) on the first half of
               the rows, in a shuffled order within windows of 2 shards, 1 % failed; then a kill
               (partial .tmp files left)
  resume scan  what a rerun does before any clip: remove partial files, one listing of shards/,
               the complete shards, the clips to do
  write rest   the other half, then finalize (manifest.parquet + masks.h5, from scratch: the
               killed run never finalized)
  finalize     again with nothing changed (must read no marker and no sample)
  driver rows  pipeline.run.collect_rows on one small row per clip (what the driver keeps
               per clip now; RSS must stay flat)
  retry        --retry-failed on the 1 % failed rows: read the markers to find them, rebuild the
               shards with every retried clip failing again (must stay unchanged), then with them
               fixed (republished), finalize (only the changed shards)
  train open   the trainer's dataset open and up-front size check (train.dataset_check.open_dataset),
               then its data streams (train.data.stream_units) and one RankLoader
  gallery      tsa view's index: gallery_rows, --sample 200, --top 200 (masks.h5 means)
  ray data     with --ray N: Ray Data's driver cost per clip (the clip list as blocks, one map,
               iterated): a block per clip, as before, and pipeline.plan.blocks' clips a block
  s3 *         with --s3: the output (--s3-rows rows, --s3-sps rows a shard: >= 10K shards)
               uploaded to the moto S3 server (tests/s3_server.py), then the resume scan (listing,
               finalize with nothing changed), --retry-failed's marker reads, the trainer's open
               and size check, the gallery index

    python bench/bookkeeping.py --rows 64000
    python bench/bookkeeping.py --rows 1000000 --listing
    python bench/bookkeeping.py --rows 0 --s3 --s3-rows 64000 --s3-sps 6
    python bench/bookkeeping.py --rows 0 --ray 16000
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/list_clips.py
sys.path.insert(0, str(HERE.parent / "tests"))  # tests/s3_server.py


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


class Table:
    def __init__(self, rows: int):
        self.rows = rows
        print(f"{'step':34} {'rows':>9} {'s':>9} {'ms/row':>8} {'RSS MB':>15}  note", flush=True)

    def step(self, name: str, fn, rows: int | None = None, note: str = ""):
        before = rss_mb()
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        n = self.rows if rows is None else rows
        extra = note(out) if callable(note) else note
        print(f"{name:34} {n:>9} {dt:>9.2f} {1e3 * dt / max(1, n):>8.3f} {before:>7.0f} -> {rss_mb():<6.0f} {extra}",
              flush=True)
        return out


def bench_config(sps: int):
    from tsa.configs import load_config

    return load_config("tiny", [f"preprocess.samples_per_shard={sps}"])


def openvid_rows(n: int, seed: int = 0) -> list[dict]:
    """Manifest rows of OpenVid-1M's shape (the CSV's extra columns included)."""
    from list_clips import WORDS

    rng = np.random.default_rng(seed)
    variants = [" ".join(rng.choice(WORDS, size=int(rng.integers(60, 130)))) + "." for _ in range(1024)]
    rows = []
    for i in range(n):
        rows.append({"key": f"celebv_{i:07d}_{i % 97}", "video": f"celebv_{i:07d}_{i % 97}.mp4",
                     "caption": variants[i % len(variants)], "status": "ok", "error": None, "fps": 29.97,
                     "frames": 49, "width": 720, "height": 480, "seconds": 5.0 + (i % 20),
                     "aesthetic score": round(4 + (i % 300) / 100, 3), "motion score": round((i % 2000) / 100, 3),
                     "temporal consistency score": 0.95, "camera motion": "static", "csv_fps": 29.97,
                     "csv_seconds": 5.0})
    return rows


def members(cfg, i: int) -> dict[str, bytes]:
    from tsa.shards.encode import npy_bytes

    grid = tuple(cfg.geometry.teacher_grid)
    rng = np.random.default_rng(i)
    motion = rng.random(grid, dtype=np.float32).astype(np.float16)
    return {"motion.npy": npy_bytes(motion), "mask.npy": npy_bytes(motion > 0.8),
            "meta.json": json.dumps({"i": i}).encode()}


def arrival_order(indices: list[int], sps: int, seed: int = 0) -> list[int]:
    """Completion order of an unordered pipeline: shuffled within windows of 2 shards."""
    rnd = random.Random(seed)
    out = []
    for a in range(0, len(indices), 2 * sps):
        w = indices[a:a + 2 * sps]
        rnd.shuffle(w)
        out += w
    return out


def make_output(out: Path, cfg, n: int) -> None:
    from tsa.shards.dataset_info import build_dataset_info, inputs_fingerprint
    from tsa.shards.writer import write_json_atomic

    out.mkdir(parents=True)
    models = {name: {"source": "bench", "sha256": None} for name in ("vae", "text_encoder", "tokenizer", "teacher")}
    info = build_dataset_info(cfg, models=models, num_clips=n, inputs_fp=inputs_fingerprint([("bench", str(n))]),
                              scaling_factor=1.0, source="bench")
    write_json_atomic(out / "dataset.json", info)


def write_rows(out: Path, cfg, rows: list[dict], indices: list[int], total: int, failed: set[int],
               kill_after: int | None = None) -> int:
    """The writer's assembler over `indices` (arrival order); returns shards published."""
    from tsa.pipeline.writers import slots_for
    from tsa.shards.writer import ShardAssembler

    sps = cfg.preprocess.samples_per_shard
    asm = ShardAssembler(out, slots_for(indices, sps, total))
    published = 0
    for k, i in enumerate(arrival_order(indices, sps)):
        if kill_after is not None and k == kill_after:
            return published  # killed: the open shards' .tmp files stay behind
        row = rows[i]
        if i in failed:
            asm.add(i, dict(row, status="failed", error="decode: broken file"))
        else:
            published += asm.add(i, row, members(cfg, i)) is not None
    return published


def local_steps(args, root: Path) -> Path:
    from tsa.pipeline.run import _retry_rows, collect_rows, complete_shards
    from tsa.pipeline.sources import ClipItem
    from tsa.pipeline.writers import slots_for
    from tsa.shards.finalize import finalize
    from tsa.shards.layout import num_shards, shard_of
    from tsa.shards.storage import open_store
    from tsa.pipeline.writers import ShardWriterActor
    from tsa.shards.writer import remove_partial_shards

    n, sps = args.rows, args.sps
    cfg = bench_config(sps)
    grid = tuple(cfg.geometry.teacher_grid)
    table = Table(n)
    if args.listing:
        from list_clips import make_csv

        from tsa.pipeline.inputs import select_inputs

        src = root / "openvid"
        src.mkdir()
        csv_path, _ = table.step("make CSV (1M rows, 64K clips)", lambda: make_csv(src, 1_000_000, 64_000), 1_000_000)
        table.step("listing: --sample 64000", lambda: select_inputs(src, sample=64000), 64_000)
        table.step("listing: every row", lambda: select_inputs(src), 1_000_000,
                   note="936K clips missing: 'file not found' rows")
    rows = table.step("manifest rows in memory", lambda: openvid_rows(n), note="the input list's share")
    failed = set(range(37, n, 100))  # 1 %
    out = root / "out"
    make_output(out, cfg, n)
    n_shards = num_shards(n, sps)
    half = (n_shards // 2) * sps
    table.step("write half (then killed)", lambda: write_rows(out, cfg, rows, list(range(n)), n, failed,
                                                              kill_after=half + sps // 2), half,
               note=lambda w: f"{w} shards published")

    def scan():
        removed = remove_partial_shards(out)
        listing = open_store(out / "shards").list_sizes(str(out / "shards"))
        done = complete_shards(listing, n_shards)
        todo = [i for i in range(n) if shard_of(i, sps) not in done]
        return removed, done, todo

    removed, done, todo = table.step(f"resume scan ({n_shards} shards)", scan,
                                     note=lambda r: f"{len(r[0])} partial files removed, {len(r[1])} shards done")
    table.step("write rest", lambda: write_rows(out, cfg, rows, todo, n, failed), len(todo),
               note=lambda w: f"{w} shards published")
    rep: dict = {}
    table.step("finalize (from scratch)", lambda: finalize(out, n_shards, grid, report=rep),
               note=lambda c: f"{c}, rebuilt {rep['rebuilt']} shards")
    table.step("finalize (nothing changed)", lambda: finalize(out, n_shards, grid, report=rep),
               note=lambda c: f"rebuilt {rep['rebuilt']} shards")

    def driver_rows():
        events = json.dumps({"published": [], "unchanged": []})
        done_event = json.dumps({"published": [{"shard": 1, "bytes": 1, "num_samples": sps, "num_failed": 0,
                                                "num_skipped": 0, "node": "n" * 56}], "unchanged": []})
        small = ({"index": i, "row_json": json.dumps(rows[i]), "events": done_event if i % sps == 0 else events}
                 for i in range(n))
        marks = []

        def on_row(_row, state={"k": 0}):
            state["k"] += 1
            if state["k"] in (n // 4, n // 2, n):
                marks.append(round(rss_mb()))

        collect_rows(small, on_row)
        return marks

    table.step("driver rows (collect_rows)", driver_rows, note=lambda m: f"RSS at 25/50/100 %: {m}")

    items = [ClipItem(index=i, key=r["key"], video=r["video"], path="", caption=r["caption"])
             for i, r in enumerate(rows)]
    all_done = set(range(n_shards))
    redo, keep = table.step("retry: read markers", lambda: _retry_rows(str(out / "shards"), items, all_done, sps),
                            note=lambda r: f"{len(r[0])} failed rows in {len(r[1])} shards")

    def retry(fixed: bool):
        """As a writer actor does it (pipeline.writers.ShardWriterActor), one writer for all."""
        idx = sorted(it.index for it in redo)
        w = ShardWriterActor(0, str(out), slots_for(idx, sps, n), keep, idx)
        published = unchanged = 0
        for i in arrival_order(idx, sps):
            if fixed:
                got = w.add([(i, json.dumps(rows[i]), members(cfg, i))])
            else:
                got = w.add([(i, json.dumps(dict(rows[i], status="failed", error="decode: broken file")), None)])
            published += len(got[0]["published"])
            unchanged += len(got[0]["unchanged"])
        assert not w.close()
        return published, unchanged

    table.step("retry: all fail again", lambda: retry(False), len(redo),
               note=lambda r: f"{r[0]} republished, {r[1]} unchanged")
    table.step("retry: all fixed", lambda: retry(True), len(redo),
               note=lambda r: f"{r[0]} republished, {r[1]} unchanged")
    table.step("finalize (after the retry)", lambda: finalize(out, n_shards, grid, report=rep),
               note=lambda c: f"rebuilt {rep['rebuilt']} shards")
    train_and_gallery(table, str(out), n)
    return out


def train_and_gallery(table: Table, location: str, n: int) -> None:
    from tsa.configs import load_config
    from tsa.shards.reader import open_output
    from tsa.train.data import stream_units
    from tsa.train.dataset_check import open_dataset
    from tsa.view.gallery import Selection, gallery_rows, select
    from tsa.view.atlas import MaskAtlas
    from tsa.view.clip import teacher_grid

    info = table.step("train: open + size check", lambda: open_dataset(location),
                      note=lambda i: f"{len(i.shards)} shards")
    cfg = load_config("cogvideox2b_mtsa", optional=["models.teacher.checkpoint"])
    table.step("train: stream units (V = 32)", lambda: stream_units(info.shard_refs, cfg.train.data_streams))

    def index():
        out = open_output(location)
        out.check_usable()
        cands, failed = gallery_rows(out)
        atlas = MaskAtlas.open_if_present(out, teacher_grid(out))
        if atlas is not None:
            for c in cands:
                c.row = atlas.index.get(c.key)
        sample, _ = select(cands, Selection(sample=200, seed=1), lambda cs: {})
        top = (select(cands, Selection(top=200), lambda cs: atlas.mean_motion(c.key for c in cs))[0]
               if atlas is not None else [])
        return len(cands), len(failed), len(sample), len(top)

    table.step("gallery: index, --sample, --top", index,
               note=lambda r: f"{r[0]} ok, {r[1]} failed, sample {r[2]}, top {r[3]} (size check included)")


def s3_steps(args, root: Path) -> None:
    from s3_server import S3Server

    from tsa.pipeline.run import _retry_rows, complete_shards
    from tsa.pipeline.sources import ClipItem
    from tsa.shards.finalize import finalize
    from tsa.shards.layout import SHARDS_DIR, num_shards
    from tsa.shards.remote_out import RemoteOutput

    n, sps = args.s3_rows, args.s3_sps
    cfg = bench_config(sps)
    grid = tuple(cfg.geometry.teacher_grid)
    n_shards = num_shards(n, sps)
    rows = openvid_rows(n)
    failed = set(range(37, n, 100))
    out = root / "s3src"
    make_output(out, cfg, n)
    table = Table(n)
    table.step(f"s3: write {n_shards} shards locally", lambda: write_rows(out, cfg, rows, list(range(n)), n, failed))
    table.step("s3: finalize locally", lambda: finalize(out, n_shards, grid))
    with S3Server() as server:
        os.environ.update(server.env())
        url = "s3://tsa-bench/out"
        files = sum(1 for p in out.rglob("*") if p.is_file())
        table.step("s3: upload (boto3, one put a file)", lambda: server.upload(out, url), files, note=f"{files} objects")
        staging = root / "staging"

        def scan():
            remote = RemoteOutput(url, staging)
            remote.check()
            remote.pull()
            done = complete_shards(remote.listing, n_shards)
            rep: dict = {}
            finalize(remote.staging, n_shards, grid, tars=remote.where(SHARDS_DIR), root=remote.url, report=rep)
            remote.cleanup()
            return len(done), rep["rebuilt"]

        table.step(f"s3: resume scan + finalize ({n_shards} shards)", scan,
                   note=lambda r: f"{r[0]} shards done, finalize rebuilt {r[1]}")
        items = [ClipItem(index=i, key=r["key"], video=r["video"], path="", caption=r["caption"])
                 for i, r in enumerate(rows)]
        table.step("s3: retry, read markers", lambda: _retry_rows(f"{url}/{SHARDS_DIR}", items, set(range(n_shards)),
                                                                  sps),
                   note=lambda r: f"{len(r[0])} failed rows in {len(r[1])} shards")
        train_and_gallery(table, url, n)


def _route_standin(row):
    return {"index": row["index"], "row_json": "{}", "events": "{}"}


def ray_steps(args) -> None:
    """Ray Data's own cost per clip in the driver: the clip list as blocks (from_items) and one
    map over it, iterated as the run does, with a block per clip (before) and plan.blocks."""
    import ray

    from tsa.pipeline.plan import blocks
    from tsa.pipeline.run import configure_ray_data

    n = args.ray
    table = Table(n)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        configure_ray_data()
        rows = [{"index": i, "key": f"celebv_{i:07d}", "video": f"celebv_{i:07d}.mp4", "path": f"/d/celebv_{i:07d}.mp4",
                 "caption": "word " * 120, "status": "ok", "error": None, "extras_json": '{"a": 1.0}'}
                for i in range(n)]
        for per in sorted({1, blocks(n, 2)}):
            def run():
                c0 = time.process_time()
                ds = ray.data.from_items(rows, override_num_blocks=-(-n // per))
                k = sum(1 for _ in ds.map(_route_standin, num_cpus=0.5).iter_rows())
                return k, time.process_time() - c0

            table.step(f"ray data: {per} clip(s) a block", run,
                       note=lambda r: f"driver CPU {1e3 * r[1] / n:.2f} ms a clip")
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64_000, help="rows of the local run (0: none)")
    ap.add_argument("--sps", type=int, default=104, help="rows a shard (paper: 104)")
    ap.add_argument("--listing", action="store_true", help="also time select_inputs on a 1M-row CSV")
    ap.add_argument("--s3", action="store_true", help="also the S3 steps on the moto server")
    ap.add_argument("--s3-rows", type=int, default=64_000)
    ap.add_argument("--s3-sps", type=int, default=6, help="rows a shard on S3 (6: 10.7K shards of 64K rows)")
    ap.add_argument("--ray", type=int, default=0, help="also Ray Data's per-clip driver cost on this many clips")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tsa-bookkeeping-", dir=args.dir))
    print(f"work folder {root}; load average {os.getloadavg()[0]:.1f}", flush=True)
    try:
        if args.rows:
            local_steps(args, root)
        if args.s3:
            s3_steps(args, root)
        if args.ray:
            ray_steps(args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
