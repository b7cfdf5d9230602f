"""Projector h_psi (paper Eq. 5, SPEC section 2): student tokens -> teacher token space and grid."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tsa.core.checks import check_grid


class Projector(nn.Module):
    """3-layer MLP (SiLU) per token, drop latent frame 0, linear x`time_scale` upsampling in
    time, then Conv3d(out_dim, out_dim, kernel, stride, padding).

    Paper sizes: in_dim 1920, hidden_dim 2048, out_dim 768, (13, 30, 45) -> (24, 10, 15).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, time_scale: int = 2,
                 kernel: Sequence[int] = (3, 3, 3), stride: Sequence[int] = (1, 3, 3),
                 padding: Sequence[int] = (1, 0, 0)):
        super().__init__()
        self.in_dim, self.out_dim, self.time_scale = in_dim, out_dim, int(time_scale)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )
        self.conv = nn.Conv3d(out_dim, out_dim, tuple(kernel), tuple(stride), tuple(padding))

    def output_grid(self, grid: Sequence[int]) -> tuple[int, int, int]:
        """(Fs, Hs, Ws) of the student tokens -> (Ft, Ht, Wt) of the output tokens."""
        f, h, w = check_grid(grid)
        if f < 2:
            raise ValueError(f"Projector: grid {grid} needs >= 2 latent frames (frame 0 is dropped)")
        sizes = ((f - 1) * self.time_scale, h, w)
        out = []
        for axis, size in enumerate(sizes):
            k, s, p = self.conv.kernel_size[axis], self.conv.stride[axis], self.conv.padding[axis]
            n = (size + 2 * p - k) // s + 1
            if n < 1:
                raise ValueError(f"Projector: grid {grid} is too small for Conv3d kernel "
                                 f"{self.conv.kernel_size}, stride {self.conv.stride}")
            out.append(n)
        return tuple(out)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """x [B, Fs*Hs*Ws, in_dim] in (frame, row, col) order -> [B, Ft*Ht*Wt, out_dim]."""
        f, h, w = check_grid(grid)
        if x.dim() != 3 or x.shape[1] != f * h * w or x.shape[2] != self.in_dim:
            raise ValueError(f"Projector: expected [B, {f * h * w}, {self.in_dim}] for grid "
                             f"{(f, h, w)}, got {tuple(x.shape)}")
        self.output_grid((f, h, w))
        y = self.mlp(x).unflatten(1, (f, h, w))[:, 1:]  # [B, Fs-1, Hs, Ws, out]
        y = y.permute(0, 4, 1, 2, 3)  # [B, out, Fs-1, Hs, Ws]
        # Trilinear with unchanged H, W is linear in time only; align_corners=False is
        # what VideoREPA uses for the same x2 step (see docs/math.md).
        y = F.interpolate(y, size=((f - 1) * self.time_scale, h, w), mode="trilinear",
                          align_corners=False)
        y = self.conv(y)  # [B, out, Ft, Ht, Wt]
        return y.flatten(2).transpose(1, 2)
