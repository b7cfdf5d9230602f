"""The student: a family's transformer plus the alignment projector, in one module.

`Student` is what DDP/FSDP wraps, so the projector's gradients are synchronised with the
transformer's. A forward hook on block `layer` (1-indexed; the family says which list holds
the blocks) keeps the video tokens of the current forward; with gradient checkpointing the
block runs again in backward, and the hook ignores that second call.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tsa.configs.schema import Config, ConfigError
from tsa.models.family import ModelError, StudentFamily, student_family

__all__ = ["ModelError", "Student", "assemble_student", "build_projector", "build_student"]


def build_projector(transformer, cfg: Config):
    """tsa_core.Projector from the student width to the teacher width; checks that it maps
    the student grid onto the teacher grid."""
    from tsa.core import Projector

    in_dim = student_family(cfg).width(transformer)
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

    def __init__(self, family: StudentFamily, transformer, projector: Optional[nn.Module], layer: int,
                 student_grid: tuple[int, int, int], pad_frames: int = 0):
        super().__init__()
        self.family = family
        self.transformer = transformer
        self.projector = projector
        self.layer = layer
        self.student_grid = tuple(student_grid)
        self.pad_frames = int(pad_frames)  # latent frames prepended for a temporal patch (CogVideoX1.5)
        self._armed = False
        self._captured: Optional[torch.Tensor] = None
        self.captures = 0  # how many block outputs were kept (tests check one per forward)
        if projector is not None:
            family.blocks(transformer)[layer - 1].register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        # Only the first call per forward: a checkpointed block runs again during backward.
        if self._armed:
            self._captured = self.family.block_tokens(output)
            self._armed = False
            self.captures += 1

    def forward(self, noisy: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor, conditioning=None,
                pad: Optional[torch.Tensor] = None):
        """noisy [B, C, F, H, W], text [B, L, D], timestep [B] (the model's own scale),
        conditioning (the family's, e.g. rotary tables) ->
        (prediction [B, C, F, H, W], projected [B, Ft*Ht*Wt, teacher_dim] or None).

        With `pad_frames` > 0 (CogVideoX1.5, F not a multiple of the temporal patch) the
        transformer sees `pad` [B, C, pad_frames, H, W] in front: the clean frame 0 noised with
        fresh noise of its own (train/step.py `padding_frames`), as CogVideoX1.5's own fine-tuning
        pads the latent; their predictions are dropped, so the loss covers the F real frames only."""
        if self.pad_frames:
            if pad is None or pad.shape[2] != self.pad_frames or pad.shape[3:] != noisy.shape[3:]:
                raise ValueError(f"the student pads {self.pad_frames} latent frame(s) in front "
                                 f"(geometry.student_pad_frames): pass pad [B, C, {self.pad_frames}, H, W], "
                                 f"got {None if pad is None else tuple(pad.shape)}")
            noisy = torch.cat([pad.to(noisy.dtype), noisy], dim=2)
        self._armed = self.projector is not None
        self._captured = None
        try:
            pred = self.family.predict(self.transformer, noisy, text, timestep, conditioning)
        finally:
            self._armed = False
        if self.pad_frames:
            pred = pred[:, :, self.pad_frames:]
        if self.projector is None:
            return pred, None
        hidden, self._captured = self._captured, None
        if hidden is None:
            raise RuntimeError(f"block {self.layer} did not run in the student forward")
        return pred, self.projector(hidden, self.student_grid)


def build_student(cfg: Config, empty: bool = False) -> Student:
    """Load the transformer named by `models.student` (resolved: hub id or path), check it
    against the config, enable checkpointing/compile as configured, add the projector.

    `empty`: read only the transformer's config.json and build every parameter (transformer,
    LoRA adapters, projector) on the meta device: no weights are read and no host memory is
    used for them. Buffers (e.g. CogVideoX-2B's fixed position table) are computed on the CPU
    as usual. Several workers build this empty twin, and rank 0 alone loads the weights and
    broadcasts them into the sharded or replicated module (train/distributed.py, `wrap`), so a
    node's host RAM holds at most one copy of the model whatever the number of ranks."""
    family = student_family(cfg)
    if empty:
        transformer = _empty_transformer(family, cfg.models.student)
    else:
        transformer = family.load_transformer(cfg.models.student)
    return assemble_student(cfg, transformer, empty)


def assemble_student(cfg: Config, transformer: nn.Module, empty: bool = False) -> Student:
    """The Student around an already built `transformer` (loaded, random, or on the meta device
    when `empty`): the config checks, LoRA, gradient checkpointing, the seeded projector and
    compile, exactly as `build_student` does after loading (bench/gpu.py builds a random-weight
    transformer at paper size and trains it through this)."""
    import contextlib

    family = student_family(cfg)
    family.check_transformer(transformer, cfg)
    on_meta = _meta_parameters() if empty else contextlib.nullcontext()
    if cfg.train.lora.rank > 0:
        from tsa.models.lora import add_lora

        with on_meta:
            add_lora(transformer, cfg.train.lora, cfg.seed + 1)
    if cfg.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    projector = None
    if cfg.align.loss != "none":
        # Its own seeded draw: the initial projector must not depend on how much of the global
        # RNG the transformer load used (a full-memory load initialises random weights first,
        # a low-memory load through accelerate does not).
        with torch.random.fork_rng(devices=[]), _meta_parameters() if empty else contextlib.nullcontext():
            torch.manual_seed(cfg.seed)
            projector = build_projector(transformer, cfg)
    if cfg.train.compile:
        # Per block, so the capture hook (called around forward) stays in eager Python.
        for block in family.blocks(transformer):
            block.forward = torch.compile(block.forward)
    transformer.train()
    return Student(family, transformer, projector, cfg.align.layer, cfg.geometry.student_grid,
                   cfg.geometry.student_pad_frames)


def _meta_parameters():
    """A context in which new parameters are created on the meta device and buffers on the CPU
    (accelerate's init_empty_weights): the shapes without the bytes."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def _empty_transformer(family: StudentFamily, ref: str) -> nn.Module:
    """The family's transformer built from its config.json alone, parameters on the meta device
    (fp32, as `load_transformer` loads them), buffers computed on the CPU."""
    cls = family.diffusers_class(family.transformer_class)
    config = family.transformer_config(ref)
    with _meta_parameters():
        transformer = cls.from_config(config)
    transformer.register_to_config(_name_or_path=ref)  # as from_pretrained records it (saved in config.json)
    return transformer
