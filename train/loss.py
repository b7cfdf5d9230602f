"""Training objective: diffusion loss + lambda * alignment loss (paper Eq. 14). The noise
objective of each student family (v-prediction, flow matching) is in models/objectives.py."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from tsa.configs.schema import AlignConfig


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in fp32; for v-prediction this equals the 1/(1 - alpha_bar)
    weighted x0 loss of the CogVideoX trainers (tests/test_train_loss.py shows it)."""
    return F.mse_loss(pred.float(), target.float())


def alignment_loss(align: AlignConfig, projected: Optional[torch.Tensor], teacher: Optional[torch.Tensor],
                   grid: tuple[int, int, int], query_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`align.loss` on projected student tokens and teacher tokens, both [B, N, C], N = F*H*W
    of the teacher grid; `query_index` [B, M] (M-TSA only). Scalar fp32."""
    from tsa.core import repa_loss, trd_loss, tsa_loss

    name = align.loss
    if name == "none":
        raise ValueError("alignment_loss: align.loss is none")
    if name == "mtsa":
        if query_index is None:
            raise ValueError("alignment_loss: mtsa needs the motion mask's query_index")
        return tsa_loss(projected, teacher, grid, tau=align.tau, query_index=query_index, chunk=align.query_chunk)
    if name == "tsa":
        return tsa_loss(projected, teacher, grid, tau=align.tau, chunk=align.query_chunk)
    if name == "trd":
        return trd_loss(projected, teacher, grid, margin=align.margin)
    if name == "repa":
        return repa_loss(projected, teacher)
    raise ValueError(f"align.loss={name!r}: expected one of mtsa, tsa, trd, repa, none")


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for global sample `index`: the same sample gets the same noise and
    timestep whatever the number of workers, and again after a resume."""
    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1, np.uint64)[0]) >> 1


def draw_noise(seed: int, index: int, latent_shape, num_timesteps: int) -> tuple[int, torch.Tensor]:
    """(timestep uniform in [0, T), Gaussian noise [C, F, H, W] fp32) for one sample."""
    g = torch.Generator().manual_seed(sample_seed(seed, index, 0))
    t = int(torch.randint(0, num_timesteps, (1,), generator=g))
    return t, torch.randn(tuple(latent_shape), generator=g)


def draw_pad_noise(seed: int, index: int, pad_shape) -> torch.Tensor:
    """Gaussian noise [C, P, H, W] fp32 for the P latent frames a temporal patch adds in front
    (CogVideoX1.5), from the sample's own third stream: fresh noise, as the sampler's padding
    frame has, and the sample's timestep and latent noise stay what they are without padding."""
    g = torch.Generator().manual_seed(sample_seed(seed, index, 2))
    return torch.randn(tuple(pad_shape), generator=g)


def posterior_sample(mean: torch.Tensor, logvar: torch.Tensor, seed: int, index: int,
                     scale, shift=0.0) -> torch.Tensor:
    """One VAE posterior sample z from stored moments [C, F, H, W], normalised as the family
    trains on it: (z - shift) * scale, fp32. `scale`, `shift`: numbers (CogVideoX: scaling_factor
    and 0) or per-channel tensors [C, 1, 1, 1] (Wan: 1 / latents_std and latents_mean). logvar is
    clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution does."""
    g = torch.Generator().manual_seed(sample_seed(seed, index, 1))
    std = torch.exp(0.5 * logvar.float().clamp(-30.0, 20.0))
    z = mean.float() + std * torch.randn(mean.shape, generator=g)
    return (z if isinstance(shift, float) and shift == 0.0 else z - shift) * scale
