"""tsa_loss (TSA / M-TSA, Eq. 8-10, 13) against a plain float64 reference written here."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tsa.core import correspondence_probs, mask_to_index, topk_mask, tsa_loss

GRIDS = [(1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 2, 2)]
TAUS = [1.0, 0.1, 0.03]


# ----------------------------------------------------------------------------- reference

def ref_log_softmax(r: torch.Tensor) -> torch.Tensor:
    m = r.max()
    return r - (m + torch.log(torch.exp(r - m).sum()))


def ref_tsa(student, teacher, grid, tau, query_index=None):
    """Eq. 6-9 / 13 row by row, frame by frame, in float64."""
    f, h, w = grid
    b_, n, _ = student.shape
    es = student / student.norm(dim=-1, keepdim=True)
    et = teacher / teacher.norm(dim=-1, keepdim=True)
    total, terms = 0.0, 0
    for b in range(b_):
        rows = range(n) if query_index is None else query_index[b].tolist()
        for i in rows:
            rs = torch.einsum("c,nc->n", es[b, i], es[b]).reshape(f, h * w)
            rt = torch.einsum("c,nc->n", et[b, i], et[b]).reshape(f, h * w)
            for t in range(f):
                log_ps = ref_log_softmax(rs[t] / tau)
                log_pt = ref_log_softmax(rt[t] / tau)
                pt = log_pt.exp()
                total = total + (pt * (log_pt - log_ps))[pt > 0].sum()
                terms += 1
    return total / terms


def make_inputs(grid, b=2, cs=6, ct=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    student = torch.randn(b, n, cs, generator=g, dtype=dtype).requires_grad_()
    teacher = torch.randn(b, n, ct, generator=g, dtype=dtype)
    return student, teacher


def random_queries(b, n, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:m] for _ in range(b)])


# ----------------------------------------------------------------------------- values and gradients

@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("with_queries", [False, True])
def test_matches_float64_reference(grid, tau, with_queries):
    student, teacher = make_inputs(grid, seed=hash((grid, tau)) % 1000)
    n = student.shape[1]
    qi = random_queries(2, n, max(1, n // 3), seed=1) if with_queries else None
    loss = tsa_loss(student, teacher, grid, tau=tau, query_index=qi, chunk=5)
    ref = ref_tsa(student, teacher, grid, tau, qi)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(loss, student)
    (g_ref,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("with_queries", [False, True])
def test_fp32_inputs_match_float64_reference(with_queries):
    grid = (3, 4, 5)
    student, teacher = make_inputs(grid, dtype=torch.float32, seed=3)
    qi = random_queries(2, 60, 17) if with_queries else None
    loss = tsa_loss(student, teacher, grid, tau=0.1, query_index=qi)
    assert loss.dtype == torch.float32
    s64 = student.detach().double().requires_grad_()
    ref = ref_tsa(s64, teacher.double(), grid, 0.1, qi)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(loss, student)
    (g_ref,) = torch.autograd.grad(ref, s64)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("chunk", [1, 3, 5, 7, 16, 17, 1000])
@pytest.mark.parametrize("with_queries", [False, True])
def test_chunked_backward_equals_autograd_on_plain_formulation(chunk, with_queries):
    grid = (3, 4, 5)  # N = 60; M = 17 is divisible by none of the chunks but 1, 17
    student, teacher = make_inputs(grid, seed=chunk)
    qi = random_queries(2, 60, 17, seed=chunk) if with_queries else None
    loss = tsa_loss(student, teacher, grid, tau=0.1, query_index=qi, chunk=chunk)
    ref = ref_tsa(student, teacher, grid, 0.1, qi)
    (g,) = torch.autograd.grad(loss, student)
    (g_ref,) = torch.autograd.grad(ref, student)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_gradient_matches_finite_differences_with_repeated_queries():
    grid = (2, 2, 3)
    student, teacher = make_inputs(grid, b=2, cs=3, ct=2)
    qi = torch.tensor([[0, 5, 5, 11], [1, 1, 2, 3]])  # duplicates are plain repeated rows
    (g,) = torch.autograd.grad(tsa_loss(student, teacher, grid, tau=0.3, query_index=qi, chunk=3), student)
    x, h = student.detach(), 1e-6
    numeric = torch.zeros_like(x)
    with torch.no_grad():
        for k in range(x.numel()):
            step = torch.zeros(x.numel(), dtype=x.dtype)
            step[k] = h
            step = step.view_as(x)
            up = tsa_loss(x + step, teacher, grid, tau=0.3, query_index=qi, chunk=3)
            down = tsa_loss(x - step, teacher, grid, tau=0.3, query_index=qi, chunk=3)
            numeric.view(-1)[k] = (up - down) / (2 * h)
    torch.testing.assert_close(g, numeric, rtol=1e-6, atol=1e-9)


def test_second_backward_through_the_same_loss_is_refused():
    student, teacher = make_inputs((2, 3, 4))
    loss = tsa_loss(student, teacher, (2, 3, 4))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_no_gradient_work_without_grad():
    student, teacher = make_inputs((2, 3, 4))
    with torch.no_grad():
        loss = tsa_loss(student, teacher, (2, 3, 4))
    assert not loss.requires_grad
    torch.testing.assert_close(loss, ref_tsa(student.detach(), teacher, (2, 3, 4), 0.1))


def test_grad_output_scales_gradient():
    grid = (2, 3, 4)
    student, teacher = make_inputs(grid)
    (g1,) = torch.autograd.grad(tsa_loss(student, teacher, grid), student)
    (g3,) = torch.autograd.grad(-2.5 * tsa_loss(student, teacher, grid), student)
    torch.testing.assert_close(g3, -2.5 * g1)


# ----------------------------------------------------------------------------- Eq. 10

def probs(x, grid, tau, rows):
    f, h, w = grid
    e = x / x.norm(dim=-1, keepdim=True)
    r = torch.einsum("bmc,bnc->bmn", torch.gather(e, 1, rows[..., None].expand(-1, -1, e.shape[-1])), e)
    return torch.softmax(r.reshape(*r.shape[:2], f, h * w) / tau, dim=-1), e


@pytest.mark.parametrize("with_queries", [False, True])
def test_eq10_gradient_wrt_student_similarities(with_queries):
    """dL/dR_s = (P_s - P_t) / tau / (B*M*F), with R_s a leaf of the plain formulation."""
    grid, tau, b = (3, 4, 5), 0.1, 2
    f, h, w = grid
    student, teacher = make_inputs(grid, b=b)
    n = student.shape[1]
    rows = random_queries(b, n, 17) if with_queries else torch.arange(n).expand(b, n)
    m = rows.shape[1]
    ps, _ = probs(student.detach(), grid, tau, rows)
    pt, _ = probs(teacher, grid, tau, rows)
    es = student.detach() / student.detach().norm(dim=-1, keepdim=True)
    r = torch.einsum("bmc,bnc->bmn", es[torch.arange(b)[:, None], rows], es).requires_grad_()
    log_ps = torch.log_softmax(r.reshape(b, m, f, h * w) / tau, -1)
    loss = (pt * (pt.log() - log_ps)).sum(-1).mean()
    (g,) = torch.autograd.grad(loss, r)
    expected = ((ps - pt) / tau / (b * m * f)).reshape(b, m, n)
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("with_queries", [False, True])
def test_tsa_loss_gradient_is_eq10_chained_through_normalisation(with_queries):
    """tsa_loss's student gradient = Eq. 10 pushed back through R = E_q E^T and E = x/|x|."""
    grid, tau, b = (2, 3, 4), 0.1, 2
    student, teacher = make_inputs(grid, b=b)
    n = student.shape[1]
    qi = random_queries(b, n, 9) if with_queries else None
    rows = qi if with_queries else torch.arange(n).expand(b, n)
    m = rows.shape[1]
    (g,) = torch.autograd.grad(tsa_loss(student, teacher, grid, tau, qi, chunk=4), student)
    x = student.detach()
    ps, e = probs(x, grid, tau, rows)
    pt, _ = probs(teacher, grid, tau, rows)
    d = ((ps - pt) / tau / (b * m * grid[0])).reshape(b, m, n)  # Eq. 10
    g_e = torch.zeros_like(x)
    for bi in range(b):
        for j, i in enumerate(rows[bi].tolist()):
            g_e[bi, i] += d[bi, j] @ e[bi]  # query side
            g_e[bi] += d[bi, j][:, None] * e[bi, i]  # key side
    norm = x.norm(dim=-1, keepdim=True)
    expected = (g_e - e * (e * g_e).sum(-1, keepdim=True)) / norm
    torch.testing.assert_close(g, expected, rtol=1e-9, atol=1e-13)


