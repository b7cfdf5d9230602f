"""`tsa view --out gallery.html` at scale: pages in manifest order and sorted by motion both
ways, --sample/--seed, --top/--bottom, the same pages from 1 or 2 worker processes (and from
Ray tasks), the trainer's shard size check, and the failed clips kept on the first page."""
from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tsa.cli import app
from tsa.configs import load_config
from tsa.testing.synthetic import make_synthetic_dataset

runner = CliRunner()


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.links, self.imgs, self.failed = [], [], [], 0
        self._table = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table == "clips" and "data-motion" in a:
            self.rows.append(a)
        elif tag == "tr" and self._table == "failed":
            self.failed += 1
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "img":
            self.imgs.append(a["src"])


def parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def keys_of(path: Path) -> list[str]:
    return re.findall(r"class='key' href='[^']*'>([^<]+)</a>", path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("scale") / "out", load_config("tiny"), 7, n_failed=2, seed=4)


@pytest.fixture(scope="module")
def means(out):
    with h5py.File(out / "masks.h5", "r") as h5:
        keys = list(h5["keys"].asstr()[()])
        m = h5["motion"][()].astype(np.float64).mean(axis=(1, 2, 3))
    return dict(zip(keys, m))


def _view(out, page, *args):
    res = runner.invoke(app, ["view", "--shards", str(out), "--out", str(page), *args])
    assert res.exit_code == 0, res.output
    return res.output


def test_pages_in_every_order_with_links_that_resolve(out, means, tmp_path):
    page = tmp_path / "site" / "g.html"
    text = _view(out, page, "--page-size", "3", "--workers", "1")
    assert "(7 clips, 3 pages of up to 3 in each order, 2 failed or skipped" in text
    files = tmp_path / "site" / "g_files"
    first = parse(page)
    assert len(first.rows) == 3 and first.failed == 3  # header row + the 2 failed clips, on page 1 only
    pages = {o: [page] + [files / f"page-order-{n:04d}.html" for n in (2, 3)] if o == "order" else
             [files / f"page-{o}-{n:04d}.html" for n in (1, 2, 3)] for o in ("order", "motion-desc", "motion-asc")}
    assert not (files / "page-order-0001.html").exists()
    for order, paths in pages.items():
        keys = [k for p in paths for k in keys_of(p)]
        assert sorted(keys) == sorted(means)
        shown = [means[k] for k in keys]
        if order == "order":
            assert keys == sorted(means)  # synth keys are in manifest order
        else:
            assert shown == sorted(shown, reverse=order == "motion-desc")
        for p in paths:
            html = parse(p)
            if p != page:
                assert html.failed == 0 and "../g.html" in html.links
            for src in html.links + html.imgs:
                assert (p.parent / unquote(src)).is_file(), (p, src)


def test_sample_top_and_bottom_choose_the_clips(out, means, tmp_path):
    draw = sorted(means, key=lambda k: hashlib.sha256(f"5:{k}".encode()).digest())[:3]
    _view(out, tmp_path / "s.html", "--sample", "3", "--seed", "5", "--workers", "1")
    assert keys_of(tmp_path / "s.html") == sorted(draw)  # shown in manifest order
    _view(out, tmp_path / "s2.html", "--sample", "3", "--seed", "5", "--workers", "1")
    assert keys_of(tmp_path / "s2.html") == sorted(draw)
    by = sorted(means, key=lambda k: -means[k])
    _view(out, tmp_path / "t.html", "--top", "2", "--bottom", "1", "--workers", "1")
    assert keys_of(tmp_path / "t.html") == by[:2] + by[-1:]  # page sorted high to low
    _view(out, tmp_path / "b.html", "--bottom", "2", "--workers", "1")
    assert keys_of(tmp_path / "b.html") == by[::-1][:2]


@pytest.mark.slow
def test_top_without_masks_h5_reads_each_motion(out, means, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "masks.h5").unlink()
    by = sorted(means, key=lambda k: -means[k])
    _view(copy, tmp_path / "t.html", "--top", "3", "--workers", "2")
    assert keys_of(tmp_path / "t.html") == by[:3]


@pytest.mark.slow
def test_one_or_two_worker_processes_give_the_same_gallery(out, tmp_path):
    _view(out, tmp_path / "a" / "g.html", "--workers", "1", "--page-size", "4")
    _view(out, tmp_path / "b" / "g.html", "--workers", "2", "--page-size", "4")
    a, b = sorted((tmp_path / "a").rglob("*.*")), sorted((tmp_path / "b").rglob("*.*"))
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert len(a) == 1 + 7 * 3 + 5  # page 1, 3 images a clip, 1 + 2 + 2 other pages
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes(), x


def test_view_runs_the_trainers_size_check(out, tmp_path):
    import shutil

    from tsa.shards.reader import marker_end, read_marker

    copy = tmp_path / "cut"
    shutil.copytree(out, copy)
    tar = copy / "shards" / "shard-000001.tar"
    with open(tar, "r+b") as f:
        f.truncate(marker_end(read_marker(copy, 1)) - 10)
    key = next(iter(read_marker(copy, 0)["index"]))
    for args in (["--out", str(tmp_path / "g.html")], ["--key", key, "--out", str(tmp_path / "k.png")]):
        res = runner.invoke(app, ["view", "--shards", str(copy), *args])
        assert res.exit_code == 1
        assert "1 truncated shard(s)" in res.output and "shard-000001.tar" in res.output, res.output


def test_selection_errors_name_the_options(out, tmp_path):
    res = runner.invoke(app, ["view", "--shards", str(out), "--out", str(tmp_path / "g.html"), "--limit", "2",
                              "--sample", "2"])
    assert res.exit_code == 1 and "--limit and --sample choose clips in different ways" in res.output
    res = runner.invoke(app, ["view", "--shards", str(out), "--out", str(tmp_path / "k.png"), "--key", "x",
                              "--top", "2"])
    assert res.exit_code == 1 and "--top applies to the gallery only" in res.output


@pytest.mark.slow
def test_ray_tasks_give_the_same_gallery(out, tmp_path):
    import ray

    assert not ray.is_initialized()
    _view(out, tmp_path / "a" / "g.html", "--workers", "1", "--page-size", "4")
    _view(out, tmp_path / "b" / "g.html", "--ray-address", "local", "--page-size", "4")
    assert not ray.is_initialized()
    a, b = sorted((tmp_path / "a").rglob("*.*")), sorted((tmp_path / "b").rglob("*.*"))
    assert [p.name for p in a] == [p.name for p in b]
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes(), x
