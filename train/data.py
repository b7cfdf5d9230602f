"""Training data: a fixed number of seeded data streams over the shards, split over ranks
and DataLoader workers, with a resumable position.

The global sample order does not depend on the number of workers. Global sample j is the
(j // V)-th sample of stream j % V (V = `train.data_streams`); rank r of W takes the j
with j % W == r, and its DataLoader workers take turns over its streams. So 1 and 2
workers see the same global batches, and the position in the data is the number of
references each stream has used (docs/train.md, "Data order and exact resume").

Streams own *units* (`stream_units`): the complete shards when there are at least V of them;
otherwise the samples (in shard order) cut into V contiguous runs, or, with fewer samples
than V, one sample each (stream v takes sample v mod N). So any dataset of at least one
sample feeds any V, and the units depend only on the dataset and V.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tsa.configs.schema import Config, ConfigError
from tsa.shards.storage import open_store
from tsa.train.dataset_check import DatasetInfo, needed_members, uses_stored_mask
from tsa.train.shards import DataError, SampleReader, SampleRef, refs_per_epoch, shuffled_refs


@dataclass
class StreamState:
    next_ref: int = 0  # references drawn from the shuffle buffer (good and bad)
    next_good: int = 0  # samples delivered


@dataclass
class DataPosition:
    """Where the data stands: `consumed` global samples and, per stream, its state. Saved in
    checkpoints; each rank holds only its own streams until the loop merges them."""

    num_streams: int
    consumed: int = 0
    streams: dict[int, StreamState] = field(default_factory=dict)
    bad_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"num_streams": self.num_streams, "consumed": self.consumed, "bad_samples": self.bad_samples,
                "streams": {str(v): [s.next_ref, s.next_good] for v, s in sorted(self.streams.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataPosition":
        pos = cls(num_streams=int(d["num_streams"]), consumed=int(d["consumed"]),
                  bad_samples=int(d.get("bad_samples", 0)))
        for v, (ref, good) in d["streams"].items():
            pos.streams[int(v)] = StreamState(int(ref), int(good))
        delivered = sum(s.next_good for s in pos.streams.values())
        if delivered != pos.consumed:
            raise ValueError(f"data position: streams delivered {delivered} samples but consumed={pos.consumed}")
        return pos

    @classmethod
    def merged(cls, parts: list["DataPosition"], consumed: int, bad_samples: int) -> "DataPosition":
        """One position from the ranks' parts (each stream belongs to one rank)."""
        pos = cls(num_streams=parts[0].num_streams, consumed=consumed, bad_samples=bad_samples)
        for p in parts:
            pos.streams.update(p.streams)
        return cls.from_dict(pos.to_dict())  # checks that the streams add up to `consumed`


