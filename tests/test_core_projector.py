"""Projector: paper and tiny geometry, token order, frame-0 drop, linear x2 time upsampling."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tsa.core import Projector


def test_paper_geometry():
    # The hidden size (paper: 2048) does not touch the geometry; 64 keeps the MLP cheap.
    proj = Projector(1920, 64, 768)
    assert proj.output_grid((13, 30, 45)) == (24, 10, 15)
    with torch.no_grad():
        out = proj(torch.randn(1, 13 * 30 * 45, 1920), (13, 30, 45))
    assert out.shape == (1, 24 * 10 * 15, 768) and torch.isfinite(out).all()


def test_tiny_geometry_and_gradients():
    proj = Projector(32, 16, 8)
    assert proj.output_grid((3, 12, 18)) == (4, 4, 6)
    x = torch.randn(2, 3 * 12 * 18, 32, requires_grad=True)
    out = proj(x, (3, 12, 18))
    assert out.shape == (2, 4 * 4 * 6, 8)
    out.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in proj.parameters())


def ref_time_upsample(y):
    """Linear x2 in time, align_corners=False: out[2k] = .75 y[k] + .25 y[k-1],
    out[2k+1] = .75 y[k] + .25 y[k+1], indices clamped at the ends. y [T, ...]."""
    t = y.shape[0]
    out = []
    for k in range(t):
        out.append(0.75 * y[k] + 0.25 * y[max(k - 1, 0)])
        out.append(0.75 * y[k] + 0.25 * y[min(k + 1, t - 1)])
    return torch.stack(out)


def test_drop_frame0_upsample_and_token_order():
    """With an identity MLP and a conv that copies its centre tap, output token
    (t, i, j) = time-upsampled input at (t, 3i+1, 3j+1) of latent frames 1..."""
    fs, hs, ws, c = 4, 6, 9, 3
    proj = Projector(c, c, c).double()
    with torch.no_grad():
        for layer in proj.mlp:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.eye(c))
                layer.bias.zero_()
        proj.mlp[1] = nn.Identity()  # drop the SiLUs so the MLP is the identity
        proj.mlp[3] = nn.Identity()
        proj.conv.weight.zero_()
        proj.conv.bias.zero_()
        for ch in range(c):
            proj.conv.weight[ch, ch, 1, 1, 1] = 1.0
    x = torch.randn(2, fs * hs * ws, c, dtype=torch.float64)
    out = proj(x, (fs, hs, ws))
    ft, ht, wt = proj.output_grid((fs, hs, ws))
    assert (ft, ht, wt) == (6, 2, 3)
    grid = x.reshape(2, fs, hs, ws, c)
    for b in range(2):
        up = ref_time_upsample(grid[b, 1:])  # [2(Fs-1), Hs, Ws, C]
        for t in range(ft):
            for i in range(ht):
                for j in range(wt):
                    torch.testing.assert_close(out[b, t * ht * wt + i * wt + j], up[t, 3 * i + 1, 3 * j + 1])


def test_latent_frame_zero_does_not_reach_the_output():
    proj = Projector(8, 8, 4)
    x = torch.randn(1, 3 * 6 * 6, 8)
    y = x.clone()
    y[:, : 6 * 6] = torch.randn(1, 36, 8)  # change latent frame 0 only
    with torch.no_grad():
        torch.testing.assert_close(proj(x, (3, 6, 6)), proj(y, (3, 6, 6)))


def test_bad_inputs():
    proj = Projector(8, 8, 4)
    with pytest.raises(ValueError, match=r"expected \[B, 108, 8\]"):
        proj(torch.randn(1, 100, 8), (3, 6, 6))
    with pytest.raises(ValueError, match="latent frames"):
        proj.output_grid((1, 6, 6))
    with pytest.raises(ValueError, match="too small"):
        proj.output_grid((3, 2, 6))
