"""Rebuild `manifest.parquet` and `masks.h5` from every shard marker.

Run at the end of each preprocess run (and of a resumed one), so both files always cover
all complete shards, whichever run wrote them. Motion maps and masks are read back from the
tars by their recorded offsets; nothing is scanned.
"""
from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tsa.shards.layout import MANIFEST, MANIFEST_COLUMNS, MASKS
from tsa.shards.reader import SampleRef, decode_member, read_entry, read_marker
from tsa.shards.storage import join, open_store

MAPS = ["motion.npy", "mask.npy"]


def _read_maps(store, tar: str, key: str, entry: dict[str, list[int]]) -> dict[str, Any]:
    """motion.npy and mask.npy of one sample, header-checked (one store for every read: a
    bucket's filesystem and connections are reused across the whole output)."""
    ref = SampleRef(tar, key, tuple((n, int(o), int(size)) for n, (o, size) in entry.items()))
    return {n: decode_member(n, b) for n, b in read_entry(store, ref, MAPS).items()}


def _manifest_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    extras: list[str] = []
    for r in rows:
        for k in r:
            if k not in MANIFEST_COLUMNS and k not in extras:
                extras.append(k)
    types = {"key": pa.string(), "video": pa.string(), "caption": pa.string(), "status": pa.string(),
             "error": pa.string(), "shard": pa.int64(), "fps": pa.float64(), "frames": pa.int64(),
             "width": pa.int64(), "height": pa.int64(), "seconds": pa.float64()}
    columns: dict[str, Any] = {}
    for name in MANIFEST_COLUMNS:
        columns[name] = pa.array([r.get(name) for r in rows], type=types[name])
    for name in extras:
        values = [r.get(name) for r in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types across CSV files
            columns[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return pa.table(columns)


def write_manifest(out: Path, shards: list[int]) -> Any:
    """manifest.parquet from the markers of `shards` (in order); returns the pyarrow Table."""
    import pyarrow.parquet as pq

    rows = [r for s in shards for r in read_marker(out, s)["rows"]]
    table = _manifest_table(rows)
    tmp = Path(out) / (MANIFEST + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, Path(out) / MANIFEST)
    return table


def write_masks(out: Path, shards: list[int], grid: tuple[int, int, int], tars: Optional[str] = None) -> int:
    """masks.h5: `keys` [n], `motion` [n, F, H, W] float16, `mask` [n, F, H, W] bool; returns n.

    Written shard by shard into resizable datasets, so memory stays at one shard's maps. The
    tars are read under `tars` (default `out/shards`; a URL for an output in a bucket).
    """
    import h5py

    out = Path(out)
    tmp = out / (MASKS + ".tmp")
    n = 0
    store = open_store(tars or out / "shards")
    with closing(store), h5py.File(tmp, "w") as h5:
        keys = h5.create_dataset("keys", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"),
                                 chunks=(1024,))
        motion = h5.create_dataset("motion", shape=(0, *grid), maxshape=(None, *grid), dtype=np.float16,
                                   chunks=(64, *grid))
        mask = h5.create_dataset("mask", shape=(0, *grid), maxshape=(None, *grid), dtype=bool,
                                 chunks=(64, *grid))
        h5.attrs["grid"] = list(grid)
        for s in shards:
            marker = read_marker(out, s)
            tar = join(tars, marker["tar"]) if tars else out / "shards" / marker["tar"]
            ok = [r["key"] for r in marker["rows"] if r["status"] == "ok"]
            if not ok:
                continue
            maps = [_read_maps(store, str(tar), k, marker["index"][k]) for k in ok]
            m = len(ok)
            for d in (keys, motion, mask):
                d.resize(n + m, axis=0)
            keys[n:n + m] = ok
            motion[n:n + m] = np.stack([x["motion.npy"] for x in maps]).astype(np.float16)
            mask[n:n + m] = np.stack([x["mask.npy"] for x in maps]).astype(bool)
            n += m
    os.replace(tmp, out / MASKS)
    return n


def finalize(out: Path, num_shards: int, grid: tuple[int, int, int], tars: Optional[str] = None) -> dict[str, int]:
    """Write manifest and masks from shards 0..num_shards-1 (all must be complete). `tars`: where
    the shard tars are when not in `out/shards` (see write_masks)."""
    from tsa.shards.layout import shard_marker

    missing = [s for s in range(num_shards) if not shard_marker(out, s).exists()]
    if missing:
        raise RuntimeError(f"{out}: cannot finalize, shards not complete: {missing[:10]}")
    shards = list(range(num_shards))
    table = write_manifest(out, shards)
    n = write_masks(out, shards, grid, tars)
    status = table["status"].to_pylist()
    return {"ok": status.count("ok"), "failed": status.count("failed"), "skipped": status.count("skipped"),
            "masks": n}
