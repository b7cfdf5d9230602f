"""Decode one clip to the model input: geometry.num_frames frames at height x width (SPEC section 2).

Only the selected frames are decoded (decord `get_batch`), in small chunks that are cropped
and resized right away, so memory stays at a few source frames even for long 1080p clips.
The reader is deleted before returning, whatever happens.

Rotation metadata (phone footage: stored landscape, shown portrait) is read with PyAV
(`probe_rotation`). decord 0.6.0 turns the frames upright itself (a transpose filter for
90/180/270 degrees from the `rotate` tag or the display matrix); older builds did not. Which
one we have is decided per clip by comparing decord's first frame with PyAV's stored one,
and frames that are still as stored are turned here, so clips come out upright either way.
Sizes and the crop box are in upright pixels.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from tsa.configs.schema import Geometry

CHUNK_FRAMES = 4  # source frames held at once (a 1080p frame is 6 MB as uint8, 25 MB as float)


class DecodeError(RuntimeError):
    """A clip cannot be decoded; the message is the reason stored in the manifest."""


@dataclass
class DecodedClip:
    frames: np.ndarray  # uint8 [T', H, W, 3], T' = geometry.num_frames
    indices: list[int]  # source frame index of each output frame
    fps: float
    num_source_frames: int
    source_size: tuple[int, int]  # (width, height), upright (after `rotation`)
    crop_box: tuple[int, int, int, int]  # (left, top, right, bottom) in upright source pixels
    rotation: int = 0  # clockwise degrees from the stored to the upright frames: 0, 90, 180 or 270


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


def probe_rotation(path: str) -> tuple[int, Optional[np.ndarray]]:
    """(rotation, first frame as stored): the clockwise degrees (0, 90, 180, 270) that turn
    the stored frames upright as a player shows them, from the video stream's display matrix
    (FFmpeg attaches it to decoded frames; PyAV's `VideoFrame.rotation` is counter-clockwise),
    else the legacy `rotate` tag; the first frame (uint8 [h, w, 3] RGB) only when the rotation
    is not 0. An angle that is not a multiple of 90 and mirroring are ignored, as decord does.
    (0, None) when PyAV cannot read the file: decord then reports the reason."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.best("video")
            if stream is None:
                return 0, None
            tag = next((v for k, v in stream.metadata.items() if k.lower() == "rotate"), None)
            for frame in container.decode(stream):
                ccw = float(frame.rotation or 0)
                try:
                    degrees = -ccw if ccw else float(tag or 0)
                except ValueError:  # a `rotate` tag that is not a number
                    degrees = 0.0
                rotation = int(degrees % 360)
                if degrees != int(degrees) or rotation not in (90, 180, 270):
                    return 0, None
                return rotation, frame.to_ndarray(format="rgb24")
    except Exception:  # av.error.FFmpegError and friends: decord's error is the one reported
        return 0, None
    return 0, None


def rotate_frames(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    """uint8 [T, h, w, 3] turned `rotation` degrees clockwise ([T, w, h, 3] for 90 and 270)."""
    k = (rotation // 90) % 4
    return torch.rot90(frames, k=-k, dims=(1, 2)) if k else frames


def still_stored(decoded: np.ndarray, stored: np.ndarray, rotation: int) -> bool:
    """Is decord's first frame `decoded` still as stored (True) or already turned upright?
    Compared by shape where that decides it, else (square, 180 degrees) by which of the two
    orientations of PyAV's `stored` frame it is closer to."""
    upright = np.rot90(stored, k=-(rotation // 90), axes=(0, 1))
    if decoded.shape != stored.shape or decoded.shape != upright.shape:
        return decoded.shape == stored.shape
    diff_stored = np.abs(decoded.astype(np.int16) - stored).mean()
    diff_upright = np.abs(decoded.astype(np.int16) - upright).mean()
    return bool(diff_stored < diff_upright)


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
        src_h, src_w = first.shape[:2]  # as decord gives them
        rotation, stored = probe_rotation(path)
        turn = rotation if stored is not None and still_stored(first, stored, rotation) else 0
        del first, stored
        up_w, up_h = (src_h, src_w) if turn in (90, 270) else (src_w, src_h)
        box = crop_box(up_w, up_h, geometry.height, geometry.width)
        unique = sorted(set(indices))
        out: dict[int, torch.Tensor] = {}
        for start in range(0, len(unique), CHUNK_FRAMES):
            chunk = unique[start:start + CHUNK_FRAMES]
            raw = torch.from_numpy(reader.get_batch(chunk).asnumpy())
            if raw.shape[1:3] != (src_h, src_w):
                raise DecodeError(f"frame size changes inside the clip ({raw.shape[2]}x{raw.shape[1]} "
                                  f"after {src_w}x{src_h})")
            small = crop_resize(rotate_frames(raw, turn), box, geometry.height, geometry.width)
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
                       source_size=(int(up_w), int(up_h)), crop_box=box, rotation=rotation)
