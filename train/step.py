"""One micro-batch: per-sample noise and timestep, the student forward, the loss terms."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from tsa.configs.schema import Config
from tsa.train.data import stack
from tsa.train.loss import alignment_loss, diffusion_loss, draw_noise, draw_pad_noise, posterior_sample


@dataclass
class StepContext:
    cfg: Config
    objective: Any  # models/objectives.py: the student family's noise objective
    device: torch.device
    latent_norm: Optional[tuple[Any, Any]]  # (scale, shift) of latents stored as moments (DatasetInfo.latent_norm)
    conditioning: Any = None  # the family's per-run forward inputs (CogVideoX-5B: rotary tables)
    # FSDP2's MixedPrecisionPolicy dtype (train/distributed.py, fsdp_param_dtype): the model
    # computes in it from its all-gathered parameters, latents and text are passed in it, and
    # autocast is off. None: autocast (below) or fp32.
    param_dtype: Optional[torch.dtype] = None

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        # bf16 compute on GPUs only; CPU runs (tests, tiny) stay fp32.
        if self.param_dtype is not None:
            return None
        if self.cfg.train.mixed_precision == "bf16" and self.device.type == "cuda":
            return torch.bfloat16
        return None


def to_device(x: torch.Tensor, ctx: StepContext, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Copy (asynchronously from pinned memory) first, convert on the device: a float16 batch
    crosses the bus at half the bytes, and a CPU-side .float() would make a fresh unpinned copy."""
    x = x.to(ctx.device, non_blocking=True)
    return x if dtype is None else x.to(dtype)


def clean_latents(batch: dict[str, Any], ctx: StepContext) -> torch.Tensor:
    """x0 [B, C, F, H, W] fp32 on the device: the stored sample, or a posterior sample of the
    stored moments drawn (on CPU) with the sample's own seed."""
    if "latent" in batch:
        return to_device(batch["latent"], ctx, torch.float32)
    x0 = [posterior_sample(m, lv, ctx.cfg.seed, j, *ctx.latent_norm)
          for m, lv, j in zip(batch["latent_mean"], batch["latent_logvar"], batch["index"])]
    return to_device(stack(x0, ctx.device.type == "cuda"), ctx)


def padding_frames(x0: torch.Tensor, t: torch.Tensor, index, ctx: StepContext) -> torch.Tensor:
    """The noisy latent frames a temporal patch needs in front (CogVideoX1.5: 1 for 21 latent
    frames) [B, C, P, H, W]: the clean frame 0 noised at the sample's timestep with fresh noise of
    its own (as CogVideo's fine-tuning pads, and as the sampler's padding frame is its own noise),
    never a copy of the noisy frame 0, whose noise would repeat."""
    c, _, h, w = x0.shape[1:]
    pad = ctx.cfg.geometry.student_pad_frames
    fresh = to_device(stack([draw_pad_noise(ctx.cfg.seed, j, (c, pad, h, w)) for j in index],
                            ctx.device.type == "cuda"), ctx)
    noisy, _ = ctx.objective.noisy_and_target(x0[:, :, :1].expand(-1, -1, pad, -1, -1), fresh, t)
    return noisy


def micro_batch_losses(model: nn.Module, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
    """{"loss", "loss_diffusion", "loss_align"}: fp32 scalars (loss_align 0 for align.loss none)."""
    from tsa.core import mask_to_index

    cfg, dev = ctx.cfg, ctx.device
    x0 = clean_latents(batch, ctx)
    draws = [draw_noise(cfg.seed, j, x0.shape[1:], ctx.objective.num_timesteps) for j in batch["index"]]
    t = torch.tensor([d[0] for d in draws], dtype=torch.long, device=dev)
    noise = to_device(stack([d[1] for d in draws], dev.type == "cuda"), ctx)
    noisy, target = ctx.objective.noisy_and_target(x0, noise, t)
    extra = {}
    if cfg.geometry.student_pad_frames:
        extra["pad"] = padding_frames(x0, t, batch["index"], ctx)
    text = to_device(batch["text"], ctx, torch.float32)
    if ctx.param_dtype is not None:  # FSDP2 mixed precision: inputs in the compute dtype (noise and target stay fp32)
        noisy, text = noisy.to(ctx.param_dtype), text.to(ctx.param_dtype)
    dtype = ctx.autocast_dtype
    with torch.autocast(device_type=dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        pred, projected = model(noisy, text, ctx.objective.model_timestep(t), ctx.conditioning, **extra)
    l_diff = diffusion_loss(pred, target)
    if cfg.align.loss == "none":
        l_align = torch.zeros((), device=dev)
    else:
        teacher = to_device(batch["teacher"], ctx)
        query = mask_to_index(batch["mask"]).to(dev) if cfg.align.loss == "mtsa" else None
        l_align = alignment_loss(cfg.align, projected, teacher, tuple(cfg.geometry.teacher_grid), query)
    return {"loss": l_diff + cfg.align.weight * l_align, "loss_diffusion": l_diff, "loss_align": l_align}
