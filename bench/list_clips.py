"""How long `tsa preprocess` takes to list its inputs from an OpenVid-1M-sized CSV.

Writes a synthetic CSV with OpenVid-1M.csv's columns and caption lengths (`--rows`, 1M by
default) and `--subset` empty clip files (the 64K subset; listing never opens a clip), then
times, each once on a cold Python:
  * reading the CSV: pandas (all columns, the old reader) and pipeline.csv_table (pyarrow)
  * list_clips with the 64K `--subset`        (64K file look-ups)
  * list_clips with `--where` + `--sample`     (64K look-ups)
  * list_clips of every row, no subset         (1M file look-ups)
File look-ups here hit a local disk's page cache (~2 us each); on a network file system one
costs 0.1 to 1 ms, so the 1M-row case is minutes there, while the subset cases stay at 64K.

    python bench/list_clips.py --rows 1000000 --subset 64000
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("a the man woman dog car street city camera slowly moves across bright green field while people walk "
         "near old building under blue sky with clouds sunlight scene shows close view of hands holding small "
         "red cup on wooden table background blurred lights evening").split()


def make_csv(root: Path, rows: int, subset: int, seed: int = 0) -> tuple[Path, Path]:
    """root/OpenVid-1M.csv (`rows` rows) and root/subset.txt (`subset` names, clips touched)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(seed)
    videos = [f"celebv_{i:07d}_{i % 97}.mp4" for i in range(rows)]
    # OpenVid captions are long (about 60 to 130 words); 4096 variants cycled keep this fast.
    variants = [" ".join(rng.choice(WORDS, size=int(rng.integers(60, 130)))) + "." for _ in range(4096)]
    captions = [variants[i % len(variants)] for i in range(rows)]
    table = pa.table({
        "video": videos, "caption": captions,
        "aesthetic score": rng.uniform(4, 7, rows).round(3), "motion score": rng.uniform(0, 20, rows).round(3),
        "temporal consistency score": rng.uniform(0.9, 1, rows).round(4),
        "camera motion": rng.choice(["static", "pan_right", "zoom_in", "tilt_up"], rows),
        "frame": rng.integers(50, 900, rows), "fps": np.full(rows, 29.97),
        "seconds": rng.uniform(2, 30, rows).round(3)})
    path = root / "OpenVid-1M.csv"
    pcsv.write_csv(table, path)
    chosen = np.sort(rng.choice(rows, size=subset, replace=False))
    (root / "videos").mkdir()
    for i in chosen:
        (root / "videos" / videos[i]).write_bytes(b"")
    subset_path = root / "subset.txt"
    subset_path.write_text("".join(videos[i] + "\n" for i in rng.permutation(chosen)))
    return path, subset_path


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--subset", type=int, default=64_000)
    ap.add_argument("--dir", type=Path, default=None, help="Work folder (default: a temporary one, removed).")
    args = ap.parse_args()

    import pandas as pd

    from tsa.pipeline.csv_table import read_csv_table
    from tsa.pipeline.inputs import list_clips

    root = Path(tempfile.mkdtemp(prefix="bench_list_", dir=args.dir))
    try:
        t, (csv_path, subset_path) = timed(lambda: make_csv(root, args.rows, args.subset))
        print(f"made {csv_path} ({os.path.getsize(csv_path) / 1e6:.0f} MB, {args.rows} rows) and "
              f"{args.subset} clip files in {t:.1f} s")
        results = []
        t, df = timed(lambda: pd.read_csv(csv_path, dtype={"video": str, "caption": str}))
        results.append(("read CSV: pandas.read_csv, all columns", t, len(df)))
        del df
        t, table = timed(lambda: read_csv_table(csv_path))
        results.append(("read CSV: pipeline.csv_table (pyarrow)", t, table.num_rows))
        del table
        t, items = timed(lambda: list_clips(root, subset=subset_path))
        results.append((f"list_clips --subset ({args.subset} names)", t, len(items)))
        t, items = timed(lambda: list_clips(root, where=["motion score >= 2"], sample=args.subset))
        results.append((f"list_clips --where 'motion score >= 2' --sample {args.subset}", t, len(items)))
        t, items = timed(lambda: list_clips(root))
        missing = sum(1 for it in items if it.status == "failed")
        results.append((f"list_clips, every row ({missing} clips missing)", t, len(items)))
        print(f"{'step':<58} {'s':>7} {'rows':>9}")
        for name, seconds, n in results:
            print(f"{name:<58} {seconds:7.2f} {n:9d}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
