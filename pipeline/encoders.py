"""Stages 3-5 (Ray actor pools): teacher features, VAE latents, T5 text embeddings.

Each stage is a callable class for `Dataset.map_batches(..., batch_format="numpy")`: the
constructor loads its model once per actor (tiny refs are materialised there, atomically
and cached), `__call__` takes a batch dict of numpy columns (see pipeline/prepare.py), runs
the model on the rows whose `ok` is True and returns the batch with its input column
replaced by its output column. Failed rows get zero outputs and are never written.
`SharedModelsStage` (`preprocess.model_actors: shared`) holds the three and runs them in turn.

A model that raises on a batch (CUDA out of memory on one long clip, a shape error) fails
only the clips concerned: the batch is retried clip by clip, and a clip that still raises
becomes a failed row ("<stage>: <error>"), its reason in `row_json`. The run goes on.
Test hook (pipeline/hooks.py): `raise_stage: <stage>:<key>` makes that stage raise on any batch
holding that key.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Optional

import numpy as np
import torch

from tsa.configs.schema import Config, config_from_dict
from tsa.models.text import encoder_device, encoder_dtype
from tsa.pipeline.progress import report

def _resolved(cfg_dict: dict[str, Any], cache_dir: Optional[str]) -> Config:
    from tsa.models.tiny import resolve_tiny

    if cache_dir:
        os.environ["TSA_CACHE"] = cache_dir
    return resolve_tiny(config_from_dict(cfg_dict))


def key_seed(key: str) -> int:
    """Seed of a clip's latent noise: from its key only, so reruns and resumes give the same bytes."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _ok_rows(batch: dict[str, np.ndarray]) -> np.ndarray:
    return np.flatnonzero(np.asarray(batch["ok"], dtype=bool))


def _injected_failure(stage: str, keys: list[str]) -> None:
    from tsa.pipeline.hooks import test_hook

    spec = test_hook("raise_stage") or ""
    if spec.partition(":")[0] == stage and spec.partition(":")[2] in keys:
        raise RuntimeError(f"injected failure (raise_stage {spec})")


def fail_row(batch: dict[str, np.ndarray], i: int, error: str) -> None:
    """Mark row `i` of `batch` failed with `error` (its ok flag and manifest row)."""
    import json

    batch["ok"][i] = False
    row = json.loads(str(batch["row_json"][i]))
    row.update(status="failed", error=error)
    rows = batch["row_json"].astype(object)
    rows[i] = json.dumps(row)
    batch["row_json"] = rows


def run_rows(stage: str, batch: dict[str, np.ndarray], compute) -> None:
    """Run `compute(rows)` on the ok rows of `batch`; if it raises, retry one row at a time and
    fail the rows that still raise (see module docstring). `compute` fills the outputs itself."""
    from tsa.pipeline.decode import clean_error

    batch["ok"] = np.array(batch["ok"], dtype=bool)  # a writable copy
    rows = _ok_rows(batch)
    if not len(rows):
        return
    keys = [str(k) for k in batch["key"]] if "key" in batch else []

    def attempt(sel: np.ndarray) -> None:
        _injected_failure(stage, [keys[i] for i in sel] if keys else [])
        compute(sel)

    try:
        attempt(rows)
        return
    except Exception as e:  # noqa: BLE001 (any model error fails clips, never the run)
        first = e
        _free_cuda()
    if len(rows) == 1:
        fail_row(batch, int(rows[0]), f"{stage}: {clean_error(first)}")
        return
    for i in rows:
        try:
            attempt(np.array([i]))
        except Exception as e:  # noqa: BLE001
            _free_cuda()
            fail_row(batch, int(i), f"{stage}: {clean_error(e)}")


def _free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class TeacherStage:
    """teacher_in float32 [B, 3, T, h, w] -> teacher float32 [B, N, dim]."""

    def __init__(self, cfg_dict: dict[str, Any], cache_dir: Optional[str] = None, progress=None):
        self.progress = progress  # pipeline.progress.StageCounter: clips done, per batch
        from tsa.models.teacher import load_teacher

        self.cfg = _resolved(cfg_dict, cache_dir)
        self.device = encoder_device(self.cfg.preprocess.teacher.num_gpus)
        dtype = encoder_dtype(self.cfg, self.device)
        self.model = load_teacher(self.cfg.models.teacher, self.cfg.geometry, self.device, dtype)
        g = self.cfg.geometry.teacher_grid
        self.out_shape = (g[0] * g[1] * g[2], self.cfg.models.teacher.dim)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tsa.models.teacher import teacher_features

        inputs = batch.pop("teacher_in")
        out = np.zeros((len(inputs), *self.out_shape), np.float32)

        def compute(rows: np.ndarray) -> None:
            feats = teacher_features(self.model, torch.from_numpy(np.ascontiguousarray(inputs[rows])))
            out[rows] = feats.float().cpu().numpy()

        run_rows("teacher", batch, compute)
        batch["teacher"] = out
        report(self.progress, "teacher", len(out))
        return batch


