"""Memory-frugal TSA / M-TSA: the tempered-correspondence KL and its gradient computed a
chunk of query rows at a time, so no [M, N] (let alone [N, N]) matrix ever exists for a
whole sample.

Notation (one sample): x [N, C] tokens, inv [N] = 1 / max(|x_n|, eps), E = x * inv
(F.normalize), for a chunk q of query rows R = E_q E^T / tau [c, N], viewed as
[c, F, H*W] and soft-maxed over H*W (Eq. 8).

Gradient, with D = B * M * F the number of (sample, query, frame) KL terms averaged:
    dL/dR_s = (P_s - P_t) / (tau D)              (Eq. 10 with the mean's 1/D)
    dL/dE_q += dL/dR_s @ E                        (query side)
    dL/dE   += (dL/dR_s)^T @ E_q                  (key side)
then through the L2 normalisation: dL/dx = inv * (g - E <E, g>) where |x| > eps, and
inv * g where the norm was clamped (what F.normalize's autograd gives).

The loss is a scalar, so dL/dx is fully known once P_s and P_t of a chunk are: when the
student needs a gradient, forward accumulates it in the same pass over the chunks (the
similarities are computed once, never recomputed), and backward only scales it by the
incoming gradient, in place, handing the buffer to autograd. Memory: one [B, N, Cs]
gradient buffer (the gradient autograd would return anyway) plus a few [chunk, N]
temporaries.
"""
from __future__ import annotations

from typing import Iterator, Optional, Union

import torch
from torch.autograd.function import once_differentiable

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


def kl_sum_(log_pt: torch.Tensor, pt: torch.Tensor, log_ps: torch.Tensor) -> torch.Tensor:
    """Sum over all rows of KL(P_t || P_s) = sum p_t (log p_t - log p_s); overwrites log_pt.

    0 log 0 = 0 holds without a mask: log_pt comes from log_softmax of logits bounded by
    1/tau, so it is finite even where p_t underflows to 0, and 0 * finite = 0. The row
    dot products avoid another [c, N] temporary.
    """
    diff = log_pt.sub_(log_ps).view(log_pt.shape[0], -1, 1)
    return (pt.view(pt.shape[0], 1, -1) @ diff).sum()


def normalize_backward_(g: torch.Tensor, x: torch.Tensor, inv: torch.Tensor) -> None:
    """In place: g = dL/dE [N, C] -> dL/dx for E = x * inv (inv [N] as in inverse_norm)."""
    dot = (x.unsqueeze(1) @ g.unsqueeze(2)).view(-1)  # <x, g> per row without an [N, C] temp
    unclamped = torch.linalg.vector_norm(x, dim=-1) > EPS
    coef = torch.where(unclamped, dot * inv.pow(3), 0.0)
    g.mul_(inv.unsqueeze(-1)).addcmul_(x, coef.unsqueeze(-1), value=-1)


def tempered_kl(student: torch.Tensor, teacher: torch.Tensor, query_index: Optional[torch.Tensor],
                frames: int, tau: float, chunk: int, with_grad: bool):
    """(loss, dloss/dstudent or None). student [B, N, Cs], teacher [B, N, Ct] in one float
    dtype; query_index [B, M] long or None (all N rows)."""
    b, n, _ = student.shape
    m = n if query_index is None else query_index.shape[1]
    terms = b * m * frames
    inv_s, inv_t = inverse_norm(student), inverse_norm(teacher)
    total = student.new_zeros(())
    grad = torch.zeros_like(student) if with_grad else None  # dL/dE, then dL/dx in place
    for i in range(b):
        x, inv = student[i], inv_s[i]
        for rows in row_chunks(query_index, i, n, chunk):
            log_ps = tempered_log_probs(x, inv, rows, frames, tau)
            log_pt = tempered_log_probs(teacher[i], inv_t[i], rows, frames, tau)
            pt = log_pt.exp()
            total += kl_sum_(log_pt, pt, log_ps)
            del log_pt
            if grad is None:
                continue
            d = log_ps.exp_().sub_(pt).div_(tau * terms).view(-1, n)  # dL/dR_s [c, N]
            eq = x[rows] * inv[rows].unsqueeze(-1)
            grad[i].addmm_(d.T, eq)  # key side
            dq = d.mul_(inv) @ x  # query side: dL/dR_s @ E
            if isinstance(rows, slice):
                grad[i, rows] += dq
            else:
                grad[i].index_add_(0, rows, dq)
        if grad is not None:
            normalize_backward_(grad[i], x, inv)
    return total / terms, grad


class ChunkedTemperedKL(torch.autograd.Function):
    """loss = mean over b, query rows, frames of KL(P_teacher || P_student).

    forward(student [B, N, Cs], teacher [B, N, Ct] (no grad), query_index [B, M] long or
    None, frames F, tau, chunk, with_grad) -> scalar. The teacher is a fixed target: its
    gradient is None. First-order only, and one backward per forward: the gradient buffer
    is scaled in place and handed over rather than copied, so a second backward through
    the same loss (retain_graph=True) raises.
    """

    @staticmethod
    def forward(ctx, student, teacher, query_index, frames, tau, chunk, with_grad):
        loss, ctx.grad = tempered_kl(student, teacher, query_index, frames, tau, chunk, with_grad)
        ctx.handed_over = False
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.handed_over:
            raise RuntimeError("tsa_loss: backward ran twice through the same loss; its gradient is "
                               "computed in forward and handed over once (compute the loss again "
                               "instead of using retain_graph=True)")
        grad, ctx.grad, ctx.handed_over = ctx.grad, None, True
        if grad is None:
            raise RuntimeError("tsa_loss: the student did not require grad at forward time")
        return grad.mul_(grad_out), None, None, None, None, None, None
