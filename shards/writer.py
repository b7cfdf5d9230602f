"""Write shards: a deterministic tar per shard, then its `.json` done marker.

A shard is written to `shard-NNNNNN.tar.tmp`, flushed and renamed to `shard-NNNNNN.tar`;
only then is `shard-NNNNNN.json` written (also via a temporary name). The marker holds the
shard's manifest rows (ok and failed clips) and, per sample, the byte offset and size of
every member inside the tar, so a reader can seek straight to one sample.

Tar members are `<key>.<member>`, in a fixed order, with mtime 0, uid/gid 0 and mode 0444:
the same samples give the same bytes.

`ShardAssembler` takes finished rows in any order (the pipeline does not preserve order, so one
slow clip holds back nothing) and still writes every shard in input order: a row that is next
in its shard goes straight into the tar, an early one is spilled to `shard-NNNNNN.spill.tmp`
until the rows before it have arrived. Memory holds offsets and manifest rows, never samples.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Optional

from tsa.shards.layout import SHARDS_DIR, TMP_SUFFIX, shard_marker, shard_name, shard_tar


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
        """Finish the tar, rename it into place, then write the marker; returns the marker.

        Replacing a complete shard (--retry-failed) drops its old marker first: a kill between
        the two renames leaves a tar without a marker, which the next run redoes in full."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        shard_marker(self.out, self.shard).unlink(missing_ok=True)
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


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), size, offset)
    if len(data) != size:
        raise OSError(f"{path}: {size} bytes expected at offset {offset}, got {len(data)}")
    return data


class _Slot:
    """One input row of a shard: its manifest row and where its members' bytes are now."""

    __slots__ = ("row", "source", "members")

    def __init__(self, row: dict[str, Any], source: Optional[Path], members: list[tuple[str, int, int]]):
        self.row, self.source, self.members = row, source, members


class _OpenShard:
    def __init__(self, out: Path, shard: int, indices: list[int]):
        self.out = out
        self.shard = shard
        self.indices = indices  # every input position of the shard, ascending
        self.next = 0  # position in `indices` of the next row to write
        self.waiting: dict[int, _Slot] = {}  # index -> a row that arrived (or was kept) early
        self._writer: Optional[ShardWriter] = None  # opened at the first row written (kept shards wait)
        self.spill_path = shard_tar(out, shard).with_name(f"{shard_name(shard)}.spill{TMP_SUFFIX}")
        self.spill = None
        self.spill_size = 0
        self.kept_rows: Optional[list[dict[str, Any]]] = None  # the marker's rows of a kept shard

    @property
    def writer(self) -> ShardWriter:
        if self._writer is None:
            self._writer = ShardWriter(self.out, self.shard)
        return self._writer

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        self.drop_spill()

    def spill_members(self, members: dict[str, bytes]) -> list[tuple[str, int, int]]:
        if self.spill is None:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            self.spill = open(self.spill_path, "w+b")
        placed = []
        for name, data in members.items():
            self.spill.write(data)
            placed.append((name, self.spill_size, len(data)))
            self.spill_size += len(data)
        return placed

    def drop_spill(self) -> None:
        if self.spill is not None:
            self.spill.close()
            self.spill = None
        self.spill_path.unlink(missing_ok=True)


