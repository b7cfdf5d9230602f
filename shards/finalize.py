"""Rebuild `manifest.parquet` and `masks.h5` from every shard marker, touching only what changed.

Run at the end of each preprocess run (and of a resumed one), so both files always cover all
complete shards, whichever run wrote them. The manifest records the state of the shards it
was built from in its parquet metadata (`tsa.finalize`: per shard the tar's and the marker's
size, from one listing; sizes only, so a local output and its copy in a bucket get the same
bytes), and masks.h5 the rows of each shard (`shard_rows`). A run whose listing shows the same
state, and that published no shard itself, does nothing: no marker and no sample is read (one
listing, the manifest's footer). When some shards changed (new ones, `--retry-failed`), the
rows of unchanged shards are copied from the old files and only the changed shards' markers
and maps are read (maps from the tars by their recorded offsets; nothing is scanned). masks.h5
is replaced before the manifest, so the manifest's state always describes a masks.h5 at least
as new. A shard republished with the same tar and marker sizes by a run killed before its
finalize (a retried clip failing again with another error of the same length) keeps its old
manifest rows until the shard changes again or the manifest is deleted.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from tsa.shards.layout import MANIFEST, MANIFEST_COLUMNS, MASKS, SHARDS_DIR, shard_name
from tsa.shards.reader import SampleRef, decode_member, read_entry, read_markers
from tsa.shards.storage import Store, is_url, join, open_store

MAPS = ["motion.npy", "mask.npy"]
STATE_KEY = b"tsa.finalize"


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


def shard_state(store: Store, shards_dir: str, num_shards: int) -> tuple[dict[int, list[int]], list[int]]:
    """{shard: [tar size, marker size]} of the complete shards from one listing, and the shards
    of 0..num_shards-1 that are not complete."""
    listing = store.list_sizes(shards_dir)
    state, missing = {}, []
    for s in range(num_shards):
        tar, marker = listing.get(f"{shard_name(s)}.tar"), listing.get(f"{shard_name(s)}.json")
        if tar is None or marker is None:
            missing.append(s)
        else:
            state[s] = [tar, marker]
    return state, missing


def read_recorded(manifest: str, store: Store) -> Optional[dict[str, Any]]:
    """The state a manifest.parquet was built from (its footer only), or None."""
    import pyarrow.parquet as pq

    try:
        if is_url(manifest):
            with store.fs.open(store._key(manifest), "rb") as f:
                meta = pq.read_schema(f).metadata or {}
        else:
            meta = pq.read_schema(manifest).metadata or {}
        raw = meta.get(STATE_KEY)
        return json.loads(raw) if raw else None
    except Exception:  # noqa: BLE001 (absent, unreadable, or from an older tsa: rebuilt)
        return None


def _concat(pieces: list[Any]):
    """One table from per-shard tables: types promoted (null -> any, int -> float); a column whose
    types still clash (text in one CSV, numbers in another) becomes text, as one table built
    from all the rows at once makes it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pa.concat_tables(pieces, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        def kind(t) -> str:
            return "number" if pa.types.is_integer(t) or pa.types.is_floating(t) else str(t)

        seen: dict[str, set[str]] = {}
        for t in pieces:
            for f in t.schema:
                if not pa.types.is_null(f.type):
                    seen.setdefault(f.name, set()).add(kind(f.type))
        clash = {c for c, kinds in seen.items() if len(kinds) > 1}
        fixed = []
        for t in pieces:
            for c in clash & set(t.column_names):
                t = t.set_column(t.schema.get_field_index(c), c, pc.cast(t[c], pa.string()))
            fixed.append(t)
        return pa.concat_tables(fixed, promote_options="permissive")


def write_manifest(out: Path, table: Any, state: dict[str, Any]) -> Any:
    """manifest.parquet from `table` with `state` in its metadata."""
    import pyarrow.parquet as pq

    table = table.replace_schema_metadata({STATE_KEY: json.dumps(state, separators=(",", ":")).encode()})
    tmp = Path(out) / (MANIFEST + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, Path(out) / MANIFEST)
    return table


def build(out: Path, num_shards: int, grid: tuple[int, int, int], store: Store, shards_dir: str,
          reuse: set[int], old_table: Any, old_masks: Optional[Path]) -> tuple[Any, int]:
    """masks.h5 (written) and the manifest table (returned) for shards 0..num_shards-1, shard by
    shard: a shard in `reuse` from the old files, any other from its marker and its tar (maps at
    the recorded offsets). Memory: one chunk of markers, one shard's maps, and the manifest table
    itself (Arrow; ~1 KB a row with OpenVid's captions)."""
    import h5py

    out = Path(out)
    tmp = out / (MASKS + ".tmp")
    n = 0
    pieces = []
    old_rows: dict[int, tuple[int, int]] = {}
    old_bounds = None
    src = h5py.File(old_masks, "r") if old_masks is not None and reuse else None
    if src is not None:
        old_rows = {int(s): (int(a), int(c)) for s, a, c in src["shard_rows"][()]}
        shard_col = old_table["shard"].to_numpy()
        old_bounds = (shard_col, old_table)
    fresh = read_markers(store, shards_dir, [s for s in range(num_shards) if s not in reuse])
    rows_of = []
    with h5py.File(tmp, "w") as h5:
        keys = h5.create_dataset("keys", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"),
                                 chunks=(1024,))
        motion = h5.create_dataset("motion", shape=(0, *grid), maxshape=(None, *grid), dtype=np.float16,
                                   chunks=(64, *grid))
        mask = h5.create_dataset("mask", shape=(0, *grid), maxshape=(None, *grid), dtype=bool,
                                 chunks=(64, *grid))
        h5.attrs["grid"] = list(grid)
        try:
            for s in range(num_shards):
                if s in reuse:
                    col, table = old_bounds
                    lo, hi = np.searchsorted(col, s, "left"), np.searchsorted(col, s, "right")
                    pieces.append(table.slice(lo, hi - lo))
                    a, m = old_rows[s]
                    if m:
                        got_keys, got_motion, got_mask = src["keys"][a:a + m], src["motion"][a:a + m], \
                            src["mask"][a:a + m]
                else:
                    shard, marker = next(fresh)
                    assert shard == s
                    pieces.append(_manifest_table(marker["rows"]))
                    tar = join(shards_dir, marker["tar"])
                    ok = [r["key"] for r in marker["rows"] if r["status"] == "ok"]
                    m = len(ok)
                    if m:
                        maps = [_read_maps(store, tar, k, marker["index"][k]) for k in ok]
                        got_keys = ok
                        got_motion = np.stack([x["motion.npy"] for x in maps]).astype(np.float16)
                        got_mask = np.stack([x["mask.npy"] for x in maps]).astype(bool)
                rows_of.append((s, n, m))
                if not m:
                    continue
                for d in (keys, motion, mask):
                    d.resize(n + m, axis=0)
                keys[n:n + m] = got_keys
                motion[n:n + m] = got_motion
                mask[n:n + m] = got_mask
                n += m
        finally:
            if src is not None:
                src.close()
        h5.create_dataset("shard_rows", data=np.asarray(rows_of, dtype=np.int64).reshape(-1, 3))
    table = _concat(pieces).replace_schema_metadata(None)
    return table, n


def finalize(out: Path, num_shards: int, grid: tuple[int, int, int], tars: Optional[str] = None,
             root: Optional[str] = None, report: Optional[dict[str, Any]] = None,
             published: Iterable[int] = ()) -> dict[str, int]:
    """Bring manifest.parquet and masks.h5 in `out` up to date with shards 0..num_shards-1 (all
    must be complete); returns the ok/failed/skipped/masks counts. `tars`: where the shards are
    when not in `out/shards` (a bucket's shards/ URL); `root`: that output's URL, whose
    manifest.parquet and masks.h5 are the old ones (fetched into `out` only when something
    changed, then the caller uploads the new ones). `published`: shards this run (re)published,
    read again whatever their sizes. `report["rebuilt"]` gets how many shards' markers and maps
    were read (0 when nothing changed)."""
    import h5py
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = Path(out)
    shards_dir = tars or str(out / SHARDS_DIR)
    store = open_store(shards_dir)
    state, missing = shard_state(store, shards_dir, num_shards)
    if missing:
        raise RuntimeError(f"{out}: cannot finalize, shards not complete: {missing[:10]}")
    here = {str(s): v for s, v in state.items()}
    meta_store = open_store(root) if root else store
    recorded = read_recorded(join(root, MANIFEST) if root else str(out / MANIFEST), meta_store)
    masks_there = (MASKS in meta_store.list_sizes(root)) if root else (out / MASKS).is_file()
    if report is not None:
        report["rebuilt"] = 0
    published = set(published)
    if recorded is not None and recorded.get("shards") == here and masks_there and not published:
        return dict(recorded["counts"])

    old_state = (recorded or {}).get("shards") or {}
    reuse = {s for s in state if old_state.get(str(s)) == state[s] and s not in published} if masks_there else set()
    old_table, old_masks = None, None
    if reuse:
        if root:  # a bucket output's old files, fetched into the staging folder
            for name in (MANIFEST, MASKS):
                meta_store.fs.get_file(meta_store._key(join(root, name)), str(out / (name + ".old")))
            old_table, old_masks = pq.read_table(out / (MANIFEST + ".old")), out / (MASKS + ".old")
        else:
            old_table, old_masks = pq.read_table(out / MANIFEST), out / MASKS
        try:
            with h5py.File(old_masks, "r") as h5:
                covered = {int(s) for s in h5["shard_rows"][()][:, 0]} if "shard_rows" in h5 else set()
        except OSError:
            covered = set()
        reuse &= covered
    try:
        table, n = build(out, num_shards, grid, store, shards_dir, reuse, old_table, old_masks)
    finally:
        store.close()
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    for item in pc.value_counts(table["status"]).to_pylist():
        if item["values"] in counts:
            counts[item["values"]] = int(item["counts"])
    counts["masks"] = n
    os.replace(out / (MASKS + ".tmp"), out / MASKS)
    write_manifest(out, table, {"version": 1, "shards": here, "counts": counts})
    for name in (MANIFEST, MASKS):
        (out / (name + ".old")).unlink(missing_ok=True)
    if report is not None:
        report["rebuilt"] = num_shards - len(reuse)
    return counts
