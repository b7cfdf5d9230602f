"""Noise objectives of the student families: what the transformer sees and what it must predict.

Both draw an integer t uniform in [0, num_timesteps) per sample (train/loss.py `draw_noise`,
seeded by the sample's index) and compute in fp32: in bf16, sqrt(alpha_bar) of t=0 and t=1
round to the same value.
"""
from __future__ import annotations

import torch


class DiffusionObjective:
    """DDPM forward process of CogVideoX's scheduler: z_t = sqrt(ab) x0 + sqrt(1 - ab) eps,
    target v = sqrt(ab) eps - sqrt(1 - ab) x0 (or eps for epsilon models); the model's
    timestep is t itself."""

    def __init__(self, scheduler):
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise ValueError(f"scheduler prediction_type={self.prediction_type!r}: "
                             "expected v_prediction or epsilon")
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).clone()
        self.num_timesteps = int(scheduler.config.num_train_timesteps)

    def _coefficients(self, t: torch.Tensor, ndim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alphas_cumprod.to(device)[t.to(device)]
        shape = (-1,) + (1,) * (ndim - 1)
        return ab.sqrt().view(shape), (1 - ab).sqrt().view(shape)

    def noisy_and_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        """x0, noise [B, ...] (any dtype), t [B] long -> (z_t, target) both fp32 [B, ...]."""
        x0, noise = x0.float(), noise.float()
        a, s = self._coefficients(t, x0.dim(), x0.device)
        noisy = a * x0 + s * noise
        target = a * noise - s * x0 if self.prediction_type == "v_prediction" else noise
        return noisy, target

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] long -> the timestep the transformer takes [B]."""
        return t


class FlowMatchObjective:
    """Rectified flow (Wan2.1): sigma = shift * u / (1 + (shift - 1) * u) with
    u = (t + 1) / num_timesteps, z = (1 - sigma) x0 + sigma eps, target eps - x0 (the velocity
    that the flow-prediction samplers integrate); the model's timestep is sigma * num_timesteps.
    `shift` is the release scheduler's flow_shift (3.0 for Wan2.1-T2V-1.3B at 480p)."""

    def __init__(self, shift: float, num_timesteps: int = 1000):
        if not shift > 0:
            raise ValueError(f"flow shift {shift}: must be > 0")
        self.shift = float(shift)
        self.num_timesteps = int(num_timesteps)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] long in [0, num_timesteps) -> sigma [B] fp32 in (0, 1]."""
        u = (t.double() + 1) / self.num_timesteps
        return (self.shift * u / (1 + (self.shift - 1) * u)).float()

    def noisy_and_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        """x0, noise [B, ...] (any dtype), t [B] long -> (z_t, target) both fp32 [B, ...]."""
        x0, noise = x0.float(), noise.float()
        s = self.sigma(t).to(x0.device).view((-1,) + (1,) * (x0.dim() - 1))
        return (1 - s) * x0 + s * noise, noise - x0

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t).to(t.device) * self.num_timesteps