def vae_input(frames: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [B, T', H, W, 3] -> [B, 3, T', H, W] in [-1, 1], in `dtype` on `device`.

    Scaled in float32 and rounded once: x / 127.5 - 1 computed in bfloat16 rounds twice and
    doubles the error for half of the pixel values.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0).to(dtype)


class VaeStage:
    """frames uint8 [B, T', H, W, 3] -> latent float16 [B, C, F, h, w] (a posterior sample
    normalised as the student family trains on it: x scaling_factor for CogVideoX, per-channel
    (z - mean) / std for Wan; noise seeded from the key) or latent_mean + latent_logvar (raw)."""

    def __init__(self, cfg_dict: dict[str, Any], cache_dir: Optional[str] = None, progress=None):
        self.progress = progress  # pipeline.progress.StageCounter: clips done, per batch
        from tsa.models.family import student_family

        self.cfg = _resolved(cfg_dict, cache_dir)
        self.family = student_family(self.cfg)
        p = self.cfg.preprocess
        self.device = encoder_device(p.vae.num_gpus)
        vae = self.family.load_vae(self.cfg.models.vae, encoder_dtype(self.cfg, self.device))
        self.dtype = vae.dtype  # the family's choice (Wan: float32 whatever preprocess.dtype says)
        if p.vae_slicing:
            vae.enable_slicing()
        if p.vae_tiling:
            vae.enable_tiling()
        self.vae = vae.to(self.device).eval().requires_grad_(False)
        self.vae_config = dict(vae.config)
        self.latent_shape = tuple(self.cfg.geometry.latent_shape)

    def _encode(self, frames: np.ndarray, keys: list[str]) -> dict[str, np.ndarray]:
        x = vae_input(frames, self.device, self.dtype)
        with torch.inference_mode():
            dist = self.vae.encode(x).latent_dist
        mean, logvar = dist.mean.float(), dist.logvar.float()
        if tuple(mean.shape[1:]) != self.latent_shape:
            raise RuntimeError(f"VAE latent shape {tuple(mean.shape[1:])} != config geometry.latent_shape "
                               f"{self.latent_shape}: the VAE at models.vae does not match the geometry")
        if self.cfg.preprocess.latents == "moments":
            return {"latent_mean": mean.cpu().numpy(), "latent_logvar": logvar.cpu().numpy()}
        noise = torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(key_seed(k)))
                             for k in keys]).to(mean.device)
        sample = self.family.normalize_latent(mean + torch.exp(0.5 * logvar) * noise, self.vae_config)
        return {"latent": sample.cpu().numpy()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = batch.pop("frames")
        names = ["latent"] if self.cfg.preprocess.latents == "sample" else ["latent_mean", "latent_logvar"]
        outs = {n: np.zeros((len(frames), *self.latent_shape), np.float32) for n in names}

        def compute(rows: np.ndarray) -> None:
            enc = self._encode(frames[rows], [str(batch["key"][i]) for i in rows])
            for n in names:
                outs[n][rows] = enc[n]

        run_rows("vae", batch, compute)
        batch.update(outs)
        report(self.progress, "vae", len(frames))
        return batch


class TextStage:
    """caption -> text float32 [B, L, D] (models/text.py)."""

    def __init__(self, cfg_dict: dict[str, Any], cache_dir: Optional[str] = None, progress=None):
        self.progress = progress  # pipeline.progress.StageCounter: clips done, per batch
        from tsa.models.text import TextEncoder

        self.cfg = _resolved(cfg_dict, cache_dir)
        self.text = TextEncoder(self.cfg, encoder_device(self.cfg.preprocess.text.num_gpus))
        self.shape = self.text.shape

    def encode(self, captions: list[str]) -> np.ndarray:
        """captions -> float32 [B, L, D]."""
        return self.text.encode(captions)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = np.zeros((len(batch["ok"]), *self.shape), np.float32)

        def compute(rows: np.ndarray) -> None:
            out[rows] = self.encode([str(batch["caption"][i]) for i in rows])

        run_rows("text", batch, compute)
        batch["text"] = out
        report(self.progress, "text", len(out))
        return batch


class SharedModelsStage:
    """`preprocess.model_actors: shared`: one actor holds the VAE, teacher and T5 and runs them in
    that order on each batch (its size: the smallest of the three `batch_size`s, pipeline/plan.py).
    Same columns in and out as the three stages one after another: frames, teacher_in, caption
    -> latent (or latent_mean + latent_logvar), teacher, text; failed rows as in `run_rows`."""

    def __init__(self, cfg_dict: dict[str, Any], cache_dir: Optional[str] = None, progress=None):
        self.stages = [VaeStage(cfg_dict, cache_dir, progress), TeacherStage(cfg_dict, cache_dir, progress),
                       TextStage(cfg_dict, cache_dir, progress)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for stage in self.stages:
            batch = stage(batch)
        return batch
