"""AdamW over fp32 master weights (two groups: transformer, projector) and the warm-up-then-
constant learning-rate schedule.

The parameters stay fp32 and bf16 is only the autocast compute dtype: at lr 2e-6 an update
is far below bf16's resolution of a weight (8 bits of mantissa), so pure-bf16 AdamW
rounds most updates away.
"""
from __future__ import annotations

import torch
from torch import nn

from tsa.configs.schema import TrainConfig


def student_lr(train: TrainConfig) -> float:
    """The transformer group's rate: `train.lora.lr` for LoRA adapters, `train.lr` for a full
    fine-tune (2e-6 would barely move adapters whose B starts at zero)."""
    return train.lora.lr if train.lora.rank > 0 else train.lr


def build_optimizer(model: nn.Module, train: TrainConfig, device: torch.device = torch.device("cpu")
                    ) -> torch.optim.AdamW:
    """`model` is the (possibly wrapped) Student: parameters under `projector.` get
    `train.projector_lr`, all others `train.lr` (`train.lora.lr` with LoRA); weight decay on
    both. On CUDA the fused AdamW kernel (one launch for all parameters instead of several per tensor)."""
    student, projector = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dtype != torch.float32:
            raise ValueError(f"parameter {name} is {p.dtype}: master weights must be float32")
        (projector if ".projector." in f".{name}" else student).append(p)
    groups = [{"params": student, "lr": student_lr(train), "name": "student"}]
    if projector:
        groups.append({"params": projector, "lr": train.projector_lr, "name": "projector"})
    return torch.optim.AdamW(groups, betas=tuple(train.betas), weight_decay=train.weight_decay,
                             fused=True if device.type == "cuda" else None)


class WarmupConstant:
    """lr factor for optimizer step n (1-indexed): n / warmup_steps during warm-up, then 1.
    A class (not a lambda) so the scheduler's state_dict stays plain data."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = int(warmup_steps)

    def __call__(self, steps_done: int) -> float:
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, (steps_done + 1) / self.warmup_steps)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupConstant(train.warmup_steps))


def apply_train_config(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                       train: TrainConfig) -> None:
    """After loading a checkpoint, which restores the saved run's lr, weight decay, betas and
    warm-up: put the config's values back (a resume may change them with -o) and keep only the
    checkpoint's step count and AdamW moments."""
    lrs = {"student": student_lr(train), "projector": train.projector_lr}
    scheduler.lr_lambdas = [WarmupConstant(train.warmup_steps) for _ in optimizer.param_groups]
    scheduler.base_lrs = []
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lrs[group["name"]]
        group["weight_decay"] = train.weight_decay
        group["betas"] = tuple(train.betas)
        group["lr"] = group["initial_lr"] * factor(scheduler.last_epoch)
        scheduler.base_lrs.append(group["initial_lr"])
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
