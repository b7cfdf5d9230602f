"""Decode one clip to the model input: geometry.num_frames frames at height x width (SPEC section 2).

Only the selected frames are decoded (decord `get_batch`), in small chunks that are cropped
and resized right away, so memory stays at a few source frames even for long 1080p clips.
The reader is deleted before returning, whatever happens.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from configs.schema import Geometry

CHUNK_FRAMES = 4  # source frames held at once (a 1080p frame is 6 MB as uint8, 25 MB as float)


class DecodeError(RuntimeError):
    """A clip cannot be decoded; the message is the reason stored in the manifest."""


@dataclass
class DecodedClip:
    frames: np.ndarray  # uint8 [T', H, W, 3], T' = geometry.num_frames
    indices: list[int]  # source frame index of each output frame
    fps: float
    num_source_frames: int
    source_size: tuple[int, int]  # (width, height)
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) in source pixels


def frame_indices(n: int, num_frames: int) -> list[int]:
    """SPEC frame rule: stride s = max(1, n // num_frames); frames 0, s, 2s, ... first
    `num_frames`; a shorter clip repeats its last frame."""
    if n < 1:
        raise DecodeError("clip has no frames")
    s = max(1, n // num_frames)
    return [min(i * s, n - 1) for i in range(num_frames)]


def crop_box(width: int, height: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """Largest centred box of aspect target_h:target_w inside width x height: (left, top, right, bottom)."""
    if width * target_h > height * target_w:  # too wide: crop the sides
        w = max(1, round(height * target_w / target_h))
        left = (width - w) // 2
        return (left, 0, left + w, height)
    h = max(1, round(width * target_h / target_w))
    top = (height - h) // 2
    return (0, top, width, top + h)


def crop_resize(frames: torch.Tensor, box: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """uint8 [T, h, w, 3] -> uint8 [T, height, width, 3]: crop to `box`, bilinear antialiased resize."""
    left, top, right, bottom = box
    x = frames[:, top:bottom, left:right].permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


_DECORD_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\]\s*|\S+\.cc:\d+:\s*|Check failed:.*?\)\s*")


def clean_error(e: BaseException) -> str:
    """A short, stable reason: no timestamps or C++ source positions from decord."""
    text = _DECORD_NOISE.sub("", str(e)).replace("\n", " ").strip()
    text = re.sub(r"\s+", " ", text)
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def decode_clip(path: str, geometry: Geometry) -> DecodedClip:
    """Decode, crop and resize the clip at `path`. Raises DecodeError with the reason."""
    import decord

    if not os.path.isfile(path):
        raise DecodeError(f"file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        reader = decord.VideoReader(path, num_threads=1)
    except Exception as e:  # DECORDError is not a RuntimeError; FFmpeg errors surface as several types
        raise DecodeError(f"cannot open video: {clean_error(e)}") from None
    try:
        n = len(reader)
        fps = float(reader.get_avg_fps())
        indices = frame_indices(n, geometry.num_frames)
        first = reader[0].asnumpy()
        src_h, src_w = first.shape[:2]
        del first
        box = crop_box(src_w, src_h, geometry.height, geometry.width)
        unique = sorted(set(indices))
        out: dict[int, torch.Tensor] = {}
        for start in range(0, len(unique), CHUNK_FRAMES):
            chunk = unique[start:start + CHUNK_FRAMES]
            raw = torch.from_numpy(reader.get_batch(chunk).asnumpy())
            if raw.shape[1:3] != (src_h, src_w):
                raise DecodeError(f"frame size changes inside the clip ({raw.shape[2]}x{raw.shape[1]} "
                                  f"after {src_w}x{src_h})")
            small = crop_resize(raw, box, geometry.height, geometry.width)
            del raw
            for j, idx in enumerate(chunk):
                out[idx] = small[j]
        frames = torch.stack([out[i] for i in indices]).numpy()
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"cannot decode frames: {clean_error(e)}") from None
    finally:
        del reader
    return DecodedClip(frames=frames, indices=indices, fps=fps, num_source_frames=n,
                       source_size=(int(src_w), int(src_h)), crop_box=box)
