"""Colour maps as 256-entry lookup tables, built from a few anchor colours (no matplotlib)."""
from __future__ import annotations

import numpy as np

# Anchor colours sampled by eye from the perceptual maps they are named after.
_ANCHORS = {
    "inferno": [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99),
                (212, 72, 66), (245, 125, 21), (250, 193, 39), (252, 255, 164)],
    "viridis": [(68, 1, 84), (70, 50, 126), (54, 92, 141), (39, 127, 142),
                (31, 161, 135), (74, 193, 109), (160, 218, 57), (253, 231, 37)],
}


def lut(name: str) -> np.ndarray:
    """[256, 3] uint8 table interpolated linearly between the named map's anchors."""
    try:
        anchors = np.asarray(_ANCHORS[name], dtype=np.float64)
    except KeyError:
        raise ValueError(f"unknown colour map {name!r}; known: {', '.join(_ANCHORS)}") from None
    pos = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(t, pos, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(table).astype(np.uint8)


def colorize(values: np.ndarray, vmin: float, vmax: float, name: str = "inferno") -> np.ndarray:
    """Map `values` [...] to RGB [..., 3] uint8; values are clipped to [vmin, vmax]."""
    span = vmax - vmin
    if not np.isfinite(span) or span <= 0:
        scaled = np.zeros(values.shape, dtype=np.float64)
    else:
        finite = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=vmin, posinf=vmax, neginf=vmin)
        scaled = np.clip((finite - vmin) / span, 0.0, 1.0)
    idx = np.round(scaled * 255).astype(np.intp)
    return lut(name)[idx]