class ShardAssembler:
    """Writes the shards of one run from rows that arrive in any order.

    `slots` maps each shard to write to its input positions (ascending, every position of the
    shard). A position is filled either by `add` (a row of this run) or, for `--retry-failed`,
    by `keep(shard, marker)`: the rows of a complete shard that are not redone are copied (bytes
    as stored) from its current tar. A shard is published when its last position is filled;
    `add` then returns its marker. `tars`: where the current tars of kept shards are, when not
    in `out/shards` (the URL of a bucket output's shards/, read by ranges). A kept shard whose
    rows come out equal to its marker's is not published again (`unchanged`).
    """

    def __init__(self, out: Path, slots: dict[int, list[int]], tars: Optional[str] = None):
        self.out = Path(out)
        self.tars = tars
        self._store = None  # the bucket's store, opened on the first kept row read from it
        self.slots = {s: sorted(ix) for s, ix in slots.items()}
        self.shard_of: dict[int, int] = {i: s for s, ix in self.slots.items() for i in ix}
        self.open: dict[int, _OpenShard] = {}
        self.published: list[int] = []
        self.unchanged: list[int] = []  # kept shards whose redone rows came out as before: not republished

    def _shard(self, shard: int) -> _OpenShard:
        sh = self.open.get(shard)
        if sh is None:
            sh = self.open[shard] = _OpenShard(self.out, shard, self.slots[shard])
        return sh

    def keep(self, shard: int, marker: dict[str, Any], redo: set[int]) -> None:
        """Fill the positions of `shard` not in `redo` with the rows (and stored bytes) of its
        current `marker`; its rows are in input order, one per position."""
        sh = self._shard(shard)
        if len(marker["rows"]) != len(sh.indices):
            raise ValueError(f"{shard_name(shard)}: marker has {len(marker['rows'])} rows, the input list "
                             f"assigns {len(sh.indices)} clips to it")
        sh.kept_rows = marker["rows"]
        tar = f"{self.tars}/{marker['tar']}" if self.tars else self.out / SHARDS_DIR / marker["tar"]
        for index, row in zip(sh.indices, marker["rows"]):
            if index in redo:
                continue
            entry = marker["index"].get(row["key"], {}) if row["status"] == "ok" else {}
            members = sorted(((n, off, size) for n, (off, size) in entry.items()), key=lambda m: m[1])
            sh.waiting[index] = _Slot(row, tar, members)
        self._drain(sh)

    def add(self, index: int, row: dict[str, Any], members: Optional[dict[str, bytes]] = None
            ) -> Optional[dict[str, Any]]:
        """One finished row (`members` for an ok row). Returns the shard's marker when this row
        completed it."""
        shard = self.shard_of.get(index)
        if shard is None:
            raise ValueError(f"ShardAssembler.add: input position {index} is not part of this run")
        sh = self._shard(shard)
        if index in sh.waiting or sh.indices.index(index) < sh.next:
            raise ValueError(f"ShardAssembler.add: input position {index} arrived twice")
        if sh.indices[sh.next] == index and sh.kept_rows is None:
            sh.writer.add(row, members)
            sh.next += 1
        else:  # early, or a row of a kept shard (held until the shard is known to change)
            placed = sh.spill_members(members) if members else []
            sh.waiting[index] = _Slot(row, sh.spill_path if members else None, placed)
        return self._drain(sh)

    def _drain(self, sh: _OpenShard) -> Optional[dict[str, Any]]:
        if sh.kept_rows is not None:  # a kept shard: nothing is written before every row is in
            if len(sh.waiting) < len(sh.indices):
                return None
            if [dict(sh.waiting[i].row, shard=sh.shard) for i in sh.indices] == sh.kept_rows:
                # --retry-failed, and every retried clip failed again the same way: the shard as it
                # is (same rows, hence the same bytes) stays; nothing is read, written or uploaded.
                sh.abort()
                del self.open[sh.shard]
                self.unchanged.append(sh.shard)
                return None
            sh.kept_rows = None
        while sh.next < len(sh.indices) and sh.indices[sh.next] in sh.waiting:
            slot = sh.waiting.pop(sh.indices[sh.next])
            members = None
            if slot.members:
                if slot.source == sh.spill_path:
                    sh.spill.flush()
                members = self._read_kept(slot) if isinstance(slot.source, str) else \
                    {n: _read_at(slot.source, off, size) for n, off, size in slot.members}
            sh.writer.add(slot.row, members)
            sh.next += 1
        if sh.next < len(sh.indices):
            return None
        marker = sh.writer.close()
        sh.drop_spill()
        del self.open[sh.shard]
        self.published.append(sh.shard)
        return marker

    def _read_kept(self, slot: _Slot) -> dict[str, bytes]:
        """A kept row's members from its tar in a bucket: one request, concurrent ranges."""
        from tsa.shards.storage import open_store

        if self._store is None:
            self._store = open_store(self.tars)
        got = self._store.read_ranges(slot.source, [(off, off + size) for _, off, size in slot.members])
        for (n, off, size), data in zip(slot.members, got):
            if len(data) != size:
                raise OSError(f"{slot.source}: {size} bytes expected at offset {off}, got {len(data)}")
        return {n: data for (n, _, _), data in zip(slot.members, got)}

    def pending(self) -> dict[int, int]:
        """Open shards -> how many of their rows are still missing."""
        return {s: len(sh.indices) - sh.next - len(sh.waiting) for s, sh in self.open.items()}

    def abort(self) -> None:
        """Drop every unfinished shard's temporary files (a run that stops on an error)."""
        for sh in self.open.values():
            sh.abort()
        self.open.clear()
