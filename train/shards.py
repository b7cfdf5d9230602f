"""Reading samples out of complete shards: seeded streams of sample references, the
shuffle buffer, and checked decoding of one sample.

A *reference* (`tsa.shards.reader.SampleRef`) is (shard, key, member offsets) from the shard's
`.json` done marker, so the shuffle buffer holds a few hundred small tuples instead of
gigabytes of arrays, and the stream position is a count of references that can be replayed
without reading any tar (docs/train.md, "Data order and exact resume"). The bytes of a chosen
sample are read by the one shard reader (`tsa.shards.reader.read_entry`: ranged reads, local or
object store, every member's tar header checked against the marker); this module checks each
`.npy` against `dataset.json`.
"""
from __future__ import annotations

import io
from itertools import count
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from tsa.shards.reader import DataError, SampleRef, read_entry
from tsa.shards.storage import Store

__all__ = ["DataError", "SampleRef", "SampleReader", "refs_per_epoch", "shuffled_refs", "stream_refs"]


def stream_refs(shard_refs: Sequence[tuple[SampleRef, ...]], stream: int, num_streams: int,
                seed: int) -> Iterator[SampleRef]:
    """Endless references of data stream `stream`: its shards are `shard_refs[stream::num_streams]`
    (each the references of one shard, in shard order), visited in a new seeded order every epoch."""
    mine = shard_refs[stream::num_streams]
    for epoch in count():
        order = np.random.default_rng([seed, stream, epoch]).permutation(len(mine))
        n = 0
        for i in order:
            for ref in mine[i]:
                n += 1
                yield ref
        if n == 0:
            raise DataError(f"data stream {stream}: its {len(mine)} shard(s) hold no samples")


def shuffled_refs(shard_refs: Sequence[tuple[SampleRef, ...]], stream: int, num_streams: int, seed: int,
                  buffer: int) -> Iterator[SampleRef]:
    """`stream_refs` through webdataset's seeded shuffle buffer (`buffer` references)."""
    import webdataset as wds

    refs = stream_refs(shard_refs, stream, num_streams, seed)
    if buffer <= 1:
        return refs
    buffer_seed = int(np.random.SeedSequence([seed, stream, 0x5EED]).generate_state(1)[0])
    return wds.shuffle(buffer, initial=buffer, seed=buffer_seed)(refs)


def refs_per_epoch(shard_refs: Sequence[tuple[SampleRef, ...]], stream: int, num_streams: int) -> int:
    return sum(len(refs) for refs in shard_refs[stream::num_streams])


class SampleReader:
    """Reads and checks the `.npy` members of a sample against `dataset.json`'s specs."""

    def __init__(self, specs: dict[str, tuple[str, tuple[int, ...]]], store: Store):
        self.specs = specs  # member -> (numpy dtype name, shape)
        self.store = store  # this reader's own (local descriptors, or an fsspec filesystem)

    def close(self) -> None:
        self.store.close()

    def read(self, ref: SampleRef, names: list[str]) -> dict[str, np.ndarray]:
        """member name -> array, each checked for dtype and shape."""
        raw = read_entry(self.store, ref, names)
        out = {}
        for name in names:
            try:
                arr = np.load(io.BytesIO(raw[name]), allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise DataError(f"{Path(ref.shard).name}: sample {ref.key!r} member {name}: "
                                f"not a readable .npy ({e})") from None
            dtype, shape = self.specs[name]
            if arr.dtype != np.dtype(dtype) or tuple(arr.shape) != tuple(shape):
                raise DataError(f"{Path(ref.shard).name}: sample {ref.key!r} member {name} is "
                                f"{arr.dtype} {list(arr.shape)}, dataset.json says {dtype} {list(shape)}")
            out[name] = arr
        return out
