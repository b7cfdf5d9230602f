"""Stage 1-2 (CPU tasks): decode a clip, build the teacher input, motion map, mask and preview.

One input item becomes one row. Every row has the same columns and array shapes, so Ray
Data can batch ok and failed rows together: a failed row carries zero arrays and its reason
in `error`, and the model stages skip it.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from tsa.configs.schema import Config, config_from_dict
from tsa.pipeline.decode import DecodeError, clean_error
from tsa.pipeline.decode_proc import decode_with_timeout
from tsa.shards.encode import preview_jpeg
from tsa.pipeline.remote_src import local_copy


def manifest_row(item: dict[str, Any], status: str, error: str | None, clip=None) -> dict[str, Any]:
    """The manifest fields of one input row (extras are the CSV's other columns)."""
    row = {"key": item["key"], "video": item["video"], "caption": item["caption"], "status": status,
           "error": error, "fps": None, "frames": None, "width": None, "height": None, "seconds": None}
    if clip is not None:
        row.update(fps=clip.fps, frames=clip.num_source_frames, width=clip.source_size[0],
                   height=clip.source_size[1],
                   seconds=round(clip.num_source_frames / clip.fps, 6) if clip.fps > 0 else None)
    row.update(item.get("extras") or {})
    return row


def empty_arrays(cfg: Config) -> dict[str, np.ndarray]:
    """Zero arrays of the row shapes (the payload of a failed row)."""
    g = cfg.geometry
    t, h, w = g.teacher_input
    return {"frames": np.zeros((g.num_frames, g.height, g.width, 3), np.uint8),
            "teacher_in": np.zeros((3, t, h, w), np.float32),
            "motion": np.zeros(tuple(g.teacher_grid), np.float32),
            "mask": np.zeros(tuple(g.teacher_grid), bool)}


class Prepare:
    """Callable for `Dataset.map`: input item dict -> row dict (see module docstring).

    Row columns: index, key, ok, row_json (manifest fields), meta_json, caption, frames uint8
    [T', H, W, 3], teacher_in float32 [3, T, h, w] (ImageNet-normalised), motion float32
    [F, H, W], mask bool [F, H, W], preview (JPEG bytes).
    """

    def __init__(self, cfg_dict: dict[str, Any]):
        self.cfg = config_from_dict(cfg_dict)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        from tsa.models.teacher import preprocess_frames
        from tsa.core import motion_map, topk_mask

        cfg = self.cfg
        base = {"index": item["index"], "key": item["key"], "caption": item["caption"] or ""}
        if item["status"] != "ok":
            return self._failed(base, item, item["status"], item["error"])
        torch.set_num_threads(1)  # parallelism comes from Ray tasks
        try:
            with local_copy(item["path"]) as path:  # a clip in a bucket: fetched here, deleted after decoding
                clip = decode_with_timeout(path, cfg.geometry, cfg.preprocess.decode.timeout_s)
        except DecodeError as e:
            return self._failed(base, item, "failed", str(e))
        try:
            with torch.inference_mode():
                frames = torch.from_numpy(clip.frames)[None]  # [1, T', H, W, 3]
                pixels01, normalized = preprocess_frames(frames, cfg.geometry)
                motion = motion_map(pixels01, tuple(cfg.geometry.tubelet))  # [1, F, H, W]
                mask = topk_mask(motion, cfg.preprocess.mask_ratio)
                preview = preview_jpeg(pixels01[0].numpy(), cfg)
        except Exception as e:  # a clip that decodes but breaks the math is still one failed row
            return self._failed(base, item, "failed", f"preprocessing: {clean_error(e)}")
        meta = {"caption": item["caption"], "source": item["video"], "frame_indices": clip.indices,
                "fps": clip.fps, "num_source_frames": clip.num_source_frames,
                "source_size": list(clip.source_size), "crop_box": list(clip.crop_box), "rotation": clip.rotation}
        return {**base, "ok": True, "row_json": json.dumps(manifest_row(item, "ok", None, clip)),
                "meta_json": json.dumps(meta), "frames": clip.frames,
                "teacher_in": normalized[0].numpy(), "motion": motion[0].numpy(), "mask": mask[0].numpy(),
                "preview": preview}

    def _failed(self, base: dict[str, Any], item: dict[str, Any], status: str, error: str) -> dict[str, Any]:
        return {**base, "ok": False, "row_json": json.dumps(manifest_row(item, status, error)),
                "meta_json": "{}", **empty_arrays(self.cfg), "preview": b""}
