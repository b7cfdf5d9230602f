"""Turn one clip's arrays into the bytes of its shard members (SPEC section 4).

Everything here is deterministic: the same arrays give the same bytes.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from tsa.configs.schema import Config
from tsa.shards.layout import member_specs, preview_layout


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def quantize_int8(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token symmetric int8: features [N, C] -> (int8 [N, C], float16 scale [N]).

    The scale is rounded to float16 before quantizing, so `q * scale` uses the stored scale.
    """
    x = np.asarray(features, dtype=np.float32)
    amax = np.abs(x).max(axis=-1)
    scale = (np.maximum(amax, 1e-8) / 127.0).astype(np.float16)
    scale = np.where(scale == 0, np.float16(np.finfo(np.float16).tiny), scale)  # float16 underflow
    q = np.clip(np.rint(x / scale.astype(np.float32)[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 [N, C] and float16 scale [N] -> float32 [N, C]."""
    return q.astype(np.float32) * scale.astype(np.float32)[:, None]


def preview_jpeg(frames01: np.ndarray, cfg: Config) -> bytes:
    """JPEG sprite from the teacher-input frames.

    frames01: float [3, T, h, w] in [0, 1] (T = teacher frames, h x w = teacher input size).
    One tile per teacher time slot (the first frame of its tubelet), resized to half size,
    `cols` tiles a row, row-major in time.
    """
    import torch
    import torch.nn.functional as F
    from PIL import Image

    lay = preview_layout(cfg)
    pt = cfg.geometry.tubelet[0]
    x = torch.as_tensor(np.asarray(frames01, dtype=np.float32))
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"preview_jpeg: expected frames [3, T, h, w], got {tuple(x.shape)}")
    firsts = x[:, 0:lay["tiles"] * pt:pt].permute(1, 0, 2, 3)  # [tiles, 3, h, w]
    tiles = F.interpolate(firsts, size=(lay["tile_height"], lay["tile_width"]), mode="bilinear",
                          antialias=True, align_corners=False)
    tiles = (tiles.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    th, tw, cols = lay["tile_height"], lay["tile_width"], lay["cols"]
    sprite = np.zeros((lay["rows"] * th, cols * tw, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sprite[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
    buf = io.BytesIO()
    Image.fromarray(sprite).save(buf, format="JPEG", quality=cfg.preprocess.preview_quality)
    return buf.getvalue()


def encode_sample(arrays: dict[str, np.ndarray], preview: bytes, meta: dict[str, Any],
                  cfg: Config) -> dict[str, bytes]:
    """Member name -> bytes for one sample, checked against the config's shapes.

    `arrays` holds float arrays under the member names without `.npy` and before storage
    casting: `latent` (or `latent_mean` + `latent_logvar`) [C, F, H, W], `text` [L, D],
    `teacher` [N, dim] (quantized here when teacher_dtype is int8), `motion` [F, H, W],
    `mask` bool [F, H, W].
    """
    specs = member_specs(cfg)
    arrays = dict(arrays)
    if cfg.preprocess.teacher_dtype == "int8":
        q, scale = quantize_int8(arrays["teacher"])
        arrays["teacher"], arrays["teacher_scale"] = q, scale
    members: dict[str, bytes] = {}
    for name, (dtype, shape) in specs.items():
        short = name[:-len(".npy")]
        if short not in arrays:
            raise KeyError(f"encode_sample: missing array {short!r} for member {name}")
        a = np.asarray(arrays[short])
        if tuple(a.shape) != shape:
            raise ValueError(f"encode_sample: {name} has shape {tuple(a.shape)}, config expects {shape}")
        a = a.astype(dtype, copy=False)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"encode_sample: {name} has non-finite values")
        members[name] = npy_bytes(a)
    members["preview.jpg"] = preview
    members["meta.json"] = json_bytes(meta)
    return members
