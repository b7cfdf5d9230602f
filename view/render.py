"""Draw one clip's view (paper Fig. 1, 3, 4 style) as a PIL image: one column per teacher
time slot; rows for the preview, the motion heat map, top-k masks and correspondences."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tsa.view.colormap import colorize, lut

MIN_TILE_WIDTH = 120  # tiles narrower than this (tiny config) are enlarged by an integer factor
GAP = 4
MARGIN = 12
BAR_AREA = 110  # right of the tiles: colour bar or legend
QUERY_COLOUR = (255, 40, 40)
MASK_TINT = (0, 200, 255)


@dataclass
class ClipView:
    """What one clip's figure shows; maps are on the teacher grid (F, H, W)."""

    key: str
    caption: str
    tiles: np.ndarray  # [F, h, w, 3] uint8 preview tiles, one per teacher time slot
    motion: np.ndarray  # [F, H, W] float32, Eq. 11
    ratios: list[float]
    masks: np.ndarray  # [R, F, H, W] bool, top-k mask per ratio (Eq. 12)
    query: tuple[int, int, int]  # (f, h, w)
    query_reason: str  # "--query" or how the default was chosen
    taus: list[float]
    corr: np.ndarray  # [T, F, H, W] float32, teacher P(query -> position) per tau (Eq. 8)
    notes: list[str] = field(default_factory=list)  # extra header lines

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.motion.shape)  # type: ignore[return-value]


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour [F, H, W] -> [F, height, width], so each token stays a visible block."""
    _, h, w = maps.shape
    rows = np.arange(height) * h // height
    cols = np.arange(width) * w // width
    return maps[:, rows][:, :, cols]


def enlarge(tiles: np.ndarray, factor: int) -> np.ndarray:
    """[F, h, w, 3] -> [F, h*factor, w*factor, 3] by pixel repetition."""
    if factor == 1:
        return tiles
    return tiles.repeat(factor, axis=1).repeat(factor, axis=2)


def heat_overlay(tiles: np.ndarray, values: np.ndarray, vmax: float, cmap: str, alpha: float = 0.7) -> np.ndarray:
    """Colour-mapped `values` [F, h, w] (0..vmax) blended over grey versions of `tiles` [F, h, w, 3]."""
    grey = tiles.astype(np.float32).mean(axis=-1, keepdims=True)
    colour = colorize(values, 0.0, vmax, cmap).astype(np.float32)
    return np.round((1 - alpha) * grey + alpha * colour).astype(np.uint8)


def mask_overlay(tiles: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Selected tokens keep their colour under a light tint; the rest are dimmed. mask [F, h, w]."""
    t = tiles.astype(np.float32)
    lit = 0.75 * t + 0.25 * np.asarray(MASK_TINT, np.float32)
    dim = 0.25 * t
    return np.round(np.where(mask[..., None], lit, dim)).astype(np.uint8)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _wrap(text: str, fnt: ImageFont.FreeTypeFont, width: int) -> list[str]:
    chars = max(20, int(width / max(1.0, fnt.getlength("n"))))
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph, chars) or [""])
    return lines


@dataclass
class _Row:
    title: str
    tiles: np.ndarray  # [F, h, w, 3] uint8, already enlarged
    colour_bar: Optional[tuple[str, float]] = None  # (cmap, vmax)
    legend: list[tuple[tuple[int, int, int], str]] = field(default_factory=list)
    mark_query: bool = False


def _rows(view: ClipView, factor: int) -> list[_Row]:
    tiles = enlarge(view.tiles, factor)
    _, th, tw, _ = tiles.shape
    f_, h_, w_ = view.grid
    motion = upsample(view.motion.astype(np.float32), th, tw)
    vmax = float(np.nanmax(view.motion)) if view.motion.size else 0.0
    rows = [
        _Row(f"Preview (preview.jpg): one tile per teacher time slot; query token {view.query} boxed",
             tiles, mark_query=True),
        _Row(f"Motion |delta| per token (Eq. 11) over the preview; max {_fmt(vmax)}",
             heat_overlay(tiles, motion, vmax, "inferno"), colour_bar=("inferno", vmax), mark_query=True),
    ]
    for ratio, mask in zip(view.ratios, view.masks):
        n = int(mask[0].sum())
        rows.append(_Row(
            f"Top-k motion mask (Eq. 12), k = {ratio:g}: {n} of {h_ * w_} tokens per frame",
            mask_overlay(tiles, upsample(mask, th, tw)),
            legend=[(MASK_TINT, "selected"), ((40, 40, 40), "not selected")]))
    # The query's own frame peaks near 1 at low tau; scaling the row to the other frames keeps
    # their correspondences visible (the query frame saturates instead).
    others = [f for f in range(f_) if f != view.query[0]] or [view.query[0]]
    for tau, p in zip(view.taus, view.corr):
        pmax = float(p[others].max())
        rows.append(_Row(
            f"Teacher correspondence P(query -> position), tau = {tau:g}: softmax over each "
            f"frame's {h_}x{w_} positions (Eq. 8); colour 0..{_fmt(pmax)}, the max over the "
            f"frames other than the query's (t={view.query[0]} saturates at its max {_fmt(float(p[view.query[0]].max()))})",
            heat_overlay(tiles, upsample(p, th, tw), pmax, "viridis", alpha=0.85),
            colour_bar=("viridis", pmax), mark_query=True))
    return rows


