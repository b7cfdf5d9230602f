"""Tempered correspondences and the TSA / M-TSA loss (paper Eq. 6-10 and 13)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from tsa_core.checks import check_grid, check_pair, check_query_index, check_tokens


def _rows(x: torch.Tensor, query_index: Optional[torch.Tensor]) -> torch.Tensor:
    """Query rows of `x` [B, N, C] -> [B, M, C] (all rows when `query_index` is None)."""
    if query_index is None:
        return x
    return torch.gather(x, 1, query_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def tempered_log_probs(e: torch.Tensor, grid: tuple[int, int, int], tau: float,
                       query_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """log P of Eq. 8 for L2-normalised tokens `e` [B, N, C] -> [B, M, F, H*W]."""
    f, h, w = grid
    r = _rows(e, query_index) @ e.transpose(1, 2)  # [B, M, N]
    return torch.log_softmax(r.unflatten(-1, (f, h * w)) / tau, dim=-1)


def tsa_loss(student: torch.Tensor, teacher: torch.Tensor, grid: Sequence[int], tau: float = 0.1,
             query_index: Optional[torch.Tensor] = None, chunk: Optional[int] = None) -> torch.Tensor:
    """TSA (Eq. 9) or, with `query_index`, M-TSA (Eq. 13): a scalar.

    student [B, N, Cs], teacher [B, N, Ct], N = F*H*W of grid (F, H, W), tokens in
    (frame, row, column) order; query_index [B, M] long or None (every token a query).
    Loss = mean over batch, query rows and frames of KL(P_teacher || P_student), in fp32.
    """
    grid = check_grid(grid)
    check_tokens("student", student, grid)
    check_tokens("teacher", teacher, grid)
    check_pair(student, teacher)
    query_index = check_query_index(query_index, student.shape[0], student.shape[1], student.device)
    if not tau > 0:
        raise ValueError(f"tau={tau}: must be > 0")
    with torch.autocast(device_type=student.device.type, enabled=False):
        es = F.normalize(student.float(), dim=-1)
        et = F.normalize(teacher.float(), dim=-1)
        log_ps = tempered_log_probs(es, grid, tau, query_index)
        log_pt = tempered_log_probs(et, grid, tau, query_index)
        pt = log_pt.exp()
        kl = torch.where(pt > 0, pt * (log_pt - log_ps), 0.0).sum(-1)  # [B, M, F]
        return kl.mean()
