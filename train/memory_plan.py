"""Per-GPU memory plan of a training run, printed before step 1 (the measured peak after step 1
goes to metrics.jsonl as `peak_memory_gib`, so the plan can be checked against reality), and
`held_bytes`, what a rank really holds, to check the plan's model state against.

Model state is exact arithmetic on the parameter shapes; activations are an estimate. Bytes
per GPU, P all parameters (transformer + projector), T the trainable ones (P, or with LoRA the
adapters and the projector), W the workers, b the micro-batch:

    parameters   fp32 master weights            4 P         FSDP2: 4 x this rank's shards
    gradients    fp32                           4 T         FSDP2: 4 x shards of T (reduce-scattered
                                                            every micro-batch, so they stay sharded
                                                            through gradient accumulation)
    optimizer    AdamW exp_avg + exp_avg_sq     8 T + 4 a step counter per tensor (FSDP2: shards)
    buffers      the model's buffers (CogVideoX-2B's fixed position table), on every GPU
    buckets      DDP all-reduce buckets         0: gradient_as_bucket_view makes the gradients
                                                the buckets (4 P without it)
    transient    DDP / one worker: bf16 autocast copies of the weights. Autocast caches the
                 cast of every trainable weight until the forward ends (2 T); a frozen weight
                 (LoRA's base) is cast at each use and its copy lives only as long as autograd
                 keeps it for the backward: one block's worth (plus the frozen layers outside
                 the blocks) with gradient checkpointing, every frozen weight without. FSDP2 (MixedPrecisionPolicy, bf16
                 parameters, fp32 reduction): the root unit's parameters all-gathered in bf16
                 for the whole step (FSDP2 keeps the root unsharded after forward) and its
                 unsharded bf16 gradients plus their fp32 reduce-scatter input; two blocks'
                 all-gathered bf16 parameters (the running one and the prefetched one), the
                 flat all-gather output being copied out and the bf16 all-gather input; one
                 block's unsharded bf16 gradients, two fp32 reduce-scatter inputs (the one being
                 filled and the one in flight) and the fp32 reduce-scatter output before it is
                 added to the shards. Without bf16 every one of those is fp32.
    activations  with gradient checkpointing: each block keeps its inputs,
                 b x (video + text tokens) x D (bf16 under autocast and FSDP2's bf16 policy alike:
                 both families' residual streams are bf16 there; fp32 otherwise), and one block
                 at a time is recomputed and back-propagated, 38 x b x tokens x D x 2 bytes
                 of bf16 intermediates and their gradients (attention through SDPA, no
                 tokens x tokens matrix; the 38 is measured, see BLOCK_INTERMEDIATES); without
                 checkpointing every block keeps those intermediates

The terms are summed, although gradients peak at the end of the backward and activations at its
start: so the plan is above the measured peak (CogVideoX-2B on an H200: plan 33.4 GiB against a
28.8 GiB peak at micro-batch 1, 132.8 against 124.4 at micro-batch 24).

FSDP2 shards each parameter along dim 0 into W chunks of ceil(rows / W) rows, padded to that
size on every rank: the plan counts the padded chunk (rank 0's share, the largest).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from tsa.configs.schema import Config

GIB = 1024 ** 3
# bf16 tensors of size tokens x D that one block holds while it is recomputed and back-propagated.
# Measured (bench/gpu.py --micro-batches 1,4,8,16 on an H200, CogVideoX-2B, bf16 autocast,
# checkpointing): the peak rises 4.34 GiB a sample, 30 saved block inputs plus 38 of these.
BLOCK_INTERMEDIATES = 38
STEP_BYTES = 4  # AdamW's per-tensor step counter (a 0-d fp32 tensor)


@dataclass
class MemoryPlan:
    strategy: str
    workers: int
    parameters: float  # bytes per GPU
    gradients: float
    optimizer: float
    buffers: float
    buckets: float
    transient: float
    activations: float
    transient_name: str = "bf16 autocast copies"

    @property
    def total(self) -> float:
        return (self.parameters + self.gradients + self.optimizer + self.buffers + self.buckets + self.transient
                + self.activations)

    def table(self) -> str:
        rows = [("parameters (fp32)", self.parameters), ("gradients (fp32)", self.gradients),
                ("AdamW state (fp32)", self.optimizer), ("model buffers", self.buffers),
                ("DDP buckets", self.buckets), (self.transient_name, self.transient),
                ("activations (estimate)", self.activations)]
        head = f"memory plan per GPU ({self.strategy}, {self.workers} worker(s)):"
        body = "\n".join(f"  {name:<30}{value / GIB:8.2f} GiB" for name, value in rows)
        return f"{head}\n{body}\n  {'total':<30}{self.total / GIB:8.2f} GiB"


def shard_numel(shape: torch.Size, workers: int) -> int:
    """Elements of the largest FSDP2 shard of a parameter of `shape` over `workers` ranks
    (dim 0 split into chunks of ceil(rows / workers) rows; the allocation every rank makes)."""
    numel = math.prod(shape)
    if workers <= 1 or len(shape) == 0 or shape[0] == 0:
        return numel
    return math.ceil(shape[0] / workers) * (numel // shape[0])


def _params(module: Optional[nn.Module], trainable_only: bool = False) -> list[torch.Size]:
    if module is None:
        return []
    return [p.shape for p in module.parameters() if p.requires_grad or not trainable_only]


def _count(module: Optional[nn.Module], trainable_only: bool = False) -> int:
    return sum(math.prod(s) for s in _params(module, trainable_only))


def plan_memory(transformer: nn.Module, projector: Optional[nn.Module], cfg: Config, strategy: str,
                workers: int) -> MemoryPlan:
    """The plan for `transformer` (the family's, on any device: the meta device, or already
    sharded, whose DTensor parameters report their global shapes) and `projector` under
    `cfg.train` with `workers` GPUs and `strategy` (ddp | fsdp2)."""
    from tsa.models.family import student_family

    family = student_family(cfg)
    width = family.width(transformer)
    blocks = family.blocks(transformer)
    sharded = strategy == "fsdp2" and workers > 1
    share = workers if sharded else 1
    modules = [transformer, projector]
    every = [s for m in modules for s in _params(m)]
    trained = [s for m in modules for s in _params(m, trainable_only=True)]
    parameters = 4 * sum(shard_numel(s, share) for s in every)
    gradients = 4 * sum(shard_numel(s, share) for s in trained)
    optimizer = 8 * sum(shard_numel(s, share) for s in trained) + STEP_BYTES * len(trained)
    buffers = sum(b.numel() * b.element_size() for m in modules if m is not None for b in m.buffers())

    bf16 = cfg.train.mixed_precision == "bf16"
    total = _count(transformer) + _count(projector)
    block = max(_count(b) for b in blocks)
    block_t = max(_count(b, True) for b in blocks)
    outside = total - sum(_count(b) for b in blocks)
    outside_t = _count(transformer, True) + _count(projector, True) - sum(_count(b, True) for b in blocks)
    if sharded:
        pb, rb = (2 if bf16 else 4), 4  # all-gathered parameter bytes, reduce bytes
        root = outside * pb + outside_t * (pb + rb)
        gathered = block * pb * (3 + 1 / workers)
        reducing = block_t * (pb + 2 * rb + rb / workers)
        transient, name = root + gathered + reducing, "FSDP2 gathered / reducing"
    elif bf16:  # autocast caches the casts of trainable weights; frozen ones (LoRA's base) are cast per use
        trainable = total - (outside - outside_t) - sum(_count(b) - _count(b, True) for b in blocks)
        frozen_block = max(_count(b) - _count(b, True) for b in blocks)
        frozen = frozen_block + (outside - outside_t) if cfg.train.gradient_checkpointing else total - trainable
        transient, name = 2 * trainable + 2 * frozen, "bf16 autocast copies"
    else:
        transient, name = 0, "bf16 autocast copies"

    f, h, w = cfg.geometry.student_grid
    # CogVideoX attends over text and video tokens jointly; Wan's text enters by cross-attention.
    tokens = f * h * w + (cfg.geometry.text_length if family.joint_text else 0)
    b = cfg.train.micro_batch
    recompute = BLOCK_INTERMEDIATES * b * tokens * width * 2
    if cfg.train.gradient_checkpointing:
        activations = len(blocks) * b * tokens * width * (2 if bf16 else 4) + recompute
    else:
        activations = len(blocks) * recompute
    return MemoryPlan(strategy=strategy if workers > 1 else "one worker", workers=workers,
                      parameters=float(parameters), gradients=float(gradients), optimizer=float(optimizer),
                      buffers=float(buffers), buckets=0.0, transient=float(transient),
                      activations=float(activations), transient_name=name)


def _storage_bytes(tensors, seen: set) -> int:
    """Bytes of the distinct storages behind `tensors` (DTensors: their local shard's storage;
    FSDP2's gradient shards are views into one flat reduce-scatter output per unit, counted once)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        if hasattr(t, "to_local"):
            t = t.to_local()
        if t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.device)
        if storage.nbytes() and key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _fsdp_unsharded_grads(model: nn.Module) -> list[torch.Tensor]:
    """Gradients FSDP2 keeps unsharded for a later reduce-scatter (only when gradient sync was
    switched off between micro-batches): the unsharded parameters' .grad and the fp32
    accumulators it upcasts them into. FSDP2 internals, read for measurement only."""
    found = []
    for module in model.modules():
        state_of = getattr(module, "_get_fsdp_state", None)
        if state_of is None:
            continue
        state = state_of()
        groups = getattr(state, "_fsdp_param_groups", None)
        if groups is None:  # torch < 2.11: one group per state
            group = getattr(state, "_fsdp_param_group", None)
            groups = [group] if group is not None else []
        for group in groups:
            for fsdp_param in group.fsdp_params:
                found.append(getattr(fsdp_param, "unsharded_accumulated_grad", None))
                unsharded = getattr(fsdp_param, "_unsharded_param", None)
                if unsharded is not None:
                    found.append(unsharded.grad)
    return found


def held_bytes(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> dict[str, int]:
    """What this rank holds now, in bytes of distinct storages: `parameters` (FSDP2: the local
    shards), `gradients` (the local gradient shards plus any unsharded gradient FSDP2 keeps for a
    later reduce-scatter), `optimizer` (every tensor of the AdamW state: moments and step
    counters), `buffers`. To hold against `plan_memory` (tests/test_train_fsdp_memory.py)."""
    seen: set = set()
    params = list(model.parameters())
    out = {"parameters": _storage_bytes(params, seen)}
    out["gradients"] = _storage_bytes([p.grad for p in params] + _fsdp_unsharded_grads(model), seen)
    states = [] if optimizer is None else [v for s in optimizer.state.values() for v in s.values()
                                           if isinstance(v, torch.Tensor)]
    out["optimizer"] = _storage_bytes(states, seen)
    out["buffers"] = _storage_bytes(list(model.buffers()), seen)
    return out
