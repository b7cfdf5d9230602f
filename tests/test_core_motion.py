"""motion_map (Eq. 11), topk_mask (Eq. 12) and mask_to_index against loop references."""
from __future__ import annotations

import pytest
import torch

from tsa.core import mask_to_index, motion_map, topk_count, topk_mask


def ref_motion(video, tubelet):
    """Eq. 11 tubelet by tubelet: Delta_t = |Y_t - Y_{t-1}|_1, Delta_0 = Delta_1."""
    pt, ph, pw = tubelet
    b_, _, t_, hp, wp = video.shape
    f, h, w = t_ // pt, hp // ph, wp // pw
    out = torch.zeros(b_, f, h, w, dtype=torch.float64)

    def tube(b, t, i, j):
        return video[b, :, t * pt:(t + 1) * pt, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw].double()

    for b in range(b_):
        for i in range(h):
            for j in range(w):
                for t in range(1, f):
                    out[b, t, i, j] = (tube(b, t, i, j) - tube(b, t - 1, i, j)).abs().sum()
                if f > 1:
                    out[b, 0, i, j] = out[b, 1, i, j]
    return out


@pytest.mark.parametrize("tubelet, shape", [
    ((2, 16, 16), (2, 3, 8, 32, 48)),
    ((1, 2, 2), (1, 3, 3, 4, 6)),
    ((2, 4, 2), (2, 3, 6, 8, 6)),
])
def test_motion_map_matches_loop_reference(tubelet, shape):
    video = torch.rand(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = motion_map(video, tubelet)
    assert m.shape == (shape[0], shape[2] // tubelet[0], shape[3] // tubelet[1], shape[4] // tubelet[2])
    torch.testing.assert_close(m, ref_motion(video, tubelet), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m[:, 0], m[:, 1])


def test_motion_map_float32_and_uint8():
    video = torch.randint(0, 256, (1, 3, 4, 8, 8), dtype=torch.uint8)
    m8 = motion_map(video, (2, 4, 4))  # no uint8 wrap-around in the differences
    assert m8.dtype == torch.float32
    torch.testing.assert_close(m8.double(), ref_motion(video, (2, 4, 4)))
    m32 = motion_map(video.float() / 255, (2, 4, 4))
    assert m32.dtype == torch.float32
    torch.testing.assert_close(m32.double(), ref_motion(video.double() / 255, (2, 4, 4)), rtol=1e-5, atol=1e-5)


def test_motion_map_locates_a_moving_square():
    video = torch.zeros(1, 3, 6, 8, 8)
    video[:, :, 4:, 4:8, 0:4] = 1.0  # appears in frames 4-5: tubelet time slot 2, block (1, 0)
    m = motion_map(video, (2, 4, 4))
    assert m[0, 2, 1, 0] == 3 * 2 * 4 * 4
    assert m.sum() == m[0, 2, 1, 0]


def test_motion_map_single_time_slot_is_zero():
    m = motion_map(torch.rand(2, 3, 2, 8, 8), (2, 4, 4))
    assert m.shape == (2, 1, 2, 2) and (m == 0).all()


@pytest.mark.parametrize("shape", [(1, 3, 5, 8, 8), (1, 3, 4, 9, 8), (1, 3, 4, 8, 10)])
def test_motion_map_rejects_indivisible_video(shape):
    with pytest.raises(ValueError, match="not divisible by the tubelet"):
        motion_map(torch.rand(*shape), (2, 4, 4))


def test_motion_map_rejects_wrong_layout():
    with pytest.raises(ValueError, match=r"\[B, 3, T, Hp, Wp\]"):
        motion_map(torch.rand(1, 4, 3, 8, 8), (2, 4, 4))


# ----------------------------------------------------------------------------- top-k

def ref_topk(motion, ratio):
    b_, f, h, w = motion.shape
    n = max(1, int(round(ratio * h * w)))
    mask = torch.zeros(b_, f, h * w, dtype=torch.bool)
    for b in range(b_):
        for t in range(f):
            vals = motion[b, t].flatten().tolist()
            order = sorted(range(h * w), key=lambda j: (-vals[j], j))  # ties: lower index first
            mask[b, t, order[:n]] = True
    return mask.reshape(b_, f, h, w)


@pytest.mark.parametrize("ratio", [0.01, 0.2, 0.25, 0.5, 1.0])
def test_topk_mask_matches_reference_with_ties(ratio):
    g = torch.Generator().manual_seed(1)
    motion = torch.randint(0, 4, (2, 3, 4, 5), generator=g).float()  # many ties
    mask = topk_mask(motion, ratio)
    assert mask.dtype == torch.bool
    assert torch.equal(mask, ref_topk(motion, ratio))


def test_topk_ties_go_to_lower_flat_index():
    motion = torch.zeros(1, 2, 3, 4)
    motion[0, 1, 2, 3] = 5.0
    mask = topk_mask(motion, 0.25)  # n = 3 of 12
    assert mask[0, 0].flatten().tolist() == [True] * 3 + [False] * 9
    assert mask[0, 1].flatten().nonzero().flatten().tolist() == [0, 1, 11]


@pytest.mark.parametrize("ratio, hw, n", [
    (0.2, 150, 30), (0.2, 24, 5), (0.25, 10, 2), (0.35, 10, 4), (0.01, 10, 1), (1.0, 7, 7), (0.05, 150, 8),
])
def test_topk_count_rule(ratio, hw, n):
    assert topk_count(ratio, hw) == n
    mask = topk_mask(torch.rand(2, 3, 1, hw), ratio)
    assert (mask.sum((2, 3)) == n).all()


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_topk_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        topk_mask(torch.rand(1, 2, 3, 4), ratio)


def test_topk_rejects_nan_and_wrong_rank():
    motion = torch.rand(1, 2, 3, 4)
    motion[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        topk_mask(motion, 0.2)
    with pytest.raises(ValueError, match=r"\[B, F, H, W\]"):
        topk_mask(torch.rand(2, 3, 4), 0.2)


# ----------------------------------------------------------------------------- indices

def test_mask_to_index_is_increasing_flat_fhw_order():
    motion = torch.rand(3, 4, 5, 6, generator=torch.Generator().manual_seed(2))
    mask = topk_mask(motion, 0.2)
    idx = mask_to_index(mask)
    assert idx.dtype == torch.long and idx.shape == (3, 4 * 6)
    for b in range(3):
        expected = [f * 30 + h * 6 + w for f in range(4) for h in range(5) for w in range(6) if mask[b, f, h, w]]
        assert idx[b].tolist() == expected
    assert (idx[:, 1:] > idx[:, :-1]).all()


def test_mask_to_index_rejects_unequal_counts_empty_and_non_bool():
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0] = True
    with pytest.raises(ValueError, match="different numbers"):
        mask_to_index(mask)
    with pytest.raises(ValueError, match="no True"):
        mask_to_index(torch.zeros(2, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        mask_to_index(torch.ones(2, 1, 2, 2))
