"""Process-group helpers and the DDP / FSDP2 wrapping of the Student.

One worker runs in-process with no process group; several run under Ray Train's
TorchTrainer, which sets up torch.distributed (NCCL on GPUs, gloo on CPUs) before calling
`ray_worker`.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as tdist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    strategy: str = "ddp"  # ddp | fsdp2, used when world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1 and tdist.is_available() and tdist.is_initialized()

    @classmethod
    def from_process_group(cls, device: torch.device, strategy: str) -> "Dist":
        if tdist.is_available() and tdist.is_initialized():
            return cls(tdist.get_rank(), tdist.get_world_size(), device, strategy)
        return cls(0, 1, device, strategy)

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean over ranks (a NaN on any rank gives NaN everywhere)."""
        if self.active:
            values = values.clone()
            tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
            values /= self.world
        return values

    def gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]


def fsdp_param_dtype(cfg, dist: Dist) -> Optional[torch.dtype]:
    """The dtype FSDP2 all-gathers the parameters in and computes with (`MixedPrecisionPolicy.
    param_dtype`, gradients reduced in fp32, the fp32 master shards untouched): bf16 for
    `train.mixed_precision: bf16` under FSDP2 on GPUs. None everywhere else: DDP and one worker
    use bf16 autocast over the fp32 parameters on GPUs, and CPU runs stay fp32."""
    if (dist.active and dist.strategy == "fsdp2" and dist.device.type == "cuda"
            and cfg.train.mixed_precision == "bf16"):
        return torch.bfloat16
    return None


def wrap(student: nn.Module, dist: Dist, load: Optional[Callable[[], nn.Module]] = None,
         param_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The module the loop calls: the Student itself, DDP(Student), or the FSDP2-sharded Student
    (each transformer block a unit, then the root, which holds the rest and the projector).

    With several workers `student` is normally the empty twin of `build_student(cfg, empty=True)`
    (parameters on the meta device): it is sharded (FSDP2) or materialised on the device (DDP)
    without ever holding real weights, and `load()`, called on rank 0 only, returns the loaded
    Student on the CPU, whose parameters and buffers are then broadcast tensor by tensor into
    every rank's shards or replicas (`_fill_from_rank0`). No GPU ever holds the whole unsharded
    FSDP2 model, and only rank 0 reads the weights into host memory.

    `param_dtype` (FSDP2 only, `fsdp_param_dtype`): the MixedPrecisionPolicy compute dtype.
    The policy does not cast forward inputs: the caller passes the latents and text already in
    `param_dtype` (train/step.py), so the family's fp32 rotary tables reach the blocks in fp32,
    as under autocast; the root returns fp32 outputs for the loss."""
    empty = any(p.is_meta for p in student.parameters())
    if empty and (not dist.active or load is None):
        raise ValueError("wrap: the student's parameters are on the meta device; several workers and a "
                         "`load` that returns the loaded student on rank 0 are needed to fill them")
    if not dist.active:
        return student.to(dist.device)
    if dist.strategy == "fsdp2":
        _shard(student, param_dtype)
        if empty:
            student.to_empty(device=dist.device)  # this rank's shards only, uninitialised
            _fill_from_rank0(student, dist, load)
        return student
    if param_dtype is not None:
        raise ValueError("wrap: param_dtype is for FSDP2; DDP computes under autocast")
    if empty:
        student.to_empty(device=dist.device)
        _fill_from_rank0(student, dist, load)
    else:
        student.to(dist.device)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    # Gradients live in the all-reduce buckets (no second copy of 2B fp32 gradients), and there
    # are no buffers that change during training to broadcast every step (the initial ones are
    # synchronised above and by DDP's own start-up broadcast).
    no_forward_sync = ({"forward_sync_buffers": False}  # torch >= 2.13: broadcast_buffers is deprecated
                       if "forward_sync_buffers" in inspect.signature(DDP).parameters else {"broadcast_buffers": False})
    return DDP(student, device_ids=ids, gradient_as_bucket_view=True, **no_forward_sync)


def _shard(student: nn.Module, param_dtype: Optional[torch.dtype]) -> None:
    """fully_shard every transformer block, then the Student (the root: embeddings, final layers,
    projector). With `param_dtype`, each unit all-gathers its parameters in that dtype and
    reduce-scatters gradients in fp32 into the fp32 shards (torchtitan's policy)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if param_dtype is None:
        block_policy = root_policy = MixedPrecisionPolicy()
    else:
        block_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                            cast_forward_inputs=False)
        root_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                           output_dtype=torch.float32, cast_forward_inputs=False)
    for block in student.family.blocks(student.transformer):
        fully_shard(block, mp_policy=block_policy)
    fully_shard(student, mp_policy=root_policy)


@torch.no_grad()
def _fill_from_rank0(model: nn.Module, dist: Dist, load: Callable[[], nn.Module]) -> None:
    """Collective. Rank 0 loads the Student on the CPU (`load()`); every parameter and buffer of
    `model` (sharded DTensors or plain tensors, already on this rank's device) is then set from
    it, one tensor at a time (torch.distributed.checkpoint's broadcast_from_rank0: a rank holds at
    most one unsharded tensor beyond its own shards). Buffers, persistent or not, are broadcast
    as well, so every rank's match rank 0's exactly."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    source = None
    if dist.is_main:
        with torch.random.fork_rng(devices=[]):  # loading must not move rank 0's RNG away from the others'
            source = load()
    weights = source.state_dict() if source is not None else {}
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del weights
    buffers = dict(source.named_buffers()) if source is not None else {}
    del source
    for name, buffer in model.named_buffers():
        if dist.is_main:
            buffer.copy_(buffers[name])
        tdist.broadcast(buffer, src=0)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and not hasattr(model, "transformer") else model


def no_grad_sync(model: nn.Module, dist: Dist, sync: bool):
    """DDP: skip the gradient all-reduce on accumulation micro-batches except the last.

    FSDP2 reduce-scatters every micro-batch instead (`sync` is ignored): each micro-batch's
    gradients are summed into the fp32 gradient shards and the unsharded ones freed block by
    block. Skipping the sync (`set_requires_gradient_sync(False)`) would keep every parameter's
    unsharded gradient until the last micro-batch: 4 bytes a parameter on every GPU (6.4 GiB at
    2B, 21 GiB at 5B), which the memory plan does not promise. The price is one reduce-scatter
    per micro-batch instead of one per step (tests/test_train_fsdp_memory.py measures both)."""
    if not dist.active or sync or dist.strategy == "fsdp2":
        return contextlib.nullcontext()
    return model.no_sync()


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (inf: only measure it); returns the norm
    before clipping. Under FSDP2 the gradients are sharded DTensors: clip_grad_norm_ reduces
    their partial norms over the ranks, and the result is a replicated DTensor, read in full."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
