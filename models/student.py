"""The student: CogVideoX transformer plus the alignment projector, in one module.

`Student` is what DDP/FSDP wraps, so the projector's gradients are synchronised with the
transformer's. A forward hook on `transformer_blocks[layer - 1]` keeps the video tokens
after block `layer` (1-indexed) of the current forward; with gradient checkpointing the
block runs again in backward, and the hook ignores that second call.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from configs.schema import Config, ConfigError


class ModelError(ValueError):
    """The student model does not fit the config; the message names both values."""


def load_transformer(ref: str, dtype: torch.dtype = torch.float32, low_cpu_mem_usage: bool = True):
    """CogVideoXTransformer3DModel from a hub id or a folder: a pipeline folder (subfolder
    `transformer`) or a transformer folder itself (e.g. RUN/checkpoint-N/transformer).

    `low_cpu_mem_usage` (accelerate, a dependency) builds the model empty and fills it from
    the files: eight ranks on one node do not each hold a randomly initialised copy and the
    loaded one (2B: 2 x 8 GB a rank in fp32) at the same time."""
    from diffusers import CogVideoXTransformer3DModel

    kwargs = {"torch_dtype": dtype, "low_cpu_mem_usage": low_cpu_mem_usage}
    path = Path(ref)
    if path.is_dir() and (path / "config.json").is_file() and not (path / "model_index.json").is_file():
        return CogVideoXTransformer3DModel.from_pretrained(path, **kwargs)
    return CogVideoXTransformer3DModel.from_pretrained(ref, subfolder="transformer", **kwargs)


def check_transformer(transformer, cfg: Config) -> None:
    """Stop before training if the transformer cannot take this config's latents and text."""
    c = transformer.config
    g = cfg.geometry
    latent_c = g.latent_shape[0]
    checks = [
        (c.in_channels == latent_c,
         f"student in_channels={c.in_channels} but geometry.latent_channels={latent_c} "
         "(image-to-video models take extra channels and are not supported)"),
        (c.patch_size == g.student_patch,
         f"student patch_size={c.patch_size} but geometry.student_patch={g.student_patch}"),
        ((c.get("patch_size_t") or 1) == g.student_patch_t,
         f"student patch_size_t={c.get('patch_size_t')} but geometry.student_patch_t={g.student_patch_t} "
         "(CogVideoX1.5 patches 2 latent frames: configs/cogvideox15_5b_mtsa.yaml)"),
        (c.text_embed_dim == g.text_dim,
         f"student text_embed_dim={c.text_embed_dim} but geometry.text_dim={g.text_dim}"),
        (c.get("ofs_embed_dim") is None,
         f"student ofs_embed_dim={c.get('ofs_embed_dim')}: image-to-video models are not supported"),
        (cfg.align.loss == "none" or cfg.align.layer <= c.num_layers,
         f"align.layer={cfg.align.layer} but the student has {c.num_layers} blocks"),
    ]
    # Fixed sin-cos positions cover exactly max_text_seq_length text tokens before the video.
    if not c.use_rotary_positional_embeddings:
        checks.append((c.max_text_seq_length == g.text_length,
                       f"student max_text_seq_length={c.max_text_seq_length} but "
                       f"geometry.text_length={g.text_length}"))
    for ok, msg in checks:
        if not ok:
            raise ModelError(msg)


