"""Load what one clip's view needs from a preprocess output: one indexed sample read for the
teacher features and the preview, motion and mask from `masks.h5` when it is there."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from tsa.shards.reader import OutputInfo
from tsa.view.atlas import MaskAtlas
from tsa.view.maps import (ViewError, correspondence, default_query, dequantise_teacher, parse_query,
                                topk_masks)
from tsa.view.preview import preview_tile_size, split_preview
from tsa.view.render import ClipView


@dataclass
class ClipData:
    key: str
    caption: str
    tiles: np.ndarray  # [F, h, w, 3] uint8 preview tiles
    motion: np.ndarray  # [F, H, W] float32
    mask: np.ndarray  # [F, H, W] bool, cached at the preprocess ratio
    teacher: np.ndarray  # [N, C] float32, dequantised
    meta: dict[str, Any]


def teacher_grid(info: OutputInfo) -> tuple[int, int, int]:
    """(F, H, W) of the teacher tokens, from dataset.json geometry.teacher_grid."""
    try:
        grid = tuple(int(v) for v in info.dataset["geometry"]["teacher_grid"])
    except (KeyError, TypeError, ValueError):
        raise ViewError(f"{info.where('dataset.json')}: no valid geometry.teacher_grid") from None
    if len(grid) != 3:
        raise ViewError(f"{info.where('dataset.json')}: geometry.teacher_grid {list(grid)} is not [F, H, W]")
    return grid  # type: ignore[return-value]


def tile_size(info: OutputInfo) -> tuple[int, int]:
    """(h, w) of one preview tile: dataset.json `preview`, else half of geometry.teacher_input."""
    lay = info.dataset.get("preview") or {}
    if "tile_height" in lay and "tile_width" in lay:
        return (int(lay["tile_height"]), int(lay["tile_width"]))
    try:
        return preview_tile_size(tuple(info.dataset["geometry"]["teacher_input"]))
    except (KeyError, TypeError, ValueError):
        raise ViewError(f"{info.where('dataset.json')}: no preview layout and no geometry.teacher_input") from None


def _check(value: np.ndarray, name: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    if tuple(value.shape) != shape:
        raise ViewError(f"{where}: {name} has shape {list(value.shape)}, expected {list(shape)}")
    return value


def load_clip(info: OutputInfo, key: str, atlas: Optional[MaskAtlas], caption: Optional[str] = None,
              shard: Optional[int] = None, atlas_row: Optional[int] = None) -> ClipData:
    """Read one clip. Raises KeyError (with close matches) for an unknown key. `shard` and
    `atlas_row`, when the caller knows them (gallery workers), skip the lookups by key."""
    grid = teacher_grid(info)
    maps = None
    if atlas is not None and atlas_row is not None:
        maps = atlas.row(atlas_row, key)
    elif atlas is not None and key in atlas:
        maps = atlas.motion(key), atlas.mask(key)
    in_atlas = maps is not None
    names = ["teacher.npy", "preview.jpg", "meta.json"]
    if info.dataset.get("teacher_dtype") == "int8":
        names.append("teacher_scale.npy")
    if not in_atlas:
        names += ["motion.npy", "mask.npy"]
    sample = info.read_sample(key, names, shard=shard)  # one ranged read of the shard (DataError if damaged)
    where = f"{info.root}: sample {key!r}"
    missing = [n for n in names if n not in sample]
    if missing:
        raise ViewError(f"{where}: missing member(s) {', '.join(missing)}")
    if maps is not None:
        motion, mask = maps
    else:
        motion = sample["motion.npy"].astype(np.float32)
        mask = sample["mask.npy"].astype(bool)
    _check(motion, "motion", grid, where)
    _check(mask, "mask", grid, where)
    teacher = dequantise_teacher(sample["teacher.npy"], sample.get("teacher_scale.npy"))
    if teacher.ndim != 2 or teacher.shape[0] != grid[0] * grid[1] * grid[2]:
        raise ViewError(f"{where}: teacher.npy has shape {list(teacher.shape)}, expected "
                        f"[{grid[0] * grid[1] * grid[2]}, C] for the grid {list(grid)}")
    tiles = split_preview(sample["preview.jpg"], grid[0], tile_size(info), f"{where}: preview.jpg")
    meta = sample["meta.json"] if isinstance(sample["meta.json"], dict) else {}
    text = caption if caption is not None else str(meta.get("caption", ""))
    return ClipData(key=key, caption=text, tiles=tiles, motion=motion, mask=mask, teacher=teacher, meta=meta)


def _source_note(meta: dict[str, Any]) -> list[str]:
    """A header line from meta.json's scalar fields (source path, fps, size, ...)."""
    items = [f"{k}: {v}" for k, v in meta.items()
             if k != "caption" and isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    return [f"meta.json: {'; '.join(items)}"] if items else []


def build_view(clip: ClipData, ratios: Sequence[float], taus: Sequence[float],
               query_text: Optional[str] = None) -> ClipView:
    """Masks at each ratio (tsa_core.topk_mask), the query and its correspondences at each tau."""
    grid = tuple(clip.motion.shape)
    if query_text:
        query, reason = parse_query(query_text, grid), "--query"
    else:
        query, reason = default_query(clip.motion), f"default: most moving token of the middle slot t={grid[0] // 2}"
    return ClipView(
        key=clip.key, caption=clip.caption, tiles=clip.tiles, motion=clip.motion,
        ratios=list(ratios), masks=topk_masks(clip.motion, ratios), query=query, query_reason=reason,
        taus=list(taus), corr=correspondence(clip.teacher, grid, query, taus), notes=_source_note(clip.meta))
