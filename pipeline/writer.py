"""Write shards: a deterministic tar per shard, then its `.json` done marker.

A shard is written to `shard-NNNNNN.tar.tmp`, flushed and renamed to `shard-NNNNNN.tar`;
only then is `shard-NNNNNN.json` written (also via a temporary name). The marker holds the
shard's manifest rows (ok and failed clips) and, per sample, the byte offset and size of
every member inside the tar, so a reader can seek straight to one sample.

Tar members are `<key>.<member>`, in a fixed order, with mtime 0, uid/gid 0 and mode 0444:
the same samples give the same bytes.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Optional

from pipeline.layout import SHARDS_DIR, TMP_SUFFIX, shard_marker, shard_name, shard_tar


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON (sorted keys) under a temporary name, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, sort_keys=True, indent=1, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_partial_shards(out: Path) -> list[Path]:
    """Delete temporary files a killed run left behind; returns what was removed."""
    removed = []
    d = Path(out) / SHARDS_DIR
    if d.is_dir():
        for p in sorted(d.glob(f"*{TMP_SUFFIX}")):
            p.unlink()
            removed.append(p)
        # A tar without its marker was renamed but its marker never landed: redo that shard.
        for tar in sorted(d.glob("shard-*.tar")):
            if not tar.with_suffix(".json").exists():
                tar.unlink()
                removed.append(tar)
    return removed


def _padded(size: int) -> int:
    return (size + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE


class ShardWriter:
    """Collects one shard: samples go into the temporary tar as they come, rows are kept
    for the marker. Use `close()` to publish; an unclosed writer leaves only a `.tmp` file."""

    def __init__(self, out: Path, shard: int):
        self.out = Path(out)
        self.shard = shard
        self.tar_path = shard_tar(self.out, shard)
        self.tmp_path = self.tar_path.with_name(self.tar_path.name + TMP_SUFFIX)
        self.tar_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp_path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.rows: list[dict[str, Any]] = []
        self.index: dict[str, dict[str, list[int]]] = {}

    def add(self, row: dict[str, Any], members: Optional[dict[str, bytes]] = None) -> None:
        """Record a manifest row; an `ok` row comes with its members (name -> bytes)."""
        row = dict(row, shard=self.shard)
        key = row["key"]
        if row["status"] == "ok":
            if not members:
                raise ValueError(f"ShardWriter.add: ok row {key!r} has no members")
            if key in self.index:
                raise ValueError(f"ShardWriter.add: duplicate key {key!r} in {shard_name(self.shard)}")
            entry = {}
            for name, data in members.items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                self._tar.addfile(info, io.BytesIO(data))
                # addfile leaves the data padded to 512-byte blocks right before tar.offset.
                entry[name] = [self._tar.offset - _padded(info.size), info.size]
            self.index[key] = entry
        elif members:
            raise ValueError(f"ShardWriter.add: {row['status']} row {key!r} must not have members")
        self.rows.append(row)

    def close(self, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Finish the tar, rename it into place, then write the marker; returns the marker."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.tar_path)
        marker = {
            "shard": self.shard,
            "tar": self.tar_path.name,
            "bytes": self.tar_path.stat().st_size,
            "num_samples": len(self.index),
            "num_failed": sum(r["status"] == "failed" for r in self.rows),
            "num_skipped": sum(r["status"] == "skipped" for r in self.rows),
            "rows": self.rows,
            "index": self.index,
            **(extra or {}),
        }
        write_json_atomic(shard_marker(self.out, self.shard), marker)
        return marker

    def abort(self) -> None:
        """Drop the partial tar (used when a run stops on an error)."""
        try:
            self._tar.close()
            self._file.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)
