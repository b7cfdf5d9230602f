"""`tsa view --key`: the clip PNG drawn from a tiny synthetic preprocess output."""
from __future__ import annotations

import io
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tsa.cli import app
from tsa.configs import load_config
from tsa.shards.reader import read_sample
from tsa.testing.synthetic import make_synthetic_dataset
from tsa.view import render
from tsa.view.preview import split_preview

runner = CliRunner()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("view") / "out", load_config("tiny"), 6, n_failed=2)


def tsa_view(*args: str):
    return runner.invoke(app, ["view", *map(str, args)])


def find_tile(img: np.ndarray, tile: np.ndarray, x: int) -> list[int]:
    """Rows y where `tile` [h, w, 3] appears exactly in `img` with its left edge at x."""
    h, w = tile.shape[:2]
    return [y for y in range(img.shape[0] - h + 1) if np.array_equal(img[y:y + h, x:x + w], tile)]


def tempered(teacher: np.ndarray, q: int, tau: float, grid) -> np.ndarray:
    e = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    sim = (e @ e[q]).reshape(grid[0], -1).astype(np.float64) / tau
    z = np.exp(sim - sim.max(1, keepdims=True))
    return (z / z.sum(1, keepdims=True)).reshape(grid)


def test_clip_png_size_and_content(out, tmp_path):
    key = "synth_000001"
    png = tmp_path / "clip.png"
    res = tsa_view("--shards", out, "--key", key, "--out", png, "--ratio", "0.1,0.2", "--ratio", "0.5")
    assert res.exit_code == 0, res.output
    img = np.asarray(Image.open(png).convert("RGB"))

    grid = (4, 4, 6)  # tiny teacher grid
    sample = read_sample(out, key)
    tiles = split_preview(sample["preview.jpg"], grid[0], (32, 48))  # half the 64 x 96 teacher input
    factor = 3  # 48-pixel tiles are enlarged to at least render.MIN_TILE_WIDTH
    big = render.enlarge(tiles, factor)
    th, tw = big.shape[1:3]
    assert img.shape[1] == 2 * render.MARGIN + grid[0] * (tw + render.GAP) + render.BAR_AREA

    # The preview row shows every tile unchanged, in time order, side by side.
    y_preview = find_tile(img, big[0], render.MARGIN)
    assert len(y_preview) == 1
    y0 = y_preview[0]
    for f in (1, 3):  # slot 2 holds the query box
        x = render.MARGIN + f * (tw + render.GAP)
        assert np.array_equal(img[y0:y0 + th, x:x + tw], big[f])

    # The default query: the most moving token of the middle slot, boxed on that slot's tile.
    motion = sample["motion.npy"].astype(np.float32)
    qh, qw = np.unravel_index(np.argmax(motion[2]), motion[2].shape)
    x = render.MARGIN + 2 * (tw + render.GAP)
    assert tuple(img[y0 + qh * th // grid[1], x + qw * tw // grid[2]]) == render.QUERY_COLOUR

    # Motion heat map row: the cached motion over the grey preview, scaled 0..max.
    heat = render.heat_overlay(big, render.upsample(motion, th, tw), float(motion.max()), "inferno")
    y_heat = find_tile(img, heat[0], render.MARGIN)
    assert len(y_heat) == 1 and y_heat[0] > y0 + th

    # One mask row per ratio, with exactly n = round(k * H * W) tokens lit per frame.
    for n in (2, 5, 12):
        order = np.argsort(-motion.reshape(4, -1), axis=1, kind="stable")[:, :n]
        mask = np.zeros((4, 24), bool)
        np.put_along_axis(mask, order, True, axis=1)
        lit = render.mask_overlay(big, render.upsample(mask.reshape(grid), th, tw))
        assert len(find_tile(img, lit[0], render.MARGIN)) == 1, n

    # Correspondence rows at the default taus, computed here from the cached features.
    teacher = sample["teacher.npy"].astype(np.float32)
    q = 2 * 24 + qh * 6 + qw
    ys = []
    for tau in (1.0, 0.1, 0.03):
        p = tempered(teacher, q, tau, grid).astype(np.float32)
        vmax = float(p[[0, 1, 3]].max())
        expected = render.heat_overlay(big, render.upsample(p, th, tw), vmax, "viridis", alpha=0.85)
        hits = find_tile(img, expected[0], render.MARGIN)
        assert len(hits) == 1, tau
        ys.append(hits[0])
    assert ys == sorted(ys) and ys[0] > y_heat[0]


def test_ratios_and_taus_add_rows_and_query_moves_the_box(out, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert tsa_view("--shards", out, "--key", "synth_000000", "--out", a).exit_code == 0
    res = tsa_view("--shards", out, "--key", "synth_000000", "--out", b, "--ratio", "0.1,0.3",
                   "--taus", "0.5,0.2,0.1,0.05", "--query", "0,3,5")
    assert res.exit_code == 0, res.output
    ia, ib = Image.open(a), Image.open(b)
    assert ia.width == ib.width
    th = 96  # one more mask row and one more correspondence row, each a title plus a tile row
    assert ib.height - ia.height >= 2 * (th + 10)
    img = np.asarray(ib.convert("RGB"))
    tiles = render.enlarge(split_preview(read_sample(out, "synth_000000")["preview.jpg"], 4, (32, 48)), 3)
    x1 = render.MARGIN + 144 + render.GAP
    (y0,) = find_tile(img, tiles[1], x1)  # the preview row, found by an unboxed tile
    red = np.all(img[y0:y0 + 96, render.MARGIN:render.MARGIN + 144] == render.QUERY_COLOUR, axis=-1)
    ys, xs = np.nonzero(red)
    assert len(ys) > 0
    # The box outlines token (h=3, w=5) of the 4 x 6 grid: 24 x 24 pixels per token.
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (72, 95, 120, 143)


@pytest.mark.parametrize("args, message", [
    (["--key", "synth_00001"], "no sample 'synth_00001'"),
    (["--key", "synth_000003"], "'synth_000003' is a failed clip"),
    (["--key", "synth_000001", "--query", "1,4,0"], "h=4 is outside 0..3"),
    (["--key", "synth_000001", "--ratio", "0.2,2"], "--ratio 2.0"),
    (["--key", "synth_000001", "--taus", "1,-0.1"], "--taus -0.1"),
])
def test_bad_input_stops_with_a_clear_error(out, tmp_path, args, message):
    res = tsa_view("--shards", out, "--out", tmp_path / "x.png", *args)
    assert res.exit_code == 1
    assert message in res.output
    assert not (tmp_path / "x.png").exists()


def test_unknown_key_suggests_close_matches(out, tmp_path):
    res = tsa_view("--shards", out, "--key", "synth_00002", "--out", tmp_path / "x.png")
    assert res.exit_code == 1
    assert "close matches: synth_000002" in res.output


def test_not_a_preprocess_output(tmp_path):
    (tmp_path / "folder").mkdir()
    res = tsa_view("--shards", tmp_path / "folder", "--key", "k", "--out", tmp_path / "x.png")
    assert res.exit_code == 1
    assert "is not a tsa preprocess output" in res.output


def test_out_suffix_picks_the_mode(out, tmp_path):
    res = tsa_view("--shards", out, "--out", tmp_path / "x.png")
    assert res.exit_code == 1 and "give --key KEY" in res.output
    res = tsa_view("--shards", out, "--key", "synth_000000", "--out", tmp_path / "x.html")
    assert res.exit_code == 1 and "leave out --key for the gallery" in res.output


def test_reads_one_sample_by_offset_without_opening_tars(out, tmp_path, monkeypatch):
    def no_tar(*a, **k):
        raise AssertionError("tsa view must not scan tars")

    monkeypatch.setattr(tarfile, "open", no_tar)
    monkeypatch.setattr(tarfile.TarFile, "__init__", no_tar)
    res = tsa_view("--shards", out, "--key", "synth_000006", "--out", tmp_path / "x.png")
    assert res.exit_code == 0, res.output


def test_same_image_without_masks_h5(out, tmp_path):
    """masks.h5 is the fast path; while a run has not written it, each sample's own maps serve."""
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "masks.h5").unlink()
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert tsa_view("--shards", out, "--key", "synth_000004", "--out", a).exit_code == 0
    res = tsa_view("--shards", copy, "--key", "synth_000004", "--out", b)
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_int8_teacher_features(tmp_path):
    cfg = load_config("tiny", ["preprocess.teacher_dtype=int8"])
    out8 = make_synthetic_dataset(tmp_path / "out8", cfg, 1)
    res = tsa_view("--shards", out8, "--key", "synth_000000", "--out", tmp_path / "x.png", "--query", "1,1,1")
    assert res.exit_code == 0, res.output
    img = Image.open(io.BytesIO((tmp_path / "x.png").read_bytes()))
    assert img.width == 2 * render.MARGIN + 4 * (144 + render.GAP) + render.BAR_AREA
