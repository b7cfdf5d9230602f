"""trd_loss and repa_loss against plain float64 references written here."""
from __future__ import annotations

import pytest
import torch

from tsa.core import repa_loss, trd_loss


def ref_trd(student, teacher, margin, query_index=None):
    """relu(|R_s - R_t| - margin) averaged over batch, query rows and all N keys."""
    b_, n, _ = student.shape
    total, terms = 0.0, 0
    for b in range(b_):
        rows = range(n) if query_index is None else query_index[b].tolist()
        for i in rows:
            for j in range(n):
                rs = torch.dot(student[b, i], student[b, j]) / (student[b, i].norm() * student[b, j].norm())
                rt = torch.dot(teacher[b, i], teacher[b, j]) / (teacher[b, i].norm() * teacher[b, j].norm())
                total = total + torch.clamp((rs - rt).abs() - margin, min=0)
                terms += 1
    return total / terms


def ref_repa(student, teacher):
    b_, n, _ = student.shape
    total = 0.0
    for b in range(b_):
        for i in range(n):
            total = total - torch.dot(student[b, i], teacher[b, i]) / (student[b, i].norm() * teacher[b, i].norm())
    return total / (b_ * n)


def inputs(n, cs, ct, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, n, cs, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(2, n, ct, generator=g, dtype=torch.float64).requires_grad_()
    return s, t


@pytest.mark.parametrize("grid", [(1, 2, 3), (2, 3, 2)])
@pytest.mark.parametrize("margin", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("with_queries", [False, True])
def test_trd_matches_reference(grid, margin, with_queries):
    n = grid[0] * grid[1] * grid[2]
    s, t = inputs(n, 5, 4, seed=n)
    qi = torch.tensor([[0, n - 1, 2], [3, 1, 1]]) if with_queries else None
    assert_same_value_and_grads(trd_loss(s, t, grid, margin=margin, query_index=qi), ref_trd(s, t, margin, qi),
                                (s, t), value_tol=(1e-10, 1e-12), grad_tol=(1e-9, 1e-12))



def assert_same_value_and_grads(loss, ref, inputs, value_tol, grad_tol):
    """loss == ref and d loss / d inputs == d ref / d inputs, within (rtol, atol) each."""
    torch.testing.assert_close(loss, ref, rtol=value_tol[0], atol=value_tol[1])
    grads = torch.autograd.grad(loss, inputs, retain_graph=True)
    for g, r in zip(grads, torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(g, r, rtol=grad_tol[0], atol=grad_tol[1])

def test_trd_margin_hides_small_differences():
    s, _ = inputs(6, 4, 4, seed=1)
    t = s.detach() * 2.0 + 1e-3 * torch.randn_like(s)  # cosines nearly equal
    assert trd_loss(s, t, (1, 2, 3), margin=0.1).item() == 0.0
    assert trd_loss(s, t, (1, 2, 3), margin=0.0).item() > 0.0


def test_trd_fp32_under_bf16_autocast():
    s, t = inputs(12, 16, 16, seed=2)
    s32, t32 = s.detach().float(), t.detach().float()
    expected = trd_loss(s32, t32, (2, 2, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = trd_loss(s32, t32, (2, 2, 3))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)


def test_trd_checks_grid():
    s, t = inputs(6, 4, 4, seed=3)
    with pytest.raises(ValueError, match="grid"):
        trd_loss(s, t, (2, 2, 2))


def test_repa_matches_reference():
    s, t = inputs(7, 5, 5, seed=4)
    assert_same_value_and_grads(repa_loss(s, t), ref_repa(s, t), (s, t),
                                value_tol=(1e-12, 1e-12), grad_tol=(1e-10, 1e-13))


def test_repa_extremes_and_fp32():
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(repa_loss(x, 3 * x), torch.tensor(-1.0))
    torch.testing.assert_close(repa_loss(x, -x), torch.tensor(1.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert repa_loss(x.bfloat16(), x.bfloat16()).dtype == torch.float32


def test_repa_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        repa_loss(torch.randn(2, 5, 8), torch.randn(2, 5, 7))
