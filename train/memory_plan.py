"""Per-GPU memory plan of a training run, printed before step 1 (the measured peak after step 1
goes to metrics.jsonl as `peak_memory_gib`, so the plan can be checked against reality).

Model state is exact arithmetic on the parameter counts; activations are an estimate:

    parameters   fp32 master weights              4 P       (FSDP2: 4 P / W)
    gradients    fp32                             4 T       (FSDP2: 4 T / W)
    optimizer    AdamW exp_avg + exp_avg_sq       8 T       (FSDP2: 8 T / W)
    buckets      DDP all-reduce buckets           0: gradient_as_bucket_view makes the gradients
                                                  the buckets (4 P without it)
    transient    bf16 autocast copies of the weights (autocast caches every cast until the
                 forward ends: 2 P); FSDP2 adds the all-gathered fp32 block and its unsharded
                 gradient (two blocks in flight with prefetch) and the layers outside the
                 blocks (projector, embeddings), unsharded
    activations  with gradient checkpointing: each block keeps its fp32 inputs,
                 b x (video + text tokens) x D x 4 bytes, and one block at a time is
                 recomputed, ~16 x b x tokens x D x 2 bytes of bf16 intermediates
                 (attention through SDPA, no tokens x tokens matrix); without
                 checkpointing every block keeps those intermediates

P counts all parameters (transformer + projector), T the trainable ones (P, or with LoRA the
adapters and the projector: gradients and AdamW state are 4 T and 8 T), W the workers, b the
micro-batch.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tsa.configs.schema import Config

GIB = 1024 ** 3
BLOCK_INTERMEDIATES = 16  # bf16 tensors of size tokens x D that one block holds for its backward


@dataclass
class MemoryPlan:
    strategy: str
    workers: int
    parameters: float  # bytes per GPU
    gradients: float
    optimizer: float
    buckets: float
    transient: float
    activations: float

    @property
    def total(self) -> float:
        return (self.parameters + self.gradients + self.optimizer + self.buckets + self.transient
                + self.activations)

    def table(self) -> str:
        rows = [("parameters (fp32)", self.parameters), ("gradients (fp32)", self.gradients),
                ("AdamW state (fp32)", self.optimizer), ("DDP buckets", self.buckets),
                ("gathered / bf16 copies", self.transient), ("activations (estimate)", self.activations)]
        head = f"memory plan per GPU ({self.strategy}, {self.workers} worker(s)):"
        body = "\n".join(f"  {name:<24}{value / GIB:8.2f} GiB" for name, value in rows)
        return f"{head}\n{body}\n  {'total':<24}{self.total / GIB:8.2f} GiB"


def _count(module: nn.Module | None, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def plan_memory(transformer: nn.Module, projector: nn.Module | None, cfg: Config, strategy: str,
                workers: int) -> MemoryPlan:
    """The plan for `transformer` (the family's, possibly on the meta device) and
    `projector` under `cfg.train` with `workers` GPUs and `strategy` (ddp | fsdp2)."""
    from tsa.models.family import student_family

    family = student_family(cfg)
    width = family.width(transformer)
    blocks = family.blocks(transformer)
    block = _count(blocks[0])
    outside = _count(transformer) - block * len(blocks) + _count(projector)
    total = _count(transformer) + _count(projector)
    trainable = _count(transformer, True) + _count(projector, True)  # LoRA: adapters + projector
    sharded = strategy == "fsdp2" and workers > 1
    share = workers if sharded else 1

    f, h, w = cfg.geometry.student_grid
    # CogVideoX attends over text and video tokens jointly; Wan's text enters by cross-attention.
    tokens = f * h * w + (cfg.geometry.text_length if family.joint_text else 0)
    b = cfg.train.micro_batch
    recompute = BLOCK_INTERMEDIATES * b * tokens * width * 2
    if cfg.train.gradient_checkpointing:
        activations = len(blocks) * b * tokens * width * 4 + recompute
    else:
        activations = len(blocks) * recompute
    bf16 = 2 if cfg.train.mixed_precision == "bf16" else 0
    # Autocast caches the bf16 cast of every weight it meets until the forward ends (with or
    # without checkpointing, and with FSDP2's all-gathered parameters too).
    transient = total * bf16
    if sharded:  # two blocks all-gathered in fp32 with their unsharded gradients, the rest unsharded
        transient += 2 * block * (4 + 4) + outside * 4
    return MemoryPlan(strategy=strategy if workers > 1 else "one worker", workers=workers,
                      parameters=4 * total / share, gradients=4 * trainable / share,
                      optimizer=8 * trainable / share,
                      buckets=0.0, transient=float(transient), activations=float(activations))