def rotary_embedding(transformer, cfg: Config, device: torch.device) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(cos, sin) 3D rotary tables for CogVideoX-5B and 1.5 models, exactly as
    CogVideoXPipeline._prepare_rotary_positional_embeddings builds them at this geometry;
    None for models with fixed positions (2B). Each table is [F*H*W, attention_head_dim]
    over the student grid (for 1.5, F counts temporal patches of the padded latent)."""
    c = transformer.config
    if not c.use_rotary_positional_embeddings:
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    frames, grid_h, grid_w = cfg.geometry.student_grid
    base_h, base_w = c.sample_height // c.patch_size, c.sample_width // c.patch_size
    if c.get("patch_size_t") is None:  # CogVideoX 1.0: the grid resized into the base grid
        crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
        return get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=crops,
                                       grid_size=(grid_h, grid_w), temporal_size=frames, device=device)
    # CogVideoX 1.5: a slice of the (sample_height, sample_width) table, one time step per patch.
    return get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=None,
                                   grid_size=(grid_h, grid_w), temporal_size=frames, grid_type="slice",
                                   max_size=(base_h, base_w), device=device)


def build_projector(transformer, cfg: Config):
    """tsa_core.Projector from the student width to the teacher width; checks that it maps
    the student grid onto the teacher grid."""
    from tsa_core import Projector

    c = transformer.config
    in_dim = c.num_attention_heads * c.attention_head_dim
    g = cfg.geometry
    # x2 in time at paper geometry; derived from the grids for other families (docs/families.md).
    projector = Projector(in_dim, cfg.align.projector_hidden, cfg.models.teacher.dim,
                          time_scale=g.projector_time_scale)
    try:
        out_grid = projector.output_grid(g.student_grid)
    except ValueError as e:
        raise ConfigError(f"geometry: projector cannot map student grid {g.student_grid}: {e}") from None
    if tuple(out_grid) != tuple(g.teacher_grid):
        raise ConfigError(f"geometry: the projector maps student grid {tuple(g.student_grid)} to "
                          f"{tuple(out_grid)}, but the teacher grid is {tuple(g.teacher_grid)}")
    return projector


class Student(nn.Module):
    """Transformer + projector (None when `align.loss` is none)."""

    def __init__(self, transformer, projector: Optional[nn.Module], layer: int,
                 student_grid: tuple[int, int, int], pad_frames: int = 0):
        super().__init__()
        self.transformer = transformer
        self.projector = projector
        self.layer = layer
        self.student_grid = tuple(student_grid)
        self.pad_frames = int(pad_frames)  # latent frames prepended for a temporal patch (CogVideoX1.5)
        self._armed = False
        self._captured: Optional[torch.Tensor] = None
        self.captures = 0  # how many block outputs were kept (tests check one per forward)
        if projector is not None:
            transformer.transformer_blocks[layer - 1].register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        # Only the first call per forward: a checkpointed block runs again during backward.
        if self._armed:
            self._captured = output[0]  # blocks return (video tokens, text tokens)
            self._armed = False
            self.captures += 1

    def forward(self, noisy: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor,
                rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
        """noisy [B, F, C, H, W], text [B, L, D], timestep [B] ->
        (prediction [B, F, C, H, W], projected [B, Ft*Ht*Wt, teacher_dim] or None).

        With `pad_frames` > 0 (CogVideoX1.5, F not a multiple of the temporal patch) the
        transformer sees `pad_frames` copies of noisy frame 0 in front, as CogVideoX1.5's own
        fine-tuning pads the latent; their predictions are dropped, so the loss covers the F
        real frames only."""
        self._armed = self.projector is not None
        self._captured = None
        if self.pad_frames:
            noisy = torch.cat([noisy[:, :1].expand(-1, self.pad_frames, -1, -1, -1), noisy], dim=1)
        try:
            pred = self.transformer(hidden_states=noisy, encoder_hidden_states=text, timestep=timestep,
                                    image_rotary_emb=rotary, return_dict=False)[0]
        finally:
            self._armed = False
        if self.pad_frames:
            pred = pred[:, self.pad_frames:]
        if self.projector is None:
            return pred, None
        hidden, self._captured = self._captured, None
        if hidden is None:
            raise RuntimeError(f"block {self.layer} did not run in the student forward")
        return pred, self.projector(hidden, self.student_grid)


def build_student(cfg: Config) -> Student:
    """Load the transformer named by `models.student` (resolved: hub id or path), check it
    against the config, enable checkpointing/compile as configured, add the projector."""
    transformer = load_transformer(cfg.models.student)
    check_transformer(transformer, cfg)
    if cfg.train.lora.rank > 0:
        from train.lora import add_lora

        add_lora(transformer, cfg.train.lora, cfg.seed + 1)
    if cfg.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    projector = None
    if cfg.align.loss != "none":
        # Its own seeded draw: the initial projector must not depend on how much of the global
        # RNG the transformer load used (a full-memory load initialises random weights first,
        # a low-memory load through accelerate does not).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            projector = build_projector(transformer, cfg)
    if cfg.train.compile:
        # Per block, so the capture hook (called around forward) stays in eager Python.
        for block in transformer.transformer_blocks:
            block.forward = torch.compile(block.forward)
    transformer.train()
    return Student(transformer, projector, cfg.align.layer, cfg.geometry.student_grid,
                   cfg.geometry.student_pad_frames)