# ----------------------------------------------------------------------------- precision and stability

def test_bf16_autocast_computes_in_fp32():
    grid = (3, 4, 5)
    student, teacher = make_inputs(grid, cs=32, ct=32, dtype=torch.float32, seed=5)
    expected = tsa_loss(student, teacher, grid, tau=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = tsa_loss(student, teacher, grid, tau=0.1)
    assert loss.dtype == torch.float32
    # bf16 matmuls would move the loss by ~1e-2 relative; fp32 inside matches fp32 outside.
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    (g,) = torch.autograd.grad(loss, student)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()


def test_bf16_inputs_give_fp32_loss_and_bf16_gradient():
    grid = (3, 4, 5)
    student, teacher = make_inputs(grid, cs=32, ct=32, dtype=torch.bfloat16, seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = tsa_loss(student, teacher, grid, tau=0.03)
    ref = ref_tsa(student.detach().double(), teacher.double(), grid, 0.03)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(loss, student)
    assert g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()


def test_mixed_input_dtypes_compute_in_fp32():
    """The trainer's case: bf16 projector output against float16 cached teacher features."""
    grid = (3, 4, 5)
    student, teacher = make_inputs(grid, cs=16, ct=16, dtype=torch.float32, seed=8)
    s16 = student.detach().bfloat16().requires_grad_()
    t16 = teacher.half()
    qi = random_queries(2, 60, 12)
    loss = tsa_loss(s16, t16, grid, tau=0.1, query_index=qi, chunk=5)
    assert loss.dtype == torch.float32
    ref = ref_tsa(s16.detach().double(), t16.double(), grid, 0.1, qi)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert s16.grad.dtype == torch.bfloat16
    # float64 only when both are float64: a float64 student with an fp32 teacher is fp32.
    assert tsa_loss(student.detach().double(), teacher, grid).dtype == torch.float32


@pytest.mark.parametrize("tau", [0.03, 1e-3])
def test_low_temperature_large_logits_stay_finite(tau):
    """Sharp distributions: P_t underflows to exact zeros (0 log 0 = 0), logits up to 1/tau."""
    grid = (4, 5, 6)
    student, teacher = make_inputs(grid, cs=16, ct=16, dtype=torch.float32, seed=7)
    with torch.no_grad():
        student.mul_(1e4)  # large features: the L2 normalisation must absorb them
        teacher.mul_(1e4)
    qi = random_queries(2, 120, 24)
    loss = tsa_loss(student, teacher, grid, tau=tau, query_index=qi, chunk=7)
    (g,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss) and loss > 0 and torch.isfinite(g).all()
    ref = ref_tsa(student.detach().double(), teacher.double(), grid, tau, qi)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-4)


def test_identical_features_give_zero_loss_and_gradient():
    grid = (2, 3, 4)
    x = torch.randn(2, 24, 8, dtype=torch.float64)
    student = x.clone().requires_grad_()
    loss = tsa_loss(student, 3.0 * x, grid, tau=0.03)  # scale does not change cosines
    (g,) = torch.autograd.grad(loss, student)
    assert abs(loss.item()) < 1e-12 and g.abs().max() < 1e-12


# ----------------------------------------------------------------------------- memory shape

class LargestTensor(TorchDispatchMode):
    """Records the largest numel produced by any op."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("with_queries", [True, False])
def test_never_builds_query_by_key_matrix(with_queries):
    """At paper grid (N = 3600, M = 720) no intermediate exceeds chunk x N or the inputs."""
    grid, b, c, chunk = (24, 10, 15), 1, 8, 256
    n = 3600
    student = torch.randn(b, n, c, requires_grad=True)
    teacher = torch.randn(b, n, c)
    qi = mask_to_index(topk_mask(torch.rand(b, *grid), 0.2)) if with_queries else None
    with LargestTensor() as probe:
        tsa_loss(student, teacher, grid, tau=0.1, query_index=qi, chunk=chunk).backward()
    assert probe.largest <= max(chunk * n, b * n * c)
    assert probe.largest < (720 if with_queries else n) * n


# ----------------------------------------------------------------------------- errors

def test_teacher_requiring_grad_is_refused():
    student, teacher = make_inputs((2, 3, 4))
    with pytest.raises(ValueError, match="teacher.detach"):
        tsa_loss(student, teacher.requires_grad_(), (2, 3, 4))


@pytest.mark.parametrize("kwargs, match", [
    (dict(grid=(2, 3, 5)), "grid"),
    (dict(tau=0.0), "tau"),
    (dict(chunk=0), "chunk"),
    (dict(query_index=torch.tensor([[0, 24], [1, 2]])), r"query_index: values must be in \[0, 24\)"),
    (dict(query_index=torch.zeros(2, 0, dtype=torch.long)), "M = 0"),
    (dict(query_index=torch.zeros(3, 2, dtype=torch.long)), "batch"),
    (dict(query_index=torch.ones(2, 2, 4, dtype=torch.bool)), "query_index"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    student, teacher = make_inputs((2, 3, 4))
    args = dict(grid=(2, 3, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tsa_loss(student, teacher, **args)


def test_shape_mismatch_between_student_and_teacher():
    student, _ = make_inputs((2, 3, 4))
    with pytest.raises(ValueError, match="differ"):
        tsa_loss(student, torch.randn(1, 24, 5, dtype=torch.float64), (2, 3, 4))


# ----------------------------------------------------------------------------- correspondence_probs

def test_correspondence_probs_are_eq8_rows():
    grid, tau = (3, 4, 5), 0.1
    x = torch.randn(2, 60, 7, dtype=torch.float64)
    qi = torch.tensor([[0, 59], [13, 14]])
    p = correspondence_probs(x, grid, tau, qi)
    assert p.shape == (2, 2, 3, 4, 5)
    e = x / x.norm(dim=-1, keepdim=True)
    for b in range(2):
        for j, i in enumerate(qi[b].tolist()):
            r = (e[b] @ e[b, i]).reshape(3, 20) / tau
            expected = torch.exp(torch.stack([ref_log_softmax(row) for row in r])).reshape(3, 4, 5)
            torch.testing.assert_close(p[b, j], expected)
    torch.testing.assert_close(p.sum((-1, -2)), torch.ones(2, 2, 3, dtype=torch.float64))
    assert math.isclose(correspondence_probs(x, grid, tau).shape[1], 60)
