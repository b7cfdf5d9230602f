"""`tsa view --out gallery.html`: the page, its images, and the page in headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tsa.cli import app
from tsa.configs import load_config
from tsa.testing.synthetic import make_synthetic_dataset

CHROMIUM = Path("/usr/bin/chromium")
runner = CliRunner()


class _Page(HTMLParser):
    """Image sources, link targets and table rows of the gallery."""

    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.rows, self.cells = [], [], [], []
        self._table = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "tr" and self._table == "clips" and "data-motion" in a:
            self.rows.append(a)
        elif tag == "td" and self._table == "failed":
            self.cells.append("")

    def handle_data(self, data):
        if self._table == "failed" and self.cells:
            self.cells[-1] += data


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    out = make_synthetic_dataset(root / "out", load_config("tiny"), 6, n_failed=2)
    page = root / "site" / "gallery.html"
    res = runner.invoke(app, ["view", "--shards", str(out), "--out", str(page)])
    assert res.exit_code == 0, res.output
    assert "open it in a browser: file://" in res.output
    return out, page


def test_gallery_lists_every_ok_clip_and_the_failed_ones(gallery):
    out, page = gallery
    html = parse(page)
    with h5py.File(out / "masks.h5", "r") as h5:
        keys = list(h5["keys"].asstr()[()])
        means = h5["motion"][()].astype(np.float64).mean(axis=(1, 2, 3))
    assert len(keys) == 6 and len(html.rows) == 6
    # Rows in manifest order, each with the clip's mean motion from masks.h5.
    np.testing.assert_allclose([float(r["data-motion"]) for r in html.rows], means, rtol=1e-6)
    assert [int(r["data-order"]) for r in html.rows] == list(range(6))
    text = page.read_text()
    for k in keys:
        assert f">{k}</a>" in text
    # The failed rows of the manifest, with their reasons.
    cells = [c.strip() for c in html.cells]
    assert cells.count("failed") == 2 and cells.count("synthetic failure (no data)") == 2
    assert "synth_000003" in cells and "synth_000007" in cells

    # Every image and link resolves next to the page, and every image decodes.
    assert len(html.imgs) == 12
    for src in [i["src"] for i in html.imgs] + html.links:
        assert not src.startswith(("/", "file:", "http")), src
        target = page.parent / unquote(src)
        assert target.is_file(), src
        with Image.open(target) as im:
            im.load()
            assert im.width > 0
    full = [page.parent / unquote(h) for h in set(html.links)]
    assert len(full) == 6 and all(Image.open(p).height > 500 for p in full)


def test_gallery_limit_and_unsafe_keys(tmp_path):
    from tsa.view.gallery import file_stem

    assert file_stem("clip_01-a") == "clip_01-a"
    odd = file_stem("a b#c?d")
    assert re.fullmatch(r"a_b_c_d_[0-9a-f]{8}", odd) and odd != file_stem("a_b#c?d")

    out = make_synthetic_dataset(tmp_path / "out", load_config("tiny"), 3)
    res = runner.invoke(app, ["view", "--shards", str(out), "--out", str(tmp_path / "g.html"), "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert len(parse(tmp_path / "g.html").rows) == 2
    assert len(list((tmp_path / "g_files").glob("*_thumb.png"))) == 2


def test_gallery_of_a_folder_that_is_not_an_output(tmp_path):
    res = runner.invoke(app, ["view", "--shards", str(tmp_path), "--out", str(tmp_path / "g.html")])
    assert res.exit_code == 1 and "is not a tsa preprocess output" in res.output


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)")
def test_gallery_in_headless_chromium(gallery, tmp_path):
    _, page = gallery
    url = page.resolve().as_uri()

    shot = tmp_path / "shot.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", url)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (900, 1200)
    not_white = np.any(pixels < 240, axis=-1)
    assert not_white.mean() > 0.05  # text and thumbnails, not a blank page
    colourful = (pixels.max(-1) - pixels.min(-1)) > 60  # thumbnails drawn, not just black text
    assert colourful.sum() > 5000

    # After load, the page writes each image's natural width into the DOM; a missing one is 0.
    dom = _chromium(tmp_path, "--dump-dom", url + "#sort=motion-desc").stdout
    widths = re.findall(r'<img[^>]*data-natural-width="(\d+)"', dom)
    assert len(widths) == 12 and all(int(w) > 0 for w in widths)
    assert 'data-broken-images="0"' in dom
    # The sort control ran in the browser: rows by mean motion, high to low.
    shown = [float(v) for v in re.findall(r'<tr data-motion="([^"]+)"', dom)]
    assert len(shown) == 6 and shown == sorted(shown, reverse=True)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)")
def test_chromium_flags_a_missing_image(gallery, tmp_path):
    _, page = gallery
    copy = tmp_path / "site"
    shutil.copytree(page.parent, copy)
    next((copy / "gallery_files").glob("*_mask.png")).unlink()
    dom = _chromium(tmp_path, "--dump-dom", (copy / "gallery.html").resolve().as_uri()).stdout
    assert 'data-broken-images="1"' in dom
    assert len(re.findall(r'data-natural-width="0"', dom)) == 1


def test_gallery_goes_on_past_a_clip_it_cannot_draw(tmp_path):
    from tsa.shards.reader import read_marker

    out = make_synthetic_dataset(tmp_path / "out", load_config("tiny"), 3)
    offset, size = read_marker(out, 0)["index"]["synth_000001"]["preview.jpg"]
    with open(out / "shards" / "shard-000000.tar", "r+b") as f:  # same length, not a JPEG any more
        f.seek(offset)
        f.write(b"\0" * size)
    res = runner.invoke(app, ["view", "--shards", str(out), "--out", str(tmp_path / "g.html")])
    assert res.exit_code == 0, res.output
    assert "could not draw synth_000001" in res.output and "not a readable JPEG" in res.output
    html = parse(tmp_path / "g.html")
    assert len(html.rows) == 2
    assert "Ok in the manifest but not drawable (1)" in (tmp_path / "g.html").read_text()
