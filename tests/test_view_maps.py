"""Token maps and drawing pieces of `tsa view`, on plain arrays (no output folder)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tsa.view.colormap import colorize, lut
from tsa.view.maps import (ViewError, check_ratios, check_taus, correspondence, default_query,
                                dequantise_teacher, parse_numbers, parse_query, topk_masks)
from tsa.view.preview import split_preview


def test_lut_runs_dark_to_bright_and_colorize_clips():
    for name in ("inferno", "viridis"):
        table = lut(name)
        assert table.shape == (256, 3) and table.dtype == np.uint8
        brightness = table.astype(int).sum(1)
        assert brightness[-1] > brightness[0] + 300
    rgb = colorize(np.array([-1.0, 0.0, 0.5, 1.0, 9.0, np.nan]), 0.0, 1.0, "inferno")
    table = lut("inferno")
    assert (rgb[0] == table[0]).all() and (rgb[1] == table[0]).all()
    assert (rgb[3] == table[255]).all() and (rgb[4] == table[255]).all()
    assert (rgb[2] == table[128]).all()
    assert (rgb[5] == table[0]).all()  # NaN drawn as the low end, not garbage
    assert (colorize(np.ones(3), 0.0, 0.0) == table[0]).all()  # empty range: no division by zero
    with pytest.raises(ValueError, match="unknown colour map 'jet'"):
        lut("jet")


def test_numbers_ratios_taus():
    assert parse_numbers(["0.1,0.2", "0.4"], "--ratio", [0.2]) == [0.1, 0.2, 0.4]
    assert parse_numbers(None, "--ratio", [0.2]) == [0.2]
    with pytest.raises(ViewError, match=r"--ratio '0.1,x': 'x' is not a number"):
        parse_numbers(["0.1,x"], "--ratio", [0.2])
    with pytest.raises(ViewError, match=r"--ratio 1.5: must be in \(0, 1\]"):
        check_ratios([0.2, 1.5])
    with pytest.raises(ViewError, match="--taus 0.0"):
        check_taus([1.0, 0.0])


@pytest.mark.parametrize("text, message", [
    ("1,2", "expected f,h,w"),
    ("1,a,2", "three integers"),
    ("4,0,0", "f=4 is outside 0..3"),
    ("0,-1,0", "h=-1 is outside 0..3"),
    ("0,0,6", "w=6 is outside 0..5"),
])
def test_parse_query_names_the_grid(text, message):
    assert parse_query(" 3, 2,5", (4, 4, 6)) == (3, 2, 5)
    with pytest.raises(ViewError, match=message) as e:
        parse_query(text, (4, 4, 6))
    assert "4 x 4 x 6" in str(e.value)


def test_default_query_is_the_most_moving_token_of_the_middle_slot():
    motion = np.zeros((5, 3, 4), np.float32)
    motion[2, 1, 3] = 5.0
    motion[2, 2, 0] = 5.0  # a tie: the lower flat index wins
    motion[0, 0, 0] = 99.0  # other slots do not count
    assert default_query(motion) == (2, 1, 3)


def test_correspondence_is_a_per_frame_tempered_softmax():
    rng = np.random.default_rng(0)
    grid = (3, 2, 4)
    teacher = rng.standard_normal((24, 16)).astype(np.float32)
    query = (1, 0, 2)
    p = correspondence(teacher, grid, query, [1.0, 0.1])
    assert p.shape == (2, 3, 2, 4)
    np.testing.assert_allclose(p.sum(axis=(2, 3)), 1.0, rtol=1e-5)
    e = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    sim = (e @ e[1 * 8 + 0 * 4 + 2]).reshape(3, 8)
    for i, tau in enumerate([1.0, 0.1]):
        z = np.exp((sim - sim.max(1, keepdims=True)) / tau)
        np.testing.assert_allclose(p[i].reshape(3, 8), z / z.sum(1, keepdims=True), rtol=1e-4, atol=1e-7)
    # On its own frame the query is its own best match, and lowering tau sharpens it.
    assert p[1, 1, 0, 2] == p[1, 1].max() and p[1, 1, 0, 2] > p[0, 1, 0, 2]
    with pytest.raises(ViewError, match=r"expected \[24, C\]"):
        correspondence(teacher[:20], grid, query, [0.1])


def test_dequantise_int8_uses_the_per_token_scale():
    q = np.array([[1, -2], [3, 4]], np.int8)
    scale = np.array([0.5, 2.0], np.float16)
    np.testing.assert_allclose(dequantise_teacher(q, scale), [[0.5, -1.0], [6.0, 8.0]])
    assert dequantise_teacher(q.astype(np.float16)).dtype == np.float32
    with pytest.raises(ViewError, match="no teacher_scale.npy"):
        dequantise_teacher(q)


def test_topk_masks_count_per_frame():
    motion = np.random.default_rng(1).random((3, 4, 6)).astype(np.float32)
    masks = topk_masks(motion, [0.2, 0.5])
    assert masks.shape == (2, 3, 4, 6) and masks.dtype == bool
    assert (masks[0].sum(axis=(1, 2)) == 5).all() and (masks[1].sum(axis=(1, 2)) == 12).all()
    top = np.argmax(motion.reshape(3, -1), axis=1)
    assert masks[0].reshape(3, -1)[np.arange(3), top].all()


def _sprite(n: int, cols: int, th: int, tw: int) -> tuple[bytes, np.ndarray]:
    colours = np.random.default_rng(2).integers(0, 256, size=(n, 3))
    rows = -(-n // cols)
    sprite = np.zeros((rows * th, cols * tw, 3), np.uint8)
    for i, c in enumerate(colours):
        sprite[(i // cols) * th:(i // cols + 1) * th, (i % cols) * tw:(i % cols + 1) * tw] = c
    buf = io.BytesIO()
    Image.fromarray(sprite).save(buf, format="JPEG", quality=95)
    return buf.getvalue(), colours


def test_split_preview_follows_the_row_major_sprite():
    data, colours = _sprite(8, 6, 16, 24)  # two sprite rows, the second half empty
    tiles = split_preview(data, 8, (16, 24))
    assert tiles.shape == (8, 16, 24, 3)
    centre = tiles[:, 4:12, 6:18].reshape(8, -1, 3).mean(1)
    np.testing.assert_allclose(centre, colours, atol=6)
    with pytest.raises(ViewError, match="sprite is 144x32 pixels, too small for 13 tiles of 24x16"):
        split_preview(data, 13, (16, 24))
    with pytest.raises(ViewError, match="clip_a: not a readable JPEG"):
        split_preview(b"not a jpeg", 8, (16, 24), "clip_a")
