"""Memory-frugal TSA / M-TSA: the tempered-correspondence KL computed a chunk of query rows
at a time, with a hand-written backward, so no [M, N] (let alone [N, N]) matrix ever exists
for a whole sample. Only the fp32 inputs and their inverse norms are kept for backward.

Notation (one sample): x [N, C] tokens, inv [N] = 1 / max(|x_n|, eps), E = x * inv
(F.normalize), R = E_q E^T / tau [c, N] for a chunk q of query rows, viewed as
[c, F, H*W] and soft-maxed over H*W (Eq. 8).

Backward, with D = B * M * F the number of (sample, query, frame) terms averaged:
    dL/dR_s (tempered logits) = (P_s - P_t) / D                        (Eq. 10, times tau)
    dL/dE_q += (P_s - P_t) / (tau D) @ E        (query side)
    dL/dE   += ((P_s - P_t) / (tau D))^T @ E_q  (key side)
then through the L2 normalisation: dL/dx = inv * (g - E <E, g>) where |x| > eps, and
inv * g where the norm was clamped (the gradient F.normalize gives).
"""
from __future__ import annotations

from typing import Iterator, Optional, Union

import torch

EPS = 1e-12  # F.normalize's default

Rows = Union[slice, torch.Tensor]


def inverse_norm(x: torch.Tensor) -> torch.Tensor:
    """x [..., C] -> 1 / max(|x|, EPS) [...]."""
    return torch.linalg.vector_norm(x, dim=-1).clamp_min(EPS).reciprocal()


def row_chunks(query_index: Optional[torch.Tensor], b: int, n: int, chunk: int) -> Iterator[Rows]:
    """Query rows of sample b, `chunk` at a time: slices when every token is a query."""
    if query_index is None:
        for start in range(0, n, chunk):
            yield slice(start, min(start + chunk, n))
    else:
        yield from query_index[b].split(chunk)


def tempered_log_probs(x: torch.Tensor, inv: torch.Tensor, rows: Rows, frames: int,
                       tau: float) -> torch.Tensor:
    """log P (Eq. 8) of query rows `rows` of one sample: x [N, C], inv [N] -> [c, F, H*W]."""
    xq = x[rows] * (inv[rows] / tau).unsqueeze(-1)
    logits = (xq @ x.T).mul_(inv)  # [c, N] = E_q E^T / tau
    return torch.log_softmax(logits.view(logits.shape[0], frames, -1), dim=-1)


def kl_sum(log_pt: torch.Tensor, log_ps: torch.Tensor) -> torch.Tensor:
    """sum of KL(P_t || P_s) terms with 0 log 0 = 0, in the input dtype."""
    pt = log_pt.exp()
    return torch.where(pt > 0, pt * (log_pt - log_ps), 0.0).sum()


class ChunkedTemperedKL(torch.autograd.Function):
    """loss = mean over b, query rows, frames of KL(P_teacher || P_student).

    forward(student [B, N, Cs] fp32, teacher [B, N, Ct] fp32 (no grad), query_index [B, M]
    long or None (all N rows), frames F, tau, chunk) -> scalar. The teacher is a fixed
    target: its gradient is None.
    """

    @staticmethod
    def forward(ctx, student, teacher, query_index, frames, tau, chunk):
        b, n, _ = student.shape
        m = n if query_index is None else query_index.shape[1]
        inv_s, inv_t = inverse_norm(student), inverse_norm(teacher)
        total = student.new_zeros(())
        for i in range(b):
            for rows in row_chunks(query_index, i, n, chunk):
                log_ps = tempered_log_probs(student[i], inv_s[i], rows, frames, tau)
                log_pt = tempered_log_probs(teacher[i], inv_t[i], rows, frames, tau)
                total += kl_sum(log_pt, log_ps)
        ctx.save_for_backward(student, inv_s, teacher, inv_t,
                              query_index if query_index is not None else None)
        ctx.dense = query_index is None
        ctx.frames, ctx.tau, ctx.chunk, ctx.terms = frames, tau, chunk, b * m * frames
        return total / ctx.terms

    @staticmethod
    def backward(ctx, grad_out):
        student, inv_s, teacher, inv_t, query_index = ctx.saved_tensors
        query_index = None if ctx.dense else query_index
        frames, tau, chunk = ctx.frames, ctx.tau, ctx.chunk
        b, n, _ = student.shape
        scale = grad_out / (tau * ctx.terms)
        grad = torch.zeros_like(student)  # dL/dE, then dL/dx in place
        with torch.autocast(device_type=student.device.type, enabled=False):
            for i in range(b):
                x, inv, g = student[i], inv_s[i], grad[i]
                for rows in row_chunks(query_index, i, n, chunk):
                    ps = tempered_log_probs(x, inv, rows, frames, tau).exp_()
                    pt = tempered_log_probs(teacher[i], inv_t[i], rows, frames, tau).exp_()
                    d = ps.sub_(pt).mul_(scale).view(ps.shape[0], n)  # dL/dR (untempered) [c, N]
                    eq = x[rows] * inv[rows].unsqueeze(-1)
                    g.addmm_(d.T, eq)  # key side
                    dq = d.mul_(inv) @ x  # query side: d @ E
                    if isinstance(rows, slice):
                        g[rows] += dq
                    else:
                        g.index_add_(0, rows, dq)
                _normalize_backward_(g, x, inv)
        return grad, None, None, None, None, None


def _normalize_backward_(g: torch.Tensor, x: torch.Tensor, inv: torch.Tensor) -> None:
    """In place: g = dL/dE [N, C] -> dL/dx for E = x * inv (inv [N] as in inverse_norm)."""
    dot = (x.unsqueeze(1) @ g.unsqueeze(2)).view(-1)  # <x, g> per row without an [N, C] temp
    unclamped = torch.linalg.vector_norm(x, dim=-1) > EPS
    coef = torch.where(unclamped, dot * inv.pow(3), 0.0)
    g.mul_(inv.unsqueeze(-1)).addcmul_(x, coef.unsqueeze(-1), value=-1)
