"""Teacher frame preprocessing: drop frame 0, bicubic 1/s resize, clamp, ImageNet normalisation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tsa.configs import load_config
from tsa.models.teacher import IMAGENET_MEAN, IMAGENET_STD, preprocess_frames

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny").geometry


def _random_frames(geometry, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, geometry.num_frames, geometry.height, geometry.width, 3),
                         dtype=torch.uint8, generator=g)


def test_paper_geometry_shapes():
    geometry = load_config(None, ["models.teacher.checkpoint=unused.pth"]).geometry
    frames = torch.zeros(1, 49, 480, 720, 3, dtype=torch.uint8)
    pixels01, normalized = preprocess_frames(frames, geometry)
    assert pixels01.shape == normalized.shape == (1, 3, 48, 160, 240)
    assert geometry.teacher_input == (48, 160, 240)
    assert geometry.teacher_grid == (24, 10, 15)
    assert pixels01.dtype == normalized.dtype == torch.float32


def test_tiny_geometry_shapes(tiny):
    pixels01, normalized = preprocess_frames(_random_frames(tiny), tiny)
    assert pixels01.shape == normalized.shape == (2, 3, 8, 64, 96)
    assert tiny.teacher_grid == (4, 4, 6)


def test_imagenet_constants():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_drops_frame_zero_and_normalises_with_imagenet_stats(tiny):
    frames = torch.empty(1, tiny.num_frames, tiny.height, tiny.width, 3, dtype=torch.uint8)
    frames[:, 0] = 255
    colours = torch.randint(0, 256, (tiny.num_frames, 3), generator=torch.Generator().manual_seed(1))
    for t in range(1, tiny.num_frames):
        frames[:, t] = colours[t].to(torch.uint8)
    pixels01, normalized = preprocess_frames(frames, tiny)
    expected = (colours[1:].T.float() / 255.0)[None, :, :, None, None].expand_as(pixels01)  # [1, 3, T'-1, h, w]
    torch.testing.assert_close(pixels01, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(normalized, (expected - MEAN) / STD, rtol=0, atol=1e-4)


def test_resize_is_antialiased_bicubic_per_frame_without_transposing(tiny):
    frames = _random_frames(tiny, batch=1, seed=2)
    pixels01, _ = preprocess_frames(frames, tiny)
    _, h, w = tiny.teacher_input
    for t in (1, tiny.num_frames - 1):
        frame = frames[0, t].permute(2, 0, 1).float()[None] / 255.0  # [1, 3, H, W]
        ref = F.interpolate(frame, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        torch.testing.assert_close(pixels01[0, :, t - 1], ref[0], rtol=0, atol=1e-5)


def test_bicubic_overshoot_is_clamped(tiny):
    # A sharp black/white edge makes bicubic ring past [0, 1]; the teacher input must stay in range.
    h, w = tiny.height, tiny.width
    board = ((torch.arange(w) >= w // 2 + 1) * 255).to(torch.uint8).expand(h, w)
    frames = board[None, None, :, :, None].expand(1, tiny.num_frames, h, w, 3).contiguous()
    raw = F.interpolate(board[None, None].float() / 255, scale_factor=1 / tiny.teacher_scale, mode="bicubic",
                        align_corners=False, antialias=True)
    assert raw.min() < 0 or raw.max() > 1  # the case is real
    pixels01, _ = preprocess_frames(frames, tiny)
    assert pixels01.min() >= 0 and pixels01.max() <= 1


def test_float_input_matches_uint8_input(tiny):
    frames = _random_frames(tiny, seed=3)
    as_float = frames.permute(0, 4, 1, 2, 3).float() / 255.0  # [B, 3, T', H, W]
    a = preprocess_frames(frames, tiny)
    b = preprocess_frames(as_float, tiny)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-5)


def test_wrong_shapes_and_dtypes_are_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"uint8 frames must be \[B, 9, 192, 288, 3\]"):
        preprocess_frames(torch.zeros(1, 8, tiny.height, tiny.width, 3, dtype=torch.uint8), tiny)
    with pytest.raises(ValueError, match=r"float frames must be \[B, 3, 9, 192, 288\]"):
        preprocess_frames(torch.zeros(1, tiny.num_frames, tiny.height, tiny.width, 3), tiny)
    with pytest.raises(ValueError, match="uint8 or floating point"):
        preprocess_frames(torch.zeros(1, tiny.num_frames, tiny.height, tiny.width, 3, dtype=torch.int32), tiny)
