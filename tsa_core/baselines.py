"""Baseline alignment losses: REPA (Eq. 2) and VideoREPA's token relation distillation."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from tsa.core.checks import check_grid, check_pair, check_query_index, check_tokens, compute_pair
from tsa.core.correspondence import query_rows


def repa_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean over batch and tokens of -cos(student, teacher); both [B, N, C].

    fp32 (float64 when both are float64) with autocast off; gradients reach both arguments.
    """
    if student.dim() != 3 or student.shape != teacher.shape:
        raise ValueError(f"repa_loss: student {tuple(student.shape)} and teacher "
                         f"{tuple(teacher.shape)} must both be [B, N, C] of the same shape")
    if not (student.is_floating_point() and teacher.is_floating_point()):
        raise ValueError("repa_loss: student and teacher must be floating-point tensors")
    with torch.autocast(device_type=student.device.type, enabled=False):
        student, teacher = compute_pair(student, teacher)
        es = F.normalize(student, dim=-1)
        et = F.normalize(teacher, dim=-1)
        return -(es * et).sum(-1).mean()


def trd_loss(student: torch.Tensor, teacher: torch.Tensor, grid: Sequence[int], margin: float = 0.1,
             query_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """VideoREPA's token relation distillation: mean of relu(|R_s - R_t| - margin).

    student [B, N, Cs], teacher [B, N, Ct]; R = cosine similarities of the query rows
    (all rows when `query_index` is None, else [B, M]) against all N tokens. fp32 (float64
    kept) with autocast off; gradients reach both arguments. Builds [B, M, N] at once.
    """
    grid = check_grid(grid)
    check_tokens("student", student, grid)
    check_tokens("teacher", teacher, grid)
    check_pair(student, teacher)
    query_index = check_query_index(query_index, student.shape[0], student.shape[1], student.device)
    with torch.autocast(device_type=student.device.type, enabled=False):
        student, teacher = compute_pair(student, teacher)
        es = F.normalize(student, dim=-1)
        et = F.normalize(teacher, dim=-1)
        rs = query_rows(es, query_index) @ es.transpose(1, 2)  # [B, M, N]
        rt = query_rows(et, query_index) @ et.transpose(1, 2)
        return F.relu((rs - rt).abs() - margin).mean()
