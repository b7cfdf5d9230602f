"""`tsa view --out gallery.html`: one page listing every ok clip (thumbnail, mask overlay,
caption, mean motion, link to its full view PNG) and the clips that failed, with reasons.

Images are written next to the page in `<page stem>_files/` and referenced relatively, so
the page and its folder can be copied or served together.
"""
from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence
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


@dataclass
class GalleryResult:
    page: Path
    files: Path
    shown: int  # ok clips with a row
    failed: int  # failed or skipped rows of the manifest
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) of ok clips that could not be drawn


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


def _rel(files: Path, name: str) -> str:
    return f"{quote(files.name)}/{quote(name)}"


def write_gallery(info: OutputInfo, page: Path, ratios: Sequence[float], taus: Sequence[float],
                  query_text: Optional[str] = None, limit: Optional[int] = None,
                  progress: Optional[Callable[[int, int, str], None]] = None) -> GalleryResult:
    """Render every ok clip (the first `limit` in manifest order if given) and write the page."""
    page = Path(page)
    files = page.with_name(page.stem + "_files")
    files.mkdir(parents=True, exist_ok=True)
    grid = teacher_grid(info)
    rows = info.rows()
    readable = set(info.keys)
    ok = [r for r in rows if r.get("status") == "ok" and r.get("key") in readable]
    if limit is not None:
        ok = ok[:limit]
    failed = [r for r in rows if r.get("status") != "ok"]
    mask_ratio = info.dataset.get("mask_ratio")

    atlas = MaskAtlas.open_if_present(info, grid)
    try:
        means = atlas.mean_motion(r["key"] for r in ok) if atlas is not None else {}
        entries, unreadable = [], []
        for i, row in enumerate(ok):
            key = row["key"]
            if progress:
                progress(i, len(ok), key)
            try:
                clip = load_clip(info, key, atlas, caption=row.get("caption"))
                view = build_view(clip, ratios, taus, query_text)
            except (ViewError, KeyError, DataError, OSError, ValueError) as e:
                unreadable.append((key, str(e.args[0] if isinstance(e, KeyError) and e.args else e)))
                continue
            stem = file_stem(key)
            render_view(view).save(files / f"{stem}.png", optimize=False)
            thumb, masked = thumbnails(clip)
            thumb.save(files / f"{stem}_thumb.png")
            masked.save(files / f"{stem}_mask.png")
            mean = means.get(key, float(clip.motion.astype(np.float64).mean()))
            entries.append((i, row, stem, mean))
    finally:
        if atlas is not None:
            atlas.close()

    page.write_text(_page(info, files, entries, failed, unreadable, grid, mask_ratio), encoding="utf-8")
    return GalleryResult(page=page, files=files, shown=len(entries), failed=len(failed), unreadable=unreadable)


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


def _page(info: OutputInfo, files: Path, entries, failed, unreadable, grid, mask_ratio) -> str:
    e = html.escape
    ds = info.dataset
    head = (f"<h1>tsa gallery: {e(str(info.root))}</h1>\n"
            f"<p>{len(entries)} ok clip(s) shown, {len(failed)} failed or skipped, "
            f"{len(unreadable)} unreadable. Teacher grid F x H x W = {' x '.join(map(str, grid))}; "
            f"teacher features {e(str(ds.get('teacher_dtype', '?')))}; cached mask ratio k = {e(str(mask_ratio))}. "
            f"Click a thumbnail for the clip's full view (motion, masks, correspondences).</p>\n"
            f"<p>Sort by mean motion: "
            f"<button id='sort-desc' onclick=\"sortClips('motion-desc')\">high to low</button>"
            f"<button id='sort-asc' onclick=\"sortClips('motion-asc')\">low to high</button>"
            f"<button id='sort-order' onclick=\"sortClips('order')\">manifest order</button>"
            f" <span id='status'></span></p>\n")
    body = ["<table id='clips'><thead><tr><th>#</th><th>clip</th><th>preview (first row)</th>"
            f"<th>cached mask, k = {e(str(mask_ratio))}</th><th>mean motion</th></tr></thead><tbody>"]
    for order, row, stem, mean in entries:
        link = _rel(files, f"{stem}.png")
        body.append(
            f"<tr data-motion='{mean:.9g}' data-order='{order}'>"
            f"<td class='num'>{order}</td>"
            f"<td><a class='key' href='{link}'>{e(row['key'])}</a><br>{e(str(row.get('caption') or ''))}</td>"
            f"<td><a href='{link}'><img class='thumb' src='{_rel(files, stem + '_thumb.png')}' "
            f"alt='preview of {e(row['key'])}'></a></td>"
            f"<td><a href='{link}'><img class='thumb' src='{_rel(files, stem + '_mask.png')}' "
            f"alt='mask of {e(row['key'])}'></a></td>"
            f"<td class='num'>{mean:.4g}</td></tr>")
    body.append("</tbody></table>")
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
