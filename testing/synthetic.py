"""A complete preprocess output from random arrays, written by the real writer.

For trainer and viewer tests and the trainer's loader benchmark at paper size: no clips,
no models. Each sample shows one square blob moving across a static textured scene:
the motion map is high on the blob's tokens, and the teacher features are a fixed random
embedding per position plus a blob embedding that travels with it, so teacher
correspondences of a blob query follow the blob. Latents and text are Gaussian noise.
Samples are generated and written one at a time (memory stays at one sample).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsa.configs.schema import Config
from tsa.shards.dataset_info import build_dataset_info, inputs_fingerprint
from tsa.shards.encode import encode_sample, preview_jpeg
from tsa.shards.finalize import finalize
from tsa.shards.layout import shard_of
from tsa.shards.writer import ShardWriter, write_json_atomic

COGVIDEOX_SCALING_FACTOR = 1.15258426  # CogVideoX-2B VAE; recorded so the trainer sees a real value
CAPTIONS = ["a red ball rolls across a wooden table", "a blue square slides over a striped floor",
            "a yellow disc bounces on a grey carpet", "a green block drifts over a tiled wall"]


def _blob_path(rng: np.random.Generator, frames: int, height: int, width: int) -> list[tuple[float, float]]:
    """Blob centre (row, col) in [0, 1) per frame: a straight line at a random speed."""
    r0, c0 = rng.uniform(0.2, 0.8, size=2)
    dr, dc = rng.uniform(-0.4, 0.4, size=2) / max(frames - 1, 1)
    return [(float(np.clip(r0 + t * dr, 0.05, 0.95)), float(np.clip(c0 + t * dc, 0.05, 0.95)))
            for t in range(frames)]


def synthetic_sample(cfg: Config, index: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Arrays of one synthetic sample and its teacher-input frames [3, T, h, w] in [0, 1]."""
    from tsa.core import motion_map, topk_mask

    g = cfg.geometry
    rng = np.random.default_rng([seed, index])
    t_in, h_in, w_in = g.teacher_input
    gf, gh, gw = g.teacher_grid
    dim = cfg.models.teacher.dim

    # Static textured background plus a coloured square moving along a line.
    yy, xx = np.mgrid[0:h_in, 0:w_in].astype(np.float32)
    fx, fy = rng.uniform(0.02, 0.08, size=2)
    background = 0.5 + 0.2 * np.sin(xx * fx)[None] * np.cos(yy * fy)[None] * rng.uniform(0.5, 1, (3, 1, 1))
    colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    side = max(4, min(h_in, w_in) // 5)
    frames = np.repeat(background[:, None], t_in, axis=1).astype(np.float32)  # [3, T, h, w]
    path = _blob_path(rng, t_in, h_in, w_in)
    for t, (r, c) in enumerate(path):
        top, left = int(r * (h_in - side)), int(c * (w_in - side))
        frames[:, t, top:top + side, left:left + side] = colour[:, None, None]

    video = torch.from_numpy(frames)[None]
    motion = motion_map(video, tuple(g.tubelet))[0]  # [F, H, W]
    mask = topk_mask(motion[None], cfg.preprocess.mask_ratio)[0]

    # Teacher tokens: per-position embedding (static scene) + a blob embedding on the blob's tokens.
    pos = rng.standard_normal((gh * gw, dim)).astype(np.float32)
    blob = 2.0 * rng.standard_normal(dim).astype(np.float32)
    teacher = np.repeat(pos[None], gf, axis=0)  # [F, H*W, dim]
    pt = g.tubelet[0]
    for f in range(gf):
        r, c = path[f * pt]
        tr = min(gh - 1, int((r * (h_in - side) + side / 2) / g.tubelet[1]))
        tc = min(gw - 1, int((c * (w_in - side) + side / 2) / g.tubelet[2]))
        teacher[f, tr * gw + tc] += blob
    teacher += 0.1 * rng.standard_normal(teacher.shape).astype(np.float32)

    arrays: dict[str, np.ndarray] = {
        "text": rng.standard_normal(g.text_shape).astype(np.float32),
        "teacher": teacher.reshape(gf * gh * gw, dim),
        "motion": motion.numpy(),
        "mask": mask.numpy(),
    }
    if cfg.preprocess.latents == "sample":
        arrays["latent"] = rng.standard_normal(g.latent_shape).astype(np.float32)
    else:
        arrays["latent_mean"] = rng.standard_normal(g.latent_shape).astype(np.float32)
        arrays["latent_logvar"] = rng.uniform(-6, -2, g.latent_shape).astype(np.float32)
    return arrays, frames


def make_synthetic_dataset(out: str | Path, cfg: Config, n: int, seed: int = 0, n_failed: int = 0) -> Path:
    """Write a SPEC section 4 output folder with `n` ok samples and `n_failed` failed rows.

    Failed rows are spread deterministically over the input order. `cfg` is used as given
    (model refs unresolved); dataset.json records the models as `synthetic`. Returns `out`.
    """
    if n < 0 or n_failed < 0:
        raise ValueError(f"make_synthetic_dataset: n={n} and n_failed={n_failed} must be >= 0")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    total = n + n_failed
    failed_at = set(np.random.default_rng([seed, 1]).choice(total, size=n_failed, replace=False).tolist()) \
        if n_failed else set()
    keys = [f"synth_{i:06d}" for i in range(total)]
    sps = cfg.preprocess.samples_per_shard
    models = {name: {"source": "synthetic", "sha256": None} for name in ("vae", "text_encoder", "tokenizer",
                                                                         "teacher")}
    info = build_dataset_info(cfg, models=models, num_clips=total,
                              inputs_fp=inputs_fingerprint([(k, k + ".mp4") for k in keys]),
                              scaling_factor=COGVIDEOX_SCALING_FACTOR, source="synthetic")
    write_json_atomic(out / "dataset.json", info)

    g = cfg.geometry
    writer = None
    for i, key in enumerate(keys):
        shard = shard_of(i, sps)
        if writer is None or writer.shard != shard:
            if writer is not None:
                writer.close()
            writer = ShardWriter(out, shard)
        row: dict[str, Any] = {"key": key, "video": key + ".mp4", "caption": CAPTIONS[i % len(CAPTIONS)],
                               "fps": 8.0, "frames": g.num_frames, "width": g.width, "height": g.height,
                               "seconds": g.num_frames / 8.0, "error": None}
        if i in failed_at:
            writer.add(dict(row, status="failed", error="synthetic failure (no data)"))
            continue
        arrays, frames = synthetic_sample(cfg, i, seed)
        meta = {"caption": row["caption"], "source": row["video"], "synthetic": True,
                "frame_indices": list(range(g.num_frames)), "fps": 8.0,
                "source_size": [g.width, g.height], "crop_box": [0, 0, g.width, g.height]}
        writer.add(dict(row, status="ok"), encode_sample(arrays, preview_jpeg(frames, cfg), meta, cfg))
    if writer is not None:
        writer.close()
    finalize(out, info["num_shards"], tuple(g.teacher_grid))
    return out
