"""`tsa view --out gallery.html`: pages listing the ok clips (thumbnail, mask overlay, caption,
mean motion, link to its full view PNG) and the clips that failed, with reasons.

Images are written next to the page in `<page stem>_files/` and referenced relatively, so
the page and its folder can be copied or served together.

At scale (64K clips, ~1.4 s a clip at paper size in one process): the clips are drawn by a
pool of worker processes (`workers`) or Ray tasks (`ray_address`), each told the shard (and
masks.h5 row) of every clip it draws, so a worker never lists the output or reads the
manifest; pages hold `page_size` clips, in manifest order and sorted by mean motion both
ways; `--sample N --seed S`, `--top N`, `--bottom N` or `--limit N` choose the clips.
"""
from __future__ import annotations

import hashlib
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence
from urllib.parse import quote

import numpy as np
from PIL import Image

from tsa.shards.reader import DataError, OutputInfo
from tsa.shards.storage import basename
from tsa.view.atlas import MaskAtlas
from tsa.view.clip import ClipData, build_view, load_clip, teacher_grid
from tsa.view.maps import ViewError
from tsa.view.render import enlarge, mask_overlay, render_view, upsample


THUMB_TILE_WIDTH = 60  # thumbnail tiles narrower than this are enlarged


def file_stem(key: str) -> str:
    """A file name for a key: unsafe characters replaced, plus a hash when anything was replaced."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", key)[:80]
    if safe != key:
        safe += "_" + hashlib.sha1(key.encode()).hexdigest()[:8]
    return safe


def thumbnails(clip: ClipData) -> tuple[Image.Image, Image.Image]:
    """The preview's first sprite row, plain and with the cached mask: two RGB images."""
    n = min(6, clip.tiles.shape[0])
    factor = max(1, -(-THUMB_TILE_WIDTH // clip.tiles.shape[2]))
    tiles = enlarge(clip.tiles[:n], factor)
    _, th, tw, _ = tiles.shape
    masked = mask_overlay(tiles, upsample(clip.mask[:n], th, tw))
    return Image.fromarray(np.concatenate(list(tiles), axis=1)), Image.fromarray(np.concatenate(list(masked), axis=1))


ORDERS = ("order", "motion-desc", "motion-asc")
ORDER_TITLES = {"order": "manifest order", "motion-desc": "motion, high to low", "motion-asc": "motion, low to high"}
PAGE_SIZE = 200


@dataclass
class GalleryResult:
    page: Path
    files: Path
    shown: int  # ok clips with a row
    failed: int  # failed or skipped rows of the manifest
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) of ok clips that could not be drawn
    pages: int = 1  # pages per order
    selected: int = 0  # ok clips chosen to be drawn
    candidates: int = 0  # ok clips of complete shards


@dataclass
class Selection:
    """Which ok clips a gallery draws (at most one way; `top` and `bottom` may be combined)."""

    limit: Optional[int] = None  # the first N in manifest order
    sample: Optional[int] = None  # N drawn at random: the smallest sha256(f"{seed}:{key}")
    seed: int = 0
    top: Optional[int] = None  # the N with the highest mean motion
    bottom: Optional[int] = None  # the N with the lowest

    def check(self) -> None:
        ways = [n for n, v in (("--limit", self.limit), ("--sample", self.sample),
                               ("--top/--bottom", self.top or self.bottom)) if v is not None]
        if len(ways) > 1:
            raise ViewError(f"{' and '.join(ways)} choose clips in different ways; give one of them")
        for name, v in (("--limit", self.limit), ("--sample", self.sample), ("--top", self.top),
                        ("--bottom", self.bottom)):
            if v is not None and v < 1:
                raise ViewError(f"{name} {v}: must be >= 1")

    @property
    def by_motion(self) -> bool:
        return self.top is not None or self.bottom is not None

    def default_order(self) -> str:
        if self.bottom is not None and self.top is None:
            return "motion-asc"
        return "motion-desc" if self.top is not None else "order"


@dataclass
class Candidate:
    order: int  # position among the ok clips, manifest order
    key: str
    caption: Optional[str]  # None: the sample's meta.json caption
    shard: int
    row: Optional[int] = None  # masks.h5 row


def sample_rank(seed: int, key: str) -> bytes:
    """The draw of `--sample`: keys with the smallest sha256(f"{seed}:{key}") (as `tsa preprocess
    --sample` draws videos): depends only on the keys and the seed."""
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def gallery_rows(info: OutputInfo) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """(ok clips of complete shards in manifest order, failed and skipped rows), read column-wise
    from manifest.parquet (or from the markers while a run has not written it)."""
    complete = set(info.shard_ids)
    if info.manifest is not None:
        cols = ["key", "caption", "status", "shard", "error", "video"]
        t = info.manifest.select([c for c in cols if c in info.manifest.column_names]).to_pydict()
        n = len(t["key"])
        get = {c: t.get(c, [None] * n) for c in cols}
        rows = zip(get["key"], get["caption"], get["status"], get["shard"], get["error"], get["video"])
    else:
        rows = ((r["key"], r.get("caption"), r["status"], r.get("shard"), r.get("error"), r.get("video"))
                for r in info.rows())
    ok: list[Candidate] = []
    failed: list[dict[str, Any]] = []
    for key, caption, status, shard, error, video in rows:
        if status == "ok":
            if shard is not None and int(shard) in complete:
                ok.append(Candidate(len(ok), key, caption, int(shard)))
        else:
            failed.append({"key": key, "video": video, "status": status, "error": error})
    return ok, failed


# ---- drawing, in a worker process, a Ray task, or in-process --------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_state(root: str, has_atlas: bool, grid: tuple[int, int, int]):
    """This process's reader and masks.h5 (opened once per process, without listing or indexing)."""
    state = _WORKER.get(root)
    if state is None:
        import torch

        torch.set_num_threads(1)  # parallelism comes from the processes
        info = OutputInfo(root, list_shards=False)
        atlas = MaskAtlas(Path(root) / "masks.h5", grid, index=False) if has_atlas else None
        state = _WORKER[root] = (info, atlas)
    return state


def _close_worker_state() -> None:
    """Close and forget this process's readers (after an in-process gallery: a later gallery of
    the same folder, rewritten meanwhile, must not see the old masks.h5)."""
    while _WORKER:
        info, atlas = _WORKER.popitem()[1]
        if atlas is not None:
            atlas.close()
        info.close()


def draw_chunk(root: str, files: Optional[str], jobs: list[tuple[str, int, Optional[int], Optional[str]]],
               opts: dict[str, Any]) -> list[dict[str, Any]]:
    """Draw the clips `jobs` ((key, shard, masks.h5 row, caption) each) of the output `root`.
    With `files` the images are written there; without (a Ray task on another node), their
    bytes come back in `images`. One result per clip: key, stem, mean motion or error."""
    import io

    info, atlas = _worker_state(root, opts["atlas"], tuple(opts["grid"]))
    out = []
    for key, shard, row, caption in jobs:
        try:
            clip = load_clip(info, key, atlas, caption=caption, shard=shard, atlas_row=row)
            view = build_view(clip, opts["ratios"], opts["taus"], opts["query"])
        except (ViewError, KeyError, DataError, OSError, ValueError) as e:
            out.append({"key": key, "error": str(e.args[0] if isinstance(e, KeyError) and e.args else e)})
            continue
        stem = file_stem(key)
        thumb, masked = thumbnails(clip)
        images = {f"{stem}.png": render_view(view), f"{stem}_thumb.png": thumb, f"{stem}_mask.png": masked}
        result: dict[str, Any] = {"key": key, "stem": stem, "mean": float(clip.motion.astype(np.float64).mean())}
        if files is not None:
            for name, im in images.items():
                im.save(os.path.join(files, name), compress_level=opts["compress_level"])
        else:
            blobs = {}
            for name, im in images.items():
                buf = io.BytesIO()
                im.save(buf, format="PNG", compress_level=opts["compress_level"])
                blobs[name] = buf.getvalue()
            result["images"] = blobs
        out.append(result)
    info._markers.clear()  # a worker keeps only the markers of its current chunk
    return out


def motion_chunk(root: str, jobs: list[tuple[str, int]]) -> list[tuple[str, Optional[float]]]:
    """Mean motion of clips without masks.h5 (an output in a bucket): motion.npy of each sample."""
    info = _WORKER.get(root, (None,))[0] or OutputInfo(root, list_shards=False)
    out = []
    for key, shard in jobs:
        try:
            m = info.read_sample(key, ["motion.npy"], shard=shard)["motion.npy"]
            out.append((key, float(np.asarray(m, np.float64).mean())))
        except (KeyError, DataError, OSError, ValueError):
            out.append((key, None))
    info._markers.clear()
    return out


def auto_workers(clips: int) -> int:
    """Processes for `clips` clips: the CPUs this process may use, but one per 16 clips at most
    (a worker's start-up, ~2-3 s of imports, is worth it only past a few dozen clips)."""
    return max(1, min(default_workers(), clips // 16))


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class _Runner:
    """Runs chunk functions in-process, in a process pool, or as Ray tasks; yields results as
    chunks finish."""

    def __init__(self, workers: int, ray_address: Optional[str]):
        self.workers, self.ray_address = workers, ray_address
        self.pool = None
        self.ray_started = False

    def __enter__(self) -> "_Runner":
        if self.workers != 0:
            self.start(self.workers)
        return self

    def start(self, workers: int) -> None:
        """Start the Ray connection or the process pool (once; the first call decides)."""
        self.workers = workers
        if self.ray_address is not None:
            import ray

            if not ray.is_initialized():
                ray.init(address=self.ray_address, include_dashboard=False, log_to_driver=False)
                self.ray_started = True
        elif workers > 1 and self.pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: each worker opens its own h5py and store (neither survives a fork safely)
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        if self.ray_started:
            import ray

            ray.shutdown()

    @property
    def remote(self) -> bool:
        return self.ray_address is not None

    def run(self, fn, chunks: list[tuple], in_flight: int = 0):
        if self.ray_address is not None:
            import ray

            task = ray.remote(num_cpus=1)(fn)
            limit = in_flight or 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
            pending, todo = [], list(chunks)
            while todo or pending:
                while todo and len(pending) < limit:  # bounded: results hold PNG bytes
                    pending.append(task.remote(*todo.pop(0)))
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        elif self.pool is not None:
            from concurrent.futures import as_completed

            for fut in as_completed([self.pool.submit(fn, *c) for c in chunks]):
                yield fut.result()
        else:
            for c in chunks:
                yield fn(*c)


def _chunks(items: list, workers: int, most: int = 16) -> list[list]:
    size = max(1, min(most, len(items) // max(1, 4 * workers)))
    return [items[i:i + size] for i in range(0, len(items), size)]


def select(cands: list[Candidate], sel: Selection, means: Callable[[list[Candidate]], dict[str, float]]
           ) -> tuple[list[Candidate], dict[str, float]]:
    """The chosen clips in manifest order, and any mean motions the choice needed."""
    if sel.limit is not None:
        return cands[:sel.limit], {}
    if sel.sample is not None:
        chosen = sorted(cands, key=lambda c: sample_rank(sel.seed, c.key))[:sel.sample]
        return sorted(chosen, key=lambda c: c.order), {}
    if sel.by_motion:
        m = means(cands)
        known = [c for c in cands if c.key in m]
        by = sorted(known, key=lambda c: (-m[c.key], c.order))
        chosen = {c.order: c for c in by[:sel.top or 0]}
        chosen.update({c.order: c for c in by[::-1][:sel.bottom or 0]})
        return [chosen[o] for o in sorted(chosen)], m
    return cands, {}


def write_gallery(info: OutputInfo, page: Path, ratios: Sequence[float], taus: Sequence[float],
                  query_text: Optional[str] = None, limit: Optional[int] = None,
                  progress: Optional[Callable[[int, int, str], None]] = None, *,
                  selection: Optional[Selection] = None, page_size: int = PAGE_SIZE, workers: int = 1,
                  ray_address: Optional[str] = None, compress_level: int = 1) -> GalleryResult:
    """Draw the chosen ok clips (every one by default; `limit` is `Selection(limit=...)`) with
    `workers` processes (0: as many as help, `auto_workers`; 1: in this process) or Ray tasks at
    `ray_address`, and write the pages."""
    page = Path(page)
    files = page.with_name(page.stem + "_files")
    files.mkdir(parents=True, exist_ok=True)
    sel = selection or Selection(limit=limit)
    sel.check()
    if page_size < 1:
        raise ViewError(f"--page-size {page_size}: must be >= 1")
    grid = teacher_grid(info)
    cands, failed = gallery_rows(info)
    mask_ratio = info.dataset.get("mask_ratio")

    atlas = MaskAtlas.open_if_present(info, grid)
    try:
        if atlas is not None:
            for c in cands:
                c.row = atlas.index.get(c.key)

        with _Runner(workers, ray_address) as runner:
            def means(cs: list[Candidate]) -> dict[str, float]:
                if atlas is not None:
                    return atlas.mean_motion(c.key for c in cs)
                got: dict[str, float] = {}
                jobs = [(c.key, c.shard) for c in cs]
                if runner.workers == 0:
                    runner.start(auto_workers(len(jobs)))
                for res in runner.run(motion_chunk, [(info.root, ch) for ch in _chunks(jobs, runner.workers, 256)]):
                    got.update({k: v for k, v in res if v is not None})
                return got

            chosen, _ = select(cands, sel, means)
            if atlas is not None:
                atlas.close()
                atlas = None
            opts = {"ratios": list(ratios), "taus": list(taus), "query": query_text, "grid": list(grid),
                    "atlas": any(c.row is not None for c in chosen), "compress_level": compress_level}
            jobs = [(c.key, c.shard, c.row, c.caption) for c in sorted(chosen, key=lambda c: (c.shard, c.order))]
            if runner.workers == 0:
                runner.start(auto_workers(len(jobs)))
            chunks = [(info.root, None if runner.remote else str(files), ch, opts) for ch in _chunks(jobs, runner.workers)]
            results: dict[str, dict[str, Any]] = {}
            if progress:
                progress(0, len(jobs), "")
            for res in runner.run(draw_chunk, chunks):
                for r in res:
                    for name, data in (r.pop("images", None) or {}).items():
                        (files / name).write_bytes(data)
                    results[r["key"]] = r
                if progress:
                    progress(len(results), len(jobs), res[-1]["key"] if res else "")
    finally:
        if atlas is not None:
            atlas.close()
        _close_worker_state()

    entries = [(c.order, c, results[c.key]["stem"], results[c.key]["mean"]) for c in chosen
               if "error" not in results[c.key]]
    unreadable = [(c.key, results[c.key]["error"]) for c in chosen if "error" in results[c.key]]
    n_pages = write_pages(info, page, files, entries, failed, unreadable, grid, mask_ratio, page_size,
                          sel.default_order(), len(cands))
    return GalleryResult(page=page, files=files, shown=len(entries), failed=len(failed), unreadable=unreadable,
                         pages=n_pages, selected=len(chosen), candidates=len(cands))


def page_name(order: str, number: int) -> str:
    """File name (inside the files folder) of page `number` (1-based) in `order`."""
    return f"page-{order}-{number:04d}.html"


def write_pages(info, page: Path, files: Path, entries, failed, unreadable, grid, mask_ratio, page_size: int,
                first: str, candidates: int) -> int:
    """gallery.html is page 1 in the `first` order, with the failed clips; with more than one
    page, every page of every order is written under the files folder. Returns pages per order."""
    n_pages = max(1, -(-len(entries) // page_size))
    sorted_by = {"order": entries,
                 "motion-desc": sorted(entries, key=lambda e: (-e[3], e[0])),
                 "motion-asc": sorted(entries, key=lambda e: (e[3], e[0]))}
    for order in (ORDERS if n_pages > 1 else (first,)):
        for number in range(1, n_pages + 1):
            index = order == first and number == 1
            chunk = sorted_by[order][(number - 1) * page_size:number * page_size]
            nav = _nav(order, number, n_pages, first, index, page, files) if n_pages > 1 else ""
            text = _page(info, files, chunk, failed if index else None, unreadable if index else None, grid,
                         mask_ratio, index, nav, len(entries), candidates, len(failed), len(unreadable),
                         f"{ORDER_TITLES[order]}, page {number} of {n_pages}" if n_pages > 1 else "")
            target = page if index else files / page_name(order, number)
            target.write_text(text, encoding="utf-8")
    return n_pages


def _href(order: str, number: int, first: str, from_index: bool, page: Path, files: Path) -> str:
    """A link from a page (gallery.html when `from_index`, else one inside the files folder)."""
    if order == first and number == 1:
        return quote(page.name) if from_index else "../" + quote(page.name)
    return f"{quote(files.name)}/{page_name(order, number)}" if from_index else page_name(order, number)


def _nav(order: str, number: int, n_pages: int, first: str, from_index: bool, page: Path, files: Path) -> str:
    e = html.escape
    orders = " | ".join(f"<b>{e(ORDER_TITLES[o])}</b>" if o == order else
                        f"<a class='order' href='{_href(o, 1, first, from_index, page, files)}'>{e(ORDER_TITLES[o])}</a>"
                        for o in ORDERS)
    shown = sorted({1, n_pages, *range(max(1, number - 5), min(n_pages, number + 5) + 1)})
    links, last = [], 0
    for p in shown:
        if p > last + 1:
            links.append("...")
        links.append(f"<b>{p}</b>" if p == number else
                     f"<a class='page' href='{_href(order, p, first, from_index, page, files)}'>{p}</a>")
        last = p
    back = "" if from_index else f" | <a href='{_href(first, 1, first, False, page, files)}'>failed clips</a>"
    return f"<p class='nav'>All pages by: {orders}{back}<br>Pages: {' '.join(links)}</p>\n"


_STYLE = """
body { font-family: sans-serif; margin: 16px; color: #222; }
table { border-collapse: collapse; margin-bottom: 24px; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.thumb { display: block; max-width: 480px; height: auto; image-rendering: pixelated; }
img.broken { outline: 3px solid red; min-width: 40px; min-height: 20px; }
.key { font-family: monospace; }
button { margin-right: 6px; }
#status { color: red; }
"""

# Sorting by mean motion (or back to manifest order), also from the address (#sort=motion-desc)
# so a sorted page can be linked; after load, each image's natural width is written into the
# DOM and a failed image is outlined and counted.
_SCRIPT = """
const SORTS = {'motion-desc': ['motion', -1], 'motion-asc': ['motion', 1], 'order': ['order', 1]};
function sortClips(name) {
  const [field, dir] = SORTS[name];
  const body = document.getElementById('clips').tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => dir * (parseFloat(a.dataset[field]) - parseFloat(b.dataset[field])));
  rows.forEach(r => body.appendChild(r));
  try { history.replaceState(null, '', '#sort=' + name); } catch (e) { /* some browsers refuse on file:// */ }
}
window.addEventListener('load', () => {
  const m = location.hash.match(/^#sort=([a-z-]+)$/);
  if (m && SORTS[m[1]]) sortClips(m[1]);
  let broken = 0;
  for (const img of document.images) {
    img.dataset.naturalWidth = img.naturalWidth;
    if (!img.complete || img.naturalWidth === 0) { img.classList.add('broken'); broken += 1; }
  }
  document.body.dataset.brokenImages = broken;
  document.getElementById('status').textContent = broken ? broken + ' image(s) failed to load' : '';
});
"""


def _page(info: OutputInfo, files: Path, entries, failed, unreadable, grid, mask_ratio, index: bool, nav: str,
          n_shown: int, n_candidates: int, n_failed: int, n_unreadable: int, where: str) -> str:
    e = html.escape
    ds = info.dataset
    prefix = f"{quote(files.name)}/" if index else ""  # images: next to pages in the files folder
    head = (f"<h1>tsa gallery: {e(str(info.root))}</h1>\n"
            f"<p>{n_shown} ok clip(s) shown (of {n_candidates}), {n_failed} failed or skipped, "
            f"{n_unreadable} unreadable. Teacher grid F x H x W = {' x '.join(map(str, grid))}; "
            f"teacher features {e(str(ds.get('teacher_dtype', '?')))}; cached mask ratio k = {e(str(mask_ratio))}. "
            f"Click a thumbnail for the clip's full view (motion, masks, correspondences).</p>\n"
            + (f"<p>This page: {e(where)}.</p>\n" if where else "") + nav +
            f"<p>Sort this page by mean motion: "
            f"<button id='sort-desc' onclick=\"sortClips('motion-desc')\">high to low</button>"
            f"<button id='sort-asc' onclick=\"sortClips('motion-asc')\">low to high</button>"
            f"<button id='sort-order' onclick=\"sortClips('order')\">manifest order</button>"
            f" <span id='status'></span></p>\n")
    body = ["<table id='clips'><thead><tr><th>#</th><th>clip</th><th>preview (first row)</th>"
            f"<th>cached mask, k = {e(str(mask_ratio))}</th><th>mean motion</th></tr></thead><tbody>"]
    for order, row, stem, mean in entries:
        link = f"{prefix}{quote(stem + '.png')}"
        key, caption = (row.key, row.caption) if isinstance(row, Candidate) else (row["key"], row.get("caption"))
        body.append(
            f"<tr data-motion='{mean:.9g}' data-order='{order}'>"
            f"<td class='num'>{order}</td>"
            f"<td><a class='key' href='{link}'>{e(key)}</a><br>{e(str(caption or ''))}</td>"
            f"<td><a href='{link}'><img class='thumb' src='{prefix}{quote(stem + '_thumb.png')}' "
            f"alt='preview of {e(key)}'></a></td>"
            f"<td><a href='{link}'><img class='thumb' src='{prefix}{quote(stem + '_mask.png')}' "
            f"alt='mask of {e(key)}'></a></td>"
            f"<td class='num'>{mean:.4g}</td></tr>")
    body.append("</tbody></table>")
    if failed is not None:
        body.append(f"<h2>Failed or skipped clips ({len(failed)})</h2>")
        body.append("<table id='failed'><thead><tr><th>key</th><th>video</th><th>status</th><th>reason</th>"
                    "</tr></thead><tbody>")
        for r in failed:
            body.append(f"<tr><td class='key'>{e(str(r.get('key')))}</td><td>{e(str(r.get('video')))}</td>"
                        f"<td>{e(str(r.get('status')))}</td><td>{e(str(r.get('error') or ''))}</td></tr>")
        body.append("</tbody></table>")
    if unreadable:
        body.append(f"<h2>Ok in the manifest but not drawable ({len(unreadable)})</h2><table id='unreadable'>"
                    "<thead><tr><th>key</th><th>reason</th></tr></thead><tbody>")
        body += [f"<tr><td class='key'>{e(k)}</td><td>{e(m)}</td></tr>" for k, m in unreadable]
        body.append("</tbody></table>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>tsa gallery: {e(basename(info.root))}</title><style>{_STYLE}</style>"
            f"<script>{_SCRIPT}</script></head>\n<body>\n{head}" + "\n".join(body) + "\n</body></html>\n")
