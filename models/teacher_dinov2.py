"""The DINOv2 teacher (`models.teacher.kind: dinov2`): transformers' own Dinov2Model, run per frame.

DINOv2 is an image model. Each teacher-input frame [3, h, w] (ImageNet-normalised, as for
VideoMAEv2) goes through Dinov2Model; its `last_hidden_state` (after the final LayerNorm,
the features DINOv2 and REPA use) loses the CLS token and leaves an (h/P) x (w/P) patch grid,
P = the model's patch_size (14). The tokens of the Pt frames of each tubelet
(geometry.tubelet[0]) are averaged, so the time grid is the VideoMAEv2 one, T/Pt slots, and
the projector, motion map (tubelet (Pt, P, P)) and mask need no change: N = (T/Pt)*(h/P)*(w/P)
tokens in (t, h, w) row-major order. Dinov2Model interpolates its position table (bicubic) to
the frame size. Weights come from a hub id or local folder via `Dinov2Model.from_pretrained`
(never trust_remote_code); the folder's config must say model_type dinov2.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tsa.configs.schema import ConfigError, Geometry, TeacherConfig
from tsa.models.teacher_weights import TeacherCheckpointError, read_hf_config, save_random_hf

TINY_POS_SIDE = 4  # the tiny model's pretrained position table is 4 x 4 (interpolated to the frame grid)


class Dinov2Teacher(nn.Module):
    """[B, 3, T, h, w] normalised frames -> [B, N, dim] tubelet-averaged DINOv2 patch tokens."""

    def __init__(self, model, geometry: Geometry):
        super().__init__()
        self.model = model
        self.input_size = tuple(geometry.teacher_input)
        self.grid = tuple(geometry.teacher_grid)
        self.tubelet_t = geometry.tubelet[0]
        self.dim = model.config.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, h, w] -> [B, N, dim]."""
        if x.ndim != 5 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"teacher input must be [B, 3, {', '.join(map(str, self.input_size))}] "
                             f"(geometry.teacher_input), got {list(x.shape)}")
        b, _, t, h, w = x.shape
        gt, gh, gw = self.grid
        frames = x.transpose(1, 2).reshape(b * t, 3, h, w)
        tokens = self.model(pixel_values=frames).last_hidden_state[:, 1:]  # [B*T, gh*gw, dim], CLS dropped
        if tokens.shape[1] != gh * gw:
            raise ValueError(f"DINOv2 gave {tokens.shape[1]} patch tokens per frame, geometry.teacher_grid "
                             f"{self.grid} needs {gh * gw} (does it have register tokens?)")
        tokens = tokens.reshape(b, gt, self.tubelet_t, gh * gw, self.dim).mean(dim=2)  # tubelet average
        return tokens.reshape(b, gt * gh * gw, self.dim)


def _dinov2_config(ref: str):
    from transformers import Dinov2Config

    return read_hf_config(Dinov2Config, ref, "dinov2", "DINOv2")


def check_dinov2_config(config, teacher_cfg: TeacherConfig, geometry: Geometry, ref: str) -> None:
    """The model's hidden size and patch must be the configured teacher dim and tubelet."""
    _, ph, pw = geometry.tubelet
    if config.hidden_size != teacher_cfg.dim:
        raise TeacherCheckpointError(f"models.teacher.checkpoint={ref}: hidden_size {config.hidden_size} != "
                                     f"models.teacher.dim={teacher_cfg.dim}")
    if (config.patch_size, config.patch_size) != (ph, pw):
        raise TeacherCheckpointError(f"models.teacher.checkpoint={ref}: patch_size {config.patch_size} does not "
                                     f"match geometry.tubelet={list(geometry.tubelet)} (Ph, Pw)")


def load_dinov2(teacher_cfg: TeacherConfig, geometry: Geometry, device, dtype: torch.dtype) -> Dinov2Teacher:
    """Dinov2Model from `teacher_cfg.checkpoint` (folder or hub id), eval, frozen, on `device`."""
    from transformers import Dinov2Model

    ref = teacher_cfg.checkpoint
    config = _dinov2_config(ref)
    check_dinov2_config(config, teacher_cfg, geometry, ref)
    model, info = Dinov2Model.from_pretrained(ref, config=config, torch_dtype=dtype, output_loading_info=True)
    # from_pretrained fills missing weights with random ones and only warns: refuse instead.
    missing = [k for k in info.get("missing_keys", ()) if k != "embeddings.mask_token"]
    if missing or info.get("mismatched_keys"):
        bad = missing or [k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]]
        raise TeacherCheckpointError(f"models.teacher.checkpoint={ref}: weights do not fit its config.json "
                                     f"({'missing' if missing else 'misshapen'} {bad[0]!r}, {len(bad)} in all)")
    model.eval().requires_grad_(False)
    return Dinov2Teacher(model, geometry).to(device=device, dtype=dtype).eval()


def tiny_dinov2_config(teacher_cfg: TeacherConfig, geometry: Geometry):
    """A small Dinov2Config from models.teacher dim/depth/heads/mlp_ratio and the tubelet patch."""
    from transformers import Dinov2Config

    patch = geometry.tubelet[1]
    if teacher_cfg.mlp_ratio != int(teacher_cfg.mlp_ratio):
        raise ConfigError(f"models.teacher.mlp_ratio={teacher_cfg.mlp_ratio}: Dinov2Config takes a whole number")
    return Dinov2Config(hidden_size=teacher_cfg.dim, num_hidden_layers=teacher_cfg.depth,
                        num_attention_heads=teacher_cfg.heads, mlp_ratio=int(teacher_cfg.mlp_ratio),
                        patch_size=patch, image_size=patch * TINY_POS_SIDE)


def save_random_dinov2(teacher_cfg: TeacherConfig, geometry: Geometry, folder: str | Path, seed: int = 0) -> Path:
    """Write a random-weight Dinov2Model (fixed seed, transformers' init, then small random
    LayerNorm and bias values so every tensor matters) with save_pretrained. Global RNG unchanged."""
    from transformers import Dinov2Model

    return save_random_hf(Dinov2Model, tiny_dinov2_config(teacher_cfg, geometry), folder, seed)
