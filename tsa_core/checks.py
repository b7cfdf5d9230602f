"""Input checks shared by the losses: clear errors that name the argument and the shape."""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def check_grid(grid: Sequence[int], name: str = "grid") -> tuple[int, int, int]:
    """`grid` as a tuple (F, H, W) of positive ints."""
    try:
        f, h, w = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={grid!r}: expected three ints (F, H, W)") from None
    if min(f, h, w) < 1:
        raise ValueError(f"{name}={grid!r}: every size must be >= 1")
    return f, h, w


def check_tokens(name: str, x: torch.Tensor, grid: tuple[int, int, int]) -> None:
    """`x` must be a float tensor [B, N, C] with N = F*H*W of `grid`."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a tensor [B, N, C], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    f, h, w = grid
    if x.shape[1] != f * h * w:
        raise ValueError(f"{name}: N={x.shape[1]} tokens but grid {grid} has F*H*W={f * h * w}")


def check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                         "differ in [B, N]")
    if student.device != teacher.device:
        raise ValueError(f"student is on {student.device}, teacher on {teacher.device}")


def check_query_index(query_index: Optional[torch.Tensor], batch: int, n: int,
                      device: torch.device) -> Optional[torch.Tensor]:
    """None, or a LongTensor [B, M] (M >= 1) of token indices in [0, N)."""
    if query_index is None:
        return None
    if not isinstance(query_index, torch.Tensor) or query_index.dim() != 2:
        shape = tuple(query_index.shape) if isinstance(query_index, torch.Tensor) else type(query_index).__name__
        raise ValueError(f"query_index: expected a LongTensor [B, M], got {shape}")
    if query_index.dtype.is_floating_point or query_index.dtype == torch.bool:
        raise ValueError(f"query_index: expected integer indices, got {query_index.dtype} "
                         "(use mask_to_index to turn a mask into indices)")
    if query_index.shape[0] != batch:
        raise ValueError(f"query_index: batch {query_index.shape[0]} but the features have B={batch}")
    if query_index.shape[1] == 0:
        raise ValueError("query_index: no query rows (M = 0)")
    if query_index.device != device:
        raise ValueError(f"query_index is on {query_index.device}, the features on {device}")
    lo, hi = int(query_index.min()), int(query_index.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"query_index: values must be in [0, {n}), got [{lo}, {hi}]")
    return query_index.long()


def compute_pair(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in the losses' compute dtype: float64 when both are float64 (reference tests),
    else float32 (bf16 / fp16 inputs are cast). No copy when already there."""
    dtype = torch.float64 if student.dtype == teacher.dtype == torch.float64 else torch.float32
    return student.to(dtype), teacher.to(dtype)
