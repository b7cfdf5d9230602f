"""The PNG bar chart of `tsa score DIR_A DIR_B ...`: one group of bars per metric, one bar per
run, each with its 95 % interval as a whisker (pillow only)."""
from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw, ImageFont

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127)]
BAR, GAP, LEFT, TOP, PLOT_H, LABEL_H = 16, 18, 56, 40, 300, 130


def bar_chart(rows: list[dict], labels: list[str], metric_label) -> bytes:
    """PNG bytes: `rows` from compare.comparison_rows, `metric_label(key)` the axis text."""
    font = ImageFont.load_default()
    n = len(labels)
    group = n * BAR + GAP
    width = LEFT + len(rows) * group + 20
    legend_h = 16 * n + 10
    height = TOP + PLOT_H + LABEL_H + legend_h
    img = Image.new("RGB", (max(width, 360), height), "white")
    draw = ImageDraw.Draw(img)
    finite = [x for r in rows for run in r["runs"] for x in (run["value"], *run["ci95"]) if _ok(x)]
    top = min(100.0, math.ceil(max(finite + [1.0]) / 10.0) * 10.0) if finite else 100.0
    top = max(top, max(finite + [0.0]) * 1.02)

    def y(v: float) -> float:
        return TOP + PLOT_H * (1.0 - v / top)

    for tick in range(0, int(top) + 1, 10 if top > 30 else 5):
        draw.line([(LEFT, y(tick)), (width - 20, y(tick))], fill=(230, 230, 230))
        draw.text((LEFT - 6, y(tick)), f"{tick}", fill="black", font=font, anchor="rm")
    draw.line([(LEFT, TOP), (LEFT, TOP + PLOT_H)], fill="black")
    draw.line([(LEFT, TOP + PLOT_H), (width - 20, TOP + PLOT_H)], fill="black")
    draw.text((LEFT, 12), "% (bars: value, whiskers: 95 % bootstrap interval over prompts)", fill="black", font=font)
    for g, r in enumerate(rows):
        x0 = LEFT + GAP / 2 + g * group
        for i, run in enumerate(r["runs"]):
            x = x0 + i * BAR
            color = COLORS[i % len(COLORS)]
            if _ok(run["value"]):
                draw.rectangle([x + 1, y(max(run["value"], 0.0)), x + BAR - 2, y(0)], fill=color)
            lo, hi = run["ci95"]
            if _ok(lo) and _ok(hi):
                mid = x + BAR / 2 - 0.5
                draw.line([(mid, y(lo)), (mid, y(hi))], fill="black", width=1)
                draw.line([(mid - 3, y(lo)), (mid + 3, y(lo))], fill="black")
                draw.line([(mid - 3, y(hi)), (mid + 3, y(hi))], fill="black")
        _vertical_text(img, metric_label(r["metric"]), (int(x0 + n * BAR / 2 - 6), TOP + PLOT_H + 6), font)
    for i, name in enumerate(labels):
        yy = TOP + PLOT_H + LABEL_H + 4 + 16 * i
        draw.rectangle([LEFT, yy, LEFT + 12, yy + 10], fill=COLORS[i % len(COLORS)])
        draw.text((LEFT + 18, yy - 1), name, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _ok(x) -> bool:
    return x is not None and math.isfinite(x)


def _vertical_text(img: Image.Image, text: str, at: tuple[int, int], font) -> None:
    """`text` rotated to read bottom-up, its top-left corner at `at`."""
    w = int(ImageDraw.Draw(img).textlength(text, font=font)) + 4
    label = Image.new("RGB", (min(w, LABEL_H - 8), 12), "white")
    ImageDraw.Draw(label).text((0, 0), text, fill="black", font=font)
    img.paste(label.rotate(90, expand=True), at)
