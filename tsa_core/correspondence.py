"""Tempered correspondences and the TSA / M-TSA loss (paper Eq. 6-10 and 13)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from tsa.core.checks import check_grid, check_pair, check_query_index, check_tokens, compute_pair
from tsa.core.chunked_kl import ChunkedTemperedKL

DEFAULT_CHUNK = 256  # query rows per chunk (config: align.query_chunk)


def query_rows(x: torch.Tensor, query_index: Optional[torch.Tensor]) -> torch.Tensor:
    """Rows of x [B, N, C] at query_index [B, M] -> [B, M, C] (x itself when None)."""
    if query_index is None:
        return x
    return torch.gather(x, 1, query_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def correspondence_probs(tokens: torch.Tensor, grid: Sequence[int], tau: float = 0.1,
                         query_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """P of Eq. 8 for inspection: tokens [B, N, C] -> [B, M, F, H, W].

    fp32 (float64 kept), autograd-able. Builds the [B, M, N] similarity rows at once:
    meant for a few query tokens (viewer), not for the loss.
    """
    f, h, w = grid = check_grid(grid)
    check_tokens("tokens", tokens, grid)
    query_index = check_query_index(query_index, tokens.shape[0], tokens.shape[1], tokens.device)
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        e = F.normalize(compute_pair(tokens, tokens)[0], dim=-1)
        r = query_rows(e, query_index) @ e.transpose(1, 2)  # [B, M, N]
        p = torch.softmax(r.unflatten(-1, (f, h * w)) / tau, dim=-1)
    return p.unflatten(-1, (h, w))


def tsa_loss(student: torch.Tensor, teacher: torch.Tensor, grid: Sequence[int], tau: float = 0.1,
             query_index: Optional[torch.Tensor] = None, chunk: Optional[int] = None) -> torch.Tensor:
    """TSA (Eq. 9) or, with `query_index`, M-TSA (Eq. 13): a scalar fp32 tensor.

    student [B, N, Cs], teacher [B, N, Ct] (Cs and Ct may differ), N = F*H*W of
    grid (F, H, W), tokens in (frame, row, column) order. query_index [B, M] long selects
    the query rows (M-TSA); None makes every token a query (TSA). The key side is always
    all N tokens. Loss = mean over batch, query rows and frames of
    KL(P_teacher || P_student), computed in fp32 (float64 when both inputs are float64)
    with autocast off, `chunk` query rows at a time (default 256, config
    align.query_chunk), so memory grows with chunk * N, never with M * N or N * N.

    The teacher is a fixed target: it receives no gradient, and a teacher that requires
    grad is refused (pass teacher.detach()). When the student requires grad, the gradient
    is computed during this call (same pass over the chunks) and backward only scales it.
    """
    grid = check_grid(grid)
    check_tokens("student", student, grid)
    check_tokens("teacher", teacher, grid)
    check_pair(student, teacher)
    query_index = check_query_index(query_index, student.shape[0], student.shape[1], student.device)
    if not tau > 0:
        raise ValueError(f"tau={tau}: must be > 0")
    chunk = DEFAULT_CHUNK if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: must be >= 1")
    if teacher.requires_grad:
        raise ValueError("tsa_loss: teacher requires grad, but the teacher is a fixed target "
                         "and gets no gradient; pass teacher.detach()")
    with_grad = torch.is_grad_enabled() and student.requires_grad
    with torch.autocast(device_type=student.device.type, enabled=False):
        return ChunkedTemperedKL.apply(*compute_pair(student, teacher), query_index, grid[0],
                                       float(tau), chunk, with_grad)

