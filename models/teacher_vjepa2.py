"""The V-JEPA 2 teacher (`models.teacher.kind: vjepa2`): transformers' own VJEPA2Model encoder.

Input: the VideoMAEv2 teacher input (48 frames, ImageNet mean/std, which V-JEPA 2's video
processor also uses), patch 16 and tubelet 2 (geometry.tubelet [2, 16, 16]): a (T/2) x (h/16)
x (w/16) token grid, e.g. 24 x 10 x 15. Output: the encoder's `last_hidden_state` (after its
final LayerNorm; the predictor is not run), [B, N, dim] in (t, h, w) row-major order.

Positions: VJEPA2's attention derives its 3D RoPE positions from a flat token id on a square
G x G grid, G = crop_size / patch_size (16 for the 256 px models). Run as VJEPA2Model.forward
does, a 10 x 15 grid would get wrong rows, columns and frames. So the encoder is run here layer
by layer, exactly as VJEPA2Encoder.forward does, but with each layer's own `position_mask`
argument set to the virtual ids t*G*G + h*G + w, which VJEPA2 decodes to the true (t, h, w)
(valid while the grid is at most G x G; checked on load). On a square G x G grid the virtual
ids equal VJEPA2's own, so the features equal `VJEPA2Model(..., skip_predictor=True)`
(tests/test_teachers.py).
"""
from __future__ import annotations

import torch
from torch import nn

from tsa.configs.schema import ConfigError, Geometry, TeacherConfig
from tsa.models.teacher_weights import TeacherCheckpointError, read_hf_config, save_random_hf


class Vjepa2Teacher(nn.Module):
    """[B, 3, T, h, w] normalised frames -> [B, N, dim] V-JEPA 2 encoder tokens."""

    def __init__(self, model, geometry: Geometry):
        super().__init__()
        self.encoder = model.encoder  # the predictor is not needed
        self.input_size = tuple(geometry.teacher_input)
        self.grid = tuple(geometry.teacher_grid)
        side = model.config.crop_size // model.config.patch_size
        gt, gh, gw = self.grid
        t, h, w = torch.meshgrid(torch.arange(gt), torch.arange(gh), torch.arange(gw), indexing="ij")
        self.register_buffer("position_ids", (t * side * side + h * side + w).flatten(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, h, w] -> [B, N, dim]."""
        if x.ndim != 5 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"teacher input must be [B, 3, {', '.join(map(str, self.input_size))}] "
                             f"(geometry.teacher_input), got {list(x.shape)}")
        hidden = self.encoder.embeddings(x.transpose(1, 2))  # VJEPA2 takes [B, T, 3, h, w]
        if hidden.shape[1] != self.position_ids.numel():
            raise ValueError(f"V-JEPA 2 gave {hidden.shape[1]} tokens, geometry.teacher_grid {self.grid} "
                             f"needs {self.position_ids.numel()}")
        positions = self.position_ids[None].expand(x.shape[0], -1)
        for layer in self.encoder.layer:
            hidden = layer(hidden, positions)[0]
        return self.encoder.layernorm(hidden)


def _vjepa2_config(ref: str):
    from transformers import VJEPA2Config

    return read_hf_config(VJEPA2Config, ref, "vjepa2", "V-JEPA 2")


def check_vjepa2_config(config, teacher_cfg: TeacherConfig, geometry: Geometry, ref: str) -> None:
    """hidden size = models.teacher.dim, tubelet = (tubelet_size, patch, patch), grid within G x G."""
    pt, ph, pw = geometry.tubelet
    if config.hidden_size != teacher_cfg.dim:
        raise TeacherCheckpointError(f"models.teacher.checkpoint={ref}: hidden_size {config.hidden_size} != "
                                     f"models.teacher.dim={teacher_cfg.dim}")
    if (config.tubelet_size, config.patch_size, config.patch_size) != (pt, ph, pw):
        raise TeacherCheckpointError(
            f"models.teacher.checkpoint={ref}: tubelet_size {config.tubelet_size}, patch_size {config.patch_size} "
            f"do not match geometry.tubelet={list(geometry.tubelet)}")
    side = config.crop_size // config.patch_size
    _, gh, gw = geometry.teacher_grid
    if max(gh, gw) > side:
        raise TeacherCheckpointError(
            f"models.teacher.checkpoint={ref}: teacher grid {gh} x {gw} is larger than the model's "
            f"{side} x {side} position grid (crop_size {config.crop_size} / patch_size {config.patch_size})")


def load_vjepa2(teacher_cfg: TeacherConfig, geometry: Geometry, device, dtype: torch.dtype) -> Vjepa2Teacher:
    """VJEPA2Model from `teacher_cfg.checkpoint` (folder or hub id), eval, frozen, on `device`."""
    from transformers import VJEPA2Model

    ref = teacher_cfg.checkpoint
    config = _vjepa2_config(ref)
    check_vjepa2_config(config, teacher_cfg, geometry, ref)
    model, info = VJEPA2Model.from_pretrained(ref, config=config, torch_dtype=dtype, output_loading_info=True)
    # from_pretrained fills missing weights with random ones and only warns: refuse for the encoder.
    missing = [k for k in info.get("missing_keys", ()) if k.startswith("encoder.")]
    if missing:
        raise TeacherCheckpointError(f"models.teacher.checkpoint={ref}: weights do not fit its config.json "
                                     f"(missing {missing[0]!r}, {len(missing)} in all)")
    model.eval().requires_grad_(False)
    return Vjepa2Teacher(model, geometry).to(device=device, dtype=dtype).eval()


def tiny_vjepa2_config(teacher_cfg: TeacherConfig, geometry: Geometry):
    """A small VJEPA2Config from models.teacher dim/depth/heads/mlp_ratio and the tubelet; its
    position grid is 2 larger than the teacher grid's longer side, so virtual ids matter."""
    from transformers import VJEPA2Config

    pt, ph, _ = geometry.tubelet
    _, gh, gw = geometry.teacher_grid
    if teacher_cfg.dim % teacher_cfg.heads:
        raise ConfigError(f"models.teacher.dim={teacher_cfg.dim} must be a multiple of heads={teacher_cfg.heads}")
    return VJEPA2Config(hidden_size=teacher_cfg.dim, num_hidden_layers=teacher_cfg.depth,
                        num_attention_heads=teacher_cfg.heads, mlp_ratio=float(teacher_cfg.mlp_ratio),
                        patch_size=ph, tubelet_size=pt, crop_size=ph * (max(gh, gw) + 2),
                        frames_per_clip=geometry.teacher_input[0], pred_hidden_size=teacher_cfg.dim,
                        pred_num_hidden_layers=1, pred_num_attention_heads=teacher_cfg.heads,
                        pred_num_mask_tokens=2, num_pooler_layers=1)


def save_random_vjepa2(teacher_cfg: TeacherConfig, geometry: Geometry, folder, seed: int = 0):
    """Write a random-weight VJEPA2Model (fixed seed, transformers' init plus small random
    LayerNorm and bias values) with save_pretrained. Global RNG unchanged."""
    from transformers import VJEPA2Model

    return save_random_hf(VJEPA2Model, tiny_vjepa2_config(teacher_cfg, geometry), folder, seed)
