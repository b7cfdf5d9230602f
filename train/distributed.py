"""Process-group helpers and the DDP / FSDP2 wrapping of the Student.

One worker runs in-process with no process group; several run under Ray Train's
TorchTrainer, which sets up torch.distributed (NCCL on GPUs, gloo on CPUs) before calling
`ray_worker`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

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


def wrap(student: nn.Module, dist: Dist) -> nn.Module:
    """The module the loop calls: the Student itself, DDP(Student), or FSDP2-sharded Student
    (each transformer block a unit, then the root, which holds the projector)."""
    student.to(dist.device)
    if not dist.active:
        return student
    if dist.strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in student.family.blocks(student.transformer):
            fully_shard(block)
        fully_shard(student)
        return student
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    # Gradients live in the all-reduce buckets (no second copy of 2B fp32 gradients), and there
    # are no buffers that change during training to broadcast every step.
    return DDP(student, device_ids=ids, gradient_as_bucket_view=True, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and not hasattr(model, "transformer") else model


def no_grad_sync(model: nn.Module, dist: Dist, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-batches except the last."""
    if not dist.active or sync:
        if dist.active and dist.strategy == "fsdp2":
            model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if dist.strategy == "fsdp2":
        model.set_requires_gradient_sync(False)
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
