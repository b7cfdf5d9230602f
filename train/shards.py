"""Reading samples out of complete shards: seeded streams of sample references, the
shuffle buffer, and checked decoding of one sample.

A *reference* is (shard, key, member offsets) from the shard's `.json` done marker, so the
shuffle buffer holds a few hundred small tuples instead of gigabytes of arrays, and the
stream position is a count of references that can be replayed without reading any tar
(docs/train.md, "Data order and exact resume"). The bytes of a chosen sample are read with
one seek per member; the 512-byte tar header in front of each member is read too and must
name that member, so a tar rewritten behind its marker is caught rather than misread.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from itertools import count
from pathlib import Path
from typing import Iterator, Optional

import numpy as np


class DataError(RuntimeError):
    """A shard or sample cannot be used; the message names the shard and the key."""


@dataclass(frozen=True)
class SampleRef:
    shard: str  # tar path
    key: str
    entry: tuple[tuple[str, int, int], ...]  # (member, offset, size) from the marker

    def member(self, name: str) -> Optional[tuple[int, int]]:
        for n, off, size in self.entry:
            if n == name:
                return off, size
        return None


@lru_cache(maxsize=256)
def shard_refs(tar_path: str) -> tuple[SampleRef, ...]:
    """References of the samples of one complete shard, in marker order."""
    marker = Path(tar_path).with_suffix(".json")
    try:
        index = json.loads(marker.read_text())["index"]
        return tuple(SampleRef(tar_path, key, tuple((name, int(off), int(size)) for name, (off, size) in entry.items()))
                     for key, entry in index.items())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{marker}: unreadable shard marker ({type(e).__name__}: {e})") from None


def stream_refs(shards: list[str], stream: int, num_streams: int, seed: int) -> Iterator[SampleRef]:
    """Endless references of data stream `stream`: its shards are `shards[stream::num_streams]`,
    visited in a new seeded order every epoch."""
    mine = shards[stream::num_streams]
    for epoch in count():
        order = np.random.default_rng([seed, stream, epoch]).permutation(len(mine))
        n = 0
        for i in order:
            for ref in shard_refs(mine[i]):
                n += 1
                yield ref
        if n == 0:
            raise DataError(f"data stream {stream}: its shards {[Path(s).name for s in mine]} hold no samples")


def shuffled_refs(shards: list[str], stream: int, num_streams: int, seed: int, buffer: int) -> Iterator[SampleRef]:
    """`stream_refs` through webdataset's seeded shuffle buffer (`buffer` references)."""
    import webdataset as wds

    refs = stream_refs(shards, stream, num_streams, seed)
    if buffer <= 1:
        return refs
    buffer_seed = int(np.random.SeedSequence([seed, stream, 0x5EED]).generate_state(1)[0])
    return wds.shuffle(buffer, initial=buffer, seed=buffer_seed)(refs)


def refs_per_epoch(shards: list[str], stream: int, num_streams: int) -> int:
    return sum(len(shard_refs(s)) for s in shards[stream::num_streams])


def _header_name(member: str) -> str:
    # What tarfile's PAX writer puts in the ustar name field: ASCII, at most 100 bytes.
    return member.encode("ascii", "replace")[:tarfile.LENGTH_NAME].decode("ascii")


class SampleReader:
    """Reads and checks the `.npy` members of a sample against `dataset.json`'s specs."""

    def __init__(self, specs: dict[str, tuple[str, tuple[int, ...]]], max_open: int = 8):
        self.specs = specs  # member -> (numpy dtype name, shape)
        self._files: OrderedDict[str, int] = OrderedDict()
        self._max_open = max_open

    def _fd(self, path: str) -> int:
        fd = self._files.pop(path, None)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"{path}: cannot open shard ({e.strerror})") from None
        self._files[path] = fd
        while len(self._files) > self._max_open:
            os.close(self._files.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        while self._files:
            os.close(self._files.popitem()[1])

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _raw(self, ref: SampleRef, name: str) -> bytes:
        where = f"{Path(ref.shard).name}: sample {ref.key!r}"
        span = ref.member(name)
        if span is None:
            raise DataError(f"{where} has no member {name}")
        offset, size = span
        fd = self._fd(ref.shard)
        block = os.pread(fd, tarfile.BLOCKSIZE + size, offset - tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE + size:
            file_size = os.fstat(fd).st_size
            raise DataError(f"{where} member {name}: shard is truncated (member ends at byte "
                            f"{offset + size}, file has {file_size} bytes)")
        try:
            header = tarfile.TarInfo.frombuf(block[:tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
        except tarfile.TarError as e:
            raise DataError(f"{where} member {name}: no tar header at the marker's offset ({e})") from None
        expected = _header_name(f"{ref.key}.{name}")
        if header.name != expected or header.size != size:
            raise DataError(f"{where} member {name}: the tar holds {header.name!r} ({header.size} bytes) at "
                            f"the marker's offset; the tar does not match its .json marker")
        return block[tarfile.BLOCKSIZE:]

    def read(self, ref: SampleRef, names: list[str]) -> dict[str, np.ndarray]:
        """member name -> array, each checked for dtype and shape."""
        out = {}
        for name in names:
            raw = self._raw(ref, name)
            try:
                arr = np.load(io.BytesIO(raw), allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise DataError(f"{Path(ref.shard).name}: sample {ref.key!r} member {name}: "
                                f"not a readable .npy ({e})") from None
            dtype, shape = self.specs[name]
            if arr.dtype != np.dtype(dtype) or tuple(arr.shape) != tuple(shape):
                raise DataError(f"{Path(ref.shard).name}: sample {ref.key!r} member {name} is "
                                f"{arr.dtype} {list(arr.shape)}, dataset.json says {dtype} {list(shape)}")
            out[name] = arr
        return out