def stream_units(shard_refs: Sequence[tuple[SampleRef, ...]], num_streams: int
                 ) -> list[tuple[SampleRef, ...]]:
    """What the data streams own; stream v owns `units[v::num_streams]` (train.shards.stream_refs).

    At least `num_streams` shards: the shards themselves (stream v owns shards v, v+V, ...).
    Fewer shards but at least V samples: the samples in shard order, cut into V contiguous runs
    of N // V or N // V + 1 (run v is samples [v N // V, (v + 1) N // V)), one per stream, so
    every sample is still seen once per epoch of its stream. Fewer samples than V: stream v
    owns sample v mod N alone (samples repeat across streams; nothing else can give every
    stream data). Depends only on the dataset and V, never on the number of workers."""
    if len(shard_refs) >= num_streams:
        return list(shard_refs)
    flat = [ref for refs in shard_refs for ref in refs]
    n = len(flat)
    if n == 0:
        raise DataError("the dataset has no samples; each data stream needs at least one")
    if n >= num_streams:
        return [tuple(flat[v * n // num_streams:(v + 1) * n // num_streams]) for v in range(num_streams)]
    return [(flat[v % n],) for v in range(num_streams)]


def units_note(info: DatasetInfo, num_streams: int) -> Optional[str]:
    """A line for the log when streams split shards (None when each owns whole shards)."""
    shards, samples = len(info.shard_refs), sum(len(r) for r in info.shard_refs)
    if shards >= num_streams:
        return None
    how = (f"each stream reads a run of {samples // num_streams}-{-(-samples // num_streams)} samples"
           if samples >= num_streams else f"stream v reads sample v mod {samples} (samples repeat across streams)")
    return (f"train.data_streams={num_streams} with {shards} complete shard(s) of {samples} sample(s): {how} "
            f"(docs/train.md, \"Data order and exact resume\")")


def check_streams(cfg: Config, info: DatasetInfo, world: int) -> int:
    """V, checked against the world size and the per-rank batch. Any number of shards works
    (`stream_units`)."""
    v, g = cfg.train.data_streams, cfg.train.global_batch
    if v < 1:
        raise ConfigError(f"train.data_streams={v}: must be >= 1")
    if v % world:
        raise ConfigError(f"train.data_streams={v} must be a multiple of the number of workers ({world})")
    if g % (world * cfg.train.micro_batch):
        raise ConfigError(f"train.global_batch={g} must be a multiple of workers x train.micro_batch "
                          f"= {world} x {cfg.train.micro_batch}")
    return v


def loader_workers(streams_per_rank: int, wanted: int) -> int:
    """The most DataLoader workers <= `wanted` that split the rank's streams evenly (the
    DataLoader's round robin over workers then equals the round robin over streams)."""
    return max((n for n in range(1, min(wanted, streams_per_rank) + 1) if streams_per_rank % n == 0),
               default=1) if wanted > 0 else 0


class StreamDataset(IterableDataset):
    """The samples of one rank, in global order. Items are dicts of tensors (latent or
    latent_mean/latent_logvar, text, teacher, mask) plus `index` (global j), `stream`,
    `ref`, `key`, `shard` and `bad` (reasons of samples skipped just before this one)."""

    def __init__(self, info: DatasetInfo, cfg: Config, streams: list[int], start: dict[int, StreamState],
                 skip_bad: bool):
        self.info, self.skip_bad = info, skip_bad
        self.streams, self.start = list(streams), dict(start)
        self.num_streams = cfg.train.data_streams
        self.seed, self.buffer = cfg.seed, cfg.train.shuffle_buffer
        self.names = needed_members(info, cfg)
        self.stored_mask = uses_stored_mask(info, cfg)
        self.ratio = cfg.align.ratio
        self.units = stream_units(info.shard_refs, self.num_streams)

    def _example(self, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        from tsa.core import topk_mask

        ex: dict[str, torch.Tensor] = {}
        for name in ("latent", "latent_mean", "latent_logvar", "text"):
            if f"{name}.npy" in arrays:
                ex[name] = torch.from_numpy(arrays[f"{name}.npy"])
        if "teacher.npy" in arrays:
            t = arrays["teacher.npy"]
            if "teacher_scale.npy" in arrays:  # per-token symmetric int8
                t = t.astype(np.float32) * arrays["teacher_scale.npy"].astype(np.float32)[:, None]
            ex["teacher"] = torch.from_numpy(t)
        if "mask.npy" in arrays:
            ex["mask"] = torch.from_numpy(arrays["mask.npy"])
        elif "motion.npy" in arrays:
            motion = torch.from_numpy(arrays["motion.npy"].astype(np.float32))
            ex["mask"] = topk_mask(motion[None], self.ratio)[0]
        return ex

    def _stream(self, v: int, reader: SampleReader) -> Iterator[dict[str, Any]]:
        st = self.start.get(v, StreamState())
        refs = shuffled_refs(self.units, v, self.num_streams, self.seed, self.buffer)
        for _ in range(st.next_ref):  # replay the references already used: no tar is read
            next(refs)
        i, good, bad = st.next_ref, st.next_good, []
        epoch = refs_per_epoch(self.units, v, self.num_streams)
        for ref in refs:
            try:
                arrays = reader.read(ref, self.names)
                try:
                    item = self._example(arrays)
                except ValueError as e:  # e.g. NaN in motion.npy when the mask is derived from it
                    raise DataError(f"{Path(ref.shard).name}: sample {ref.key!r}: {e}") from None
            except DataError as e:
                if not self.skip_bad:
                    raise
                bad.append(str(e))
                i += 1
                if len(bad) > epoch:
                    raise DataError(f"data stream {v}: no readable sample in a whole epoch; last: {e}") from None
                continue
            item.update(index=good * self.num_streams + v, stream=v, ref=i, key=ref.key,
                        shard=ref.shard, bad=bad)
            yield item
            i, good, bad = i + 1, good + 1, []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        w = get_worker_info()
        mine = self.streams if w is None else self.streams[w.id::w.num_workers]
        # Its own store: descriptors or an fsspec filesystem of this process (a DataLoader worker).
        reader = SampleReader({n: self.info.spec(n) for n in self.names}, open_store(self.info.root))
        try:
            iters = [self._stream(v, reader) for v in mine]
            while True:
                for it in iters:
                    yield next(it)
        except DataError as e:
            # Reported as an item so the main process raises it without the worker traceback.
            yield {"error": str(e)}
        finally:
            reader.close()


def rank_streams(num_streams: int, rank: int, world: int, consumed: int) -> list[int]:
    """The rank's streams, rotated so that its next sample (global j = consumed + rank) comes first."""
    mine = list(range(rank, num_streams, world))
    shift = (consumed // world) % len(mine)
    return mine[shift:] + mine[:shift]


class RankLoader:
    """Micro-batches for this rank; `position()` is what it has consumed so far."""

    def __init__(self, info: DatasetInfo, cfg: Config, rank: int, world: int,
                 start: Optional[DataPosition] = None, pin_memory: bool = False):
        self.cfg, self.rank, self.world = cfg, rank, world
        v = check_streams(cfg, info, world)
        self.note = units_note(info, v)  # streams split shards: said once, by rank 0
        if self.note and rank == 0:
            print(self.note, flush=True)
        start = start or DataPosition(num_streams=v)
        if start.num_streams != v:
            raise ConfigError(f"train.data_streams={v} but the checkpoint's data position has "
                              f"{start.num_streams} streams; resume with the same value")
        if start.consumed % world:
            raise ConfigError(f"the checkpoint consumed {start.consumed} samples, not a multiple of "
                              f"{world} workers")
        streams = rank_streams(v, rank, world, start.consumed)
        self.streams = {s: StreamState(**vars(start.streams.get(s, StreamState()))) for s in streams}
        self.bad_samples = 0  # skipped by this rank since start
        dataset = StreamDataset(info, cfg, streams, dict(self.streams), cfg.train.skip_bad_samples)
        self.workers = loader_workers(len(streams), cfg.train.num_workers)
        kwargs: dict[str, Any] = {}
        if self.workers > 0:
            kwargs = {"prefetch_factor": cfg.train.prefetch_factor}
        # Items are stacked into micro-batches here, so pinning them one by one in the DataLoader
        # would be lost in torch.stack: next_microbatch stacks straight into pinned memory instead.
        self.pin_memory = pin_memory
        self.loader = DataLoader(dataset, batch_size=None, num_workers=self.workers, **kwargs)
        self._it = iter(self.loader)

    def position(self) -> DataPosition:
        """This rank's streams (merge across ranks with DataPosition.merged)."""
        return DataPosition(num_streams=self.cfg.train.data_streams,
                            streams={v: StreamState(s.next_ref, s.next_good) for v, s in self.streams.items()})

    def next_item(self) -> dict[str, Any]:
        item = next(self._it)
        if "error" in item:
            raise DataError(item["error"])
        self.streams[item["stream"]] = StreamState(item["ref"] + 1, self.streams[item["stream"]].next_good + 1)
        self.bad_samples += len(item["bad"])
        return item

    def next_microbatch(self) -> dict[str, Any]:
        items = [self.next_item() for _ in range(self.cfg.train.micro_batch)]
        batch: dict[str, Any] = {k: stack([it[k] for it in items], self.pin_memory)
                                 for k, v in items[0].items() if isinstance(v, torch.Tensor)}
        for k in ("index", "key", "shard"):
            batch[k] = [it[k] for it in items]
        batch["bad"] = [reason for it in items for reason in it["bad"]]
        return batch

    def close(self) -> None:
        # Ends the worker processes now rather than at garbage collection.
        self._it = None
        self.loader = None


def stack(tensors: list[torch.Tensor], pin: bool) -> torch.Tensor:
    """torch.stack, written straight into page-locked memory when `pin` (then the host-to-GPU
    copy is a real asynchronous DMA: from pageable memory `non_blocking=True` copies in sync)."""
    if not pin:
        return torch.stack(tensors)
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype, pin_memory=True)
    return torch.stack(tensors, out=out)


def microbatches_per_step(cfg: Config, world: int) -> int:
    return cfg.train.global_batch // (world * cfg.train.micro_batch)
