"""Read a `tsa preprocess` output without scanning tars.

`open_output(out)` parses `dataset.json` and the manifest; `read_sample(out, key)` finds the
key's shard (manifest, or the shard markers while a run is still going), then seeks to each
member's offset recorded in that shard's `.json` marker. Only complete shards (those with a
marker) are ever read.
"""
from __future__ import annotations

import difflib
import io
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.layout import DATASET_JSON, MANIFEST, SHARDS_DIR, shard_marker, shard_tar


class NotAnOutput(FileNotFoundError):
    """The folder is not a `tsa preprocess` output."""


@dataclass
class OutputInfo:
    root: Path
    dataset: dict[str, Any]  # parsed dataset.json
    manifest: Optional[Any]  # pyarrow.Table of manifest.parquet (None while a run is going)
    shards: list[Path] = field(default_factory=list)  # complete shard tars, in order

    @property
    def keys(self) -> list[str]:
        """Keys of the readable samples, in input order."""
        return [k for k, _ in _key_shards(self.root)]

    def rows(self) -> list[dict[str, Any]]:
        """Manifest rows (from manifest.parquet, or from the shard markers if it is not written yet)."""
        if self.manifest is not None:
            return self.manifest.to_pylist()
        return [r for m in _markers(self.root) for r in m["rows"]]


def open_output(out: str | Path) -> OutputInfo:
    root = Path(out)
    ds_path = root / DATASET_JSON
    if not ds_path.is_file():
        raise NotAnOutput(f"{root} is not a tsa preprocess output (no {DATASET_JSON})")
    try:
        dataset = json.loads(ds_path.read_text())
    except json.JSONDecodeError as e:
        raise NotAnOutput(f"{ds_path}: not valid JSON ({e})") from None
    manifest = None
    if (root / MANIFEST).is_file():
        import pyarrow.parquet as pq

        manifest = pq.read_table(root / MANIFEST)
    return OutputInfo(root=root, dataset=dataset, manifest=manifest, shards=list(iter_shard_paths(root)))


def iter_shard_paths(out: str | Path):
    """Complete shard tars (those whose `.json` done marker exists), in shard order."""
    d = Path(out) / SHARDS_DIR
    if not d.is_dir():
        return
    for marker in sorted(d.glob("shard-*.json")):
        tar = marker.with_suffix(".tar")
        if tar.is_file():
            yield tar


def _markers(root: Path) -> list[dict[str, Any]]:
    return [_load_marker(str(p.with_suffix(".json")), p.with_suffix(".json").stat().st_mtime_ns)
            for p in iter_shard_paths(root)]


@lru_cache(maxsize=64)
def _load_marker(path: str, mtime_ns: int) -> dict[str, Any]:
    del mtime_ns  # part of the cache key: a rewritten marker is read again
    return json.loads(Path(path).read_text())


def _key_shards(root: Path) -> list[tuple[str, int]]:
    """(key, shard) of every ok sample in complete shards, in input order."""
    return [(r["key"], m["shard"]) for m in _markers(root) for r in m["rows"] if r["status"] == "ok"]


def read_marker(out: str | Path, shard: int) -> dict[str, Any]:
    p = shard_marker(Path(out), shard)
    return _load_marker(str(p), p.stat().st_mtime_ns)


def decode_member(name: str, data: bytes) -> Any:
    """.npy -> np.ndarray (allow_pickle=False), .json -> dict, anything else -> bytes."""
    if name.endswith(".npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if name.endswith(".json"):
        return json.loads(data)
    return data


def read_members(tar_path: Path, entry: dict[str, list[int]], names: Optional[list[str]] = None,
                 decode: bool = True) -> dict[str, Any]:
    """Read members of one sample by their recorded [offset, size] in `tar_path`."""
    out: dict[str, Any] = {}
    with open(tar_path, "rb") as f:
        for name, (offset, size) in entry.items():
            if names is not None and name not in names:
                continue
            f.seek(offset)
            data = f.read(size)
            if len(data) != size:
                raise OSError(f"{tar_path}: member {name} is truncated ({len(data)} of {size} bytes)")
            out[name] = decode_member(name, data) if decode else data
    return out


@lru_cache(maxsize=8)
def _manifest_lookup(path: str, mtime_ns: int) -> dict[str, tuple[str, Optional[str], Optional[int]]]:
    """key -> (status, error, shard) from manifest.parquet (cached until the file changes)."""
    del mtime_ns
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["key", "status", "error", "shard"]).to_pydict()
    return {k: (s, e, sh) for k, s, e, sh in zip(t["key"], t["status"], t["error"], t["shard"])}


def _shard_for_key(root: Path, key: str) -> int:
    manifest = root / MANIFEST
    if manifest.is_file():
        lookup = _manifest_lookup(str(manifest), manifest.stat().st_mtime_ns)
        hit = lookup.get(key)
        if hit is not None:
            status, error, shard = hit
            if status != "ok":
                raise KeyError(f"{key!r} is a {status} clip in {root}: {error}")
            return int(shard)
        known = list(lookup)
    else:
        for m in _markers(root):
            if key in m["index"]:
                return int(m["shard"])
            for r in m["rows"]:
                if r["key"] == key:
                    raise KeyError(f"{key!r} is a {r['status']} clip in {root}: {r['error']}")
        known = [k for k, _ in _key_shards(root)]
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise KeyError(f"no sample {key!r} in {root}{hint}")


def read_sample(out: str | Path, key: str, names: Optional[list[str]] = None) -> dict[str, Any]:
    """Member name -> decoded value for one sample (np.ndarray for .npy, dict for .json, bytes
    for .jpg). `names` limits which members are read. Unknown key: KeyError with close matches."""
    root = Path(out)
    if not (root / DATASET_JSON).is_file():
        raise NotAnOutput(f"{root} is not a tsa preprocess output (no {DATASET_JSON})")
    shard = _shard_for_key(root, key)
    tar = shard_tar(root, shard)
    if not shard_marker(root, shard).is_file() or not tar.is_file():
        raise KeyError(f"{key!r}: its shard {tar.name} is not complete in {root}")
    entry = read_marker(root, shard)["index"].get(key)
    if entry is None:
        raise KeyError(f"{key!r}: not in the index of {tar.name} in {root}")
    return read_members(tar, entry, names)
