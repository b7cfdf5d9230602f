"""Bootstrap over prompts: every number of `tsa score` is a ratio estimator sum(num) / sum(den)
over the videos it covers (VideoPhy SA: good videos / videos; VBench object class: successful
frames / frames), so a replicate draws the prompts with replacement (all videos of a drawn prompt
come along) and recomputes the ratio with the draw's counts as weights.

    weights  [B, U]  how often replicate b drew prompt (unit) u; row 0 of `estimates` is the
                     point estimate (every prompt once)
    sums     [U, K, 2]  per prompt and metric column: (num, den) summed over its videos
    estimates [B + 1, K]  ratios; nan where a replicate drew no video of a column

The percentile interval (2.5 %, 97.5 %) of the replicates is the 95 % interval. Runs compared
side by side use the same draws, so the difference of two runs per replicate is a paired
bootstrap of their difference.
"""
from __future__ import annotations

import numpy as np

REPLICATES = 10_000
SEED = 0  # every `tsa score` draws the same replicates for the same number of prompts
CHUNK = 2_000


def replicate_weights(units: int, replicates: int = REPLICATES, seed: int = SEED) -> np.ndarray:
    """[replicates, units] float64 counts: each row a draw of `units` prompts with replacement."""
    if units < 1:
        raise ValueError("bootstrap over no prompts")
    rng = np.random.default_rng(seed)
    return rng.multinomial(units, np.full(units, 1.0 / units), size=replicates).astype(np.float64)


def unit_sums(unit_of_video: np.ndarray, parts: np.ndarray, units: int) -> np.ndarray:
    """[U, K, 2]: `parts` [V, K, 2] (num, den per video and column) summed per unit;
    `unit_of_video` [V] holds each video's unit in 0..U-1."""
    sums = np.zeros((units,) + parts.shape[1:], np.float64)
    np.add.at(sums, unit_of_video, parts)
    return sums


def estimates(weights: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """[1 + B, K] ratios: the point estimate, then one row per replicate (nan: no video drawn)."""
    rows = [_ratios(np.ones((1, sums.shape[0])), sums)]
    for start in range(0, weights.shape[0], CHUNK):
        rows.append(_ratios(weights[start:start + CHUNK], sums))
    return np.concatenate(rows)


def _ratios(w: np.ndarray, sums: np.ndarray) -> np.ndarray:
    num = w @ sums[:, :, 0]
    den = w @ sums[:, :, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def interval(samples: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval of replicate values (nan replicates left out)."""
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return float(lo), float(hi)


def prompts_for_half_width(lo: float, hi: float, units: int, half_width: float = 1.0) -> float:
    """Prompts needed for a 95 % interval of +-`half_width` (same units as lo/hi), scaling the
    observed half-width with 1/sqrt(prompts)."""
    observed = (hi - lo) / 2.0
    return float(units * (observed / half_width) ** 2)
