"""Motion saliency (paper Eq. 11-12): tubelet temporal differences, top-k masks, query indices."""
from __future__ import annotations

from typing import Sequence

import torch


def motion_map(video: torch.Tensor, tubelet: Sequence[int] = (2, 16, 16)) -> torch.Tensor:
    """Eq. 11: video [B, 3, T, Hp, Wp] -> Delta [B, F, H, W], F = T/Pt, H = Hp/Ph, W = Wp/Pw.

    Delta_t = L1 norm of (Y_t - Y_{t-1}) over the 3*Pt*Ph*Pw values of tubelet token
    Y_{t,h,w}, for t >= 1; Delta_0 = Delta_1. With F == 1 there is no difference to take
    and Delta is all zeros. Computed in float32 (float64 stays float64).
    """
    if not isinstance(video, torch.Tensor) or video.dim() != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"motion_map: video must be [B, 3, T, Hp, Wp], got {shape}")
    pt, ph, pw = (int(p) for p in tubelet)
    b, c, t, hp, wp = video.shape
    if t % pt or hp % ph or wp % pw:
        raise ValueError(f"motion_map: video T x Hp x Wp = {t} x {hp} x {wp} is not divisible "
                         f"by the tubelet ({pt}, {ph}, {pw})")
    dtype = torch.float64 if video.dtype == torch.float64 else torch.float32
    f, h, w = t // pt, hp // ph, wp // pw
    y = video.to(dtype).reshape(b, c, f, pt, h, ph, w, pw)
    y = y.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, f, h, w, c * pt * ph * pw)
    if f == 1:
        return y.new_zeros(b, 1, h, w)
    delta = (y[:, 1:] - y[:, :-1]).abs().sum(-1)  # [B, F-1, H, W]: Delta_1 .. Delta_{F-1}
    return torch.cat([delta[:, :1], delta], dim=1)


def topk_count(ratio: float, tokens_per_frame: int) -> int:
    """Eq. 12's k as a count: n = max(1, int(round(ratio * H*W)))."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio={ratio}: must be in (0, 1]")
    return max(1, int(round(ratio * tokens_per_frame)))


def topk_mask(motion: torch.Tensor, ratio: float) -> torch.Tensor:
    """Eq. 12: motion [B, F, H, W] -> BoolTensor [B, F, H, W] with exactly n True per frame.

    n = topk_count(ratio, H*W); the n largest values of each frame win, ties go to the
    lower flat index (a stable sort, since torch.topk does not fix the order of ties).
    """
    if not isinstance(motion, torch.Tensor) or motion.dim() != 4:
        shape = tuple(motion.shape) if isinstance(motion, torch.Tensor) else type(motion).__name__
        raise ValueError(f"topk_mask: motion must be [B, F, H, W], got {shape}")
    if motion.is_floating_point() and bool(torch.isnan(motion).any()):
        raise ValueError("topk_mask: motion contains NaN")
    b, f, h, w = motion.shape
    n = topk_count(ratio, h * w)
    flat = motion.reshape(b, f, h * w)
    order = torch.sort(flat, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, order, True)
    return mask.reshape(b, f, h, w)


def mask_to_index(mask: torch.Tensor) -> torch.Tensor:
    """mask [B, ...] bool -> LongTensor [B, M]: flat indices of the True entries, increasing.

    Every sample must hold the same number M >= 1 of True entries (topk_mask guarantees it).
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() < 2:
        desc = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask_to_index: expected a bool tensor [B, ...], got {desc}")
    flat = mask.reshape(mask.shape[0], -1)
    counts = flat.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError(f"mask_to_index: samples have different numbers of True entries "
                         f"{counts.tolist()}; M-TSA needs the same M for every sample")
    if int(counts[0]) == 0:
        raise ValueError("mask_to_index: the mask has no True entry")
    # nonzero lists (sample, index) pairs in row-major order: increasing index per sample.
    return flat.nonzero()[:, 1].reshape(flat.shape[0], int(counts[0]))