def _colour_bar(draw: ImageDraw.ImageDraw, x: int, y: int, height: int, cmap: str, vmax: float,
                fnt: ImageFont.FreeTypeFont) -> None:
    table = lut(cmap)
    for i in range(height):
        c = table[int(round((height - 1 - i) / max(1, height - 1) * 255))]
        draw.line([(x, y + i), (x + 13, y + i)], fill=tuple(int(v) for v in c))
    draw.rectangle([x, y, x + 13, y + height - 1], outline=(0, 0, 0))
    draw.text((x + 18, y), _fmt(vmax), font=fnt, fill=(0, 0, 0))
    draw.text((x + 18, y + height - fnt.size - 2), "0", font=fnt, fill=(0, 0, 0))


def render_view(view: ClipView) -> Image.Image:
    """The whole figure for one clip as an RGB image."""
    f_, h_, w_ = view.grid
    th0, tw0 = view.tiles.shape[1:3]
    factor = max(1, -(-MIN_TILE_WIDTH // tw0))
    th, tw = th0 * factor, tw0 * factor
    title_font, row_font, small = font(18), font(14), font(12)
    width = 2 * MARGIN + f_ * (tw + GAP) + BAR_AREA
    text_width = width - 2 * MARGIN

    header = [f"tsa view: {view.key}"]
    body = _wrap(f"caption: {view.caption}", row_font, text_width)
    body += _wrap(f"teacher grid F x H x W = {f_} x {h_} x {w_}; query (f, h, w) = {view.query} "
                  f"({view.query_reason}); taus {', '.join(f'{t:g}' for t in view.taus)}; "
                  f"mask ratios {', '.join(f'{r:g}' for r in view.ratios)}", row_font, text_width)
    for note in view.notes:
        body += _wrap(note, row_font, text_width)

    rows = _rows(view, factor)
    row_titles = [_wrap(r.title, row_font, text_width) for r in rows]
    line = row_font.size + 4
    height = MARGIN + title_font.size + 6 + len(body) * line + 8 + small.size + 4
    height += sum(len(t) * line + th + 10 for t in row_titles) + MARGIN

    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    draw.text((MARGIN, y), header[0], font=title_font, fill=(0, 0, 0))
    y += title_font.size + 6
    for text in body:
        draw.text((MARGIN, y), text, font=row_font, fill=(40, 40, 40))
        y += line
    y += 8
    for f in range(f_):
        label = f"t={f}" + (" (query)" if f == view.query[0] else "")
        colour = QUERY_COLOUR if f == view.query[0] else (0, 0, 0)
        draw.text((MARGIN + f * (tw + GAP), y), label, font=small, fill=colour)
    y += small.size + 4

    qf, qh, qw = view.query
    for row, titles in zip(rows, row_titles):
        for text in titles:
            draw.text((MARGIN, y), text, font=row_font, fill=(0, 0, 0))
            y += line
        for f in range(f_):
            x = MARGIN + f * (tw + GAP)
            canvas.paste(Image.fromarray(row.tiles[f]), (x, y))
            if row.mark_query and f == qf:
                x0, y0 = x + qw * tw // w_, y + qh * th // h_
                x1, y1 = x + (qw + 1) * tw // w_ - 1, y + (qh + 1) * th // h_ - 1
                draw.rectangle([x0, y0, x1, y1], outline=QUERY_COLOUR, width=2)
        bar_x = MARGIN + f_ * (tw + GAP) + 6
        if row.colour_bar is not None:
            _colour_bar(draw, bar_x, y, th, row.colour_bar[0], row.colour_bar[1], small)
        for i, (colour, label) in enumerate(row.legend):
            ly = y + i * (small.size + 8)
            draw.rectangle([bar_x, ly, bar_x + 13, ly + small.size], fill=colour, outline=(0, 0, 0))
            draw.text((bar_x + 18, ly), label, font=small, fill=(0, 0, 0))
        y += th + 10
    return canvas
