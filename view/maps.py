"""Token-level maps drawn by `tsa view`: the query token, top-k masks and the teacher's
tempered correspondence distributions (paper Eq. 8 and 12), all on the teacher grid (F, H, W)."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch


class ViewError(ValueError):
    """Bad input to `tsa view`; the message names the option, file or key."""


Grid = tuple[int, int, int]


def parse_numbers(values: Optional[Iterable[str]], option: str, default: Sequence[float]) -> list[float]:
    """Numbers from a repeatable, comma-separated option (`--ratio 0.1,0.2 --ratio 0.4`)."""
    out: list[float] = []
    for value in values or []:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(float(part))
            except ValueError:
                raise ViewError(f"{option} {value!r}: {part!r} is not a number") from None
    return out or list(default)


def check_ratios(ratios: Sequence[float]) -> list[float]:
    for r in ratios:
        if not 0 < r <= 1:
            raise ViewError(f"--ratio {r}: must be in (0, 1], e.g. 0.2 for the top 20% of each frame")
    return list(ratios)


def check_taus(taus: Sequence[float]) -> list[float]:
    for t in taus:
        if not (t > 0 and np.isfinite(t)):
            raise ViewError(f"--taus {t}: temperatures must be finite and > 0")
    return list(taus)


def parse_query(text: str, grid: Grid) -> tuple[int, int, int]:
    """`"f,h,w"` -> a token on `grid`, with a message naming the valid ranges on error."""
    parts = [p.strip() for p in text.split(",")]
    f_, h_, w_ = grid
    where = f"the teacher grid is F x H x W = {f_} x {h_} x {w_}"
    if len(parts) != 3:
        raise ViewError(f"--query {text!r}: expected f,h,w (three integers); {where}")
    try:
        q = tuple(int(p) for p in parts)
    except ValueError:
        raise ViewError(f"--query {text!r}: expected three integers f,h,w; {where}") from None
    for name, v, n in zip("fhw", q, grid):
        if not 0 <= v < n:
            raise ViewError(f"--query {text!r}: {name}={v} is outside 0..{n - 1}; {where}")
    return q  # type: ignore[return-value]


def default_query(motion: np.ndarray) -> tuple[int, int, int]:
    """The most moving token of the middle time slot F // 2 (the lowest index on ties).

    motion: [F, H, W]."""
    f = motion.shape[0] // 2
    frame = np.nan_to_num(np.asarray(motion[f], dtype=np.float32), nan=-np.inf)
    h, w = np.unravel_index(int(np.argmax(frame)), frame.shape)
    return (f, int(h), int(w))


def dequantise_teacher(teacher: np.ndarray, scale: Optional[np.ndarray] = None) -> np.ndarray:
    """Cached teacher features [N, C] (float16, or int8 with per-token `scale` [N]) -> float32."""
    if teacher.dtype == np.int8:
        if scale is None:
            raise ViewError("teacher.npy is int8 but the sample has no teacher_scale.npy")
        if scale.shape != (teacher.shape[0],):
            raise ViewError(f"teacher_scale.npy has shape {list(scale.shape)}, expected [{teacher.shape[0]}]")
        from tsa.shards.encode import dequantize_int8  # the writer's own inverse

        return dequantize_int8(teacher, scale)
    return teacher.astype(np.float32)


def topk_masks(motion: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """Eq. 12 masks [R, F, H, W] bool from motion [F, H, W], one per ratio, via tsa_core."""
    from tsa.core import topk_mask

    m = torch.from_numpy(np.asarray(motion, dtype=np.float32))[None]
    return np.stack([topk_mask(m, r)[0].numpy() for r in ratios])


def correspondence(teacher: np.ndarray, grid: Grid, query: tuple[int, int, int],
                   taus: Sequence[float]) -> np.ndarray:
    """Tempered correspondence of one query token (Eq. 8) at each tau: [T, F, H, W] float32.

    teacher: [N, C] with N = F*H*W in (frame, row, column) order. Features are L2-normalised
    over C; the query's row of R = E E^T is reshaped to [F, H*W] and soft-maxed over H*W at
    tau (tsa_core's own Eq. 8, as the loss uses it), so each frame's map sums to 1.
    """
    f_, h_, w_ = grid
    if teacher.ndim != 2 or teacher.shape[0] != f_ * h_ * w_:
        raise ViewError(f"teacher features have shape {list(teacher.shape)}, expected "
                        f"[{f_ * h_ * w_}, C] for the grid {f_} x {h_} x {w_}")
    from tsa.core import correspondence_probs  # the same Eq. 8 as the loss

    tokens = torch.from_numpy(np.asarray(teacher, dtype=np.float32))[None]
    qi = torch.tensor([[(query[0] * h_ + query[1]) * w_ + query[2]]])
    with torch.no_grad():
        maps = [correspondence_probs(tokens, grid, t, qi)[0, 0] for t in taus]
    return torch.stack(maps).numpy()
