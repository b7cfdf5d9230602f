"""Validation videos during training: every `train.validate_every` optimizer steps, the same
few prompts with the same seeds and a few denoising steps, so that videos of different steps
compare. Written to RUN/validation/step-N/ (mp4s + prompts.json) and to TensorBoard as frame
strips (TensorBoard's own video summary needs moviepy, which tsa does not depend on).

The prompts are embedded once per run with the T5 encoder (on the GPU when there is one, then
freed before the student loads) by rank 0, into RUN/validation/prompt_embeds.safetensors;
VAE and scheduler are loaded at the first validation, the VAE by rank 0 only, and it waits on
the CPU between validations. With one worker or DDP rank 0 renders alone and the others wait
at a barrier; under FSDP2 every rank runs the transformer (each forward needs all shards) and
only rank 0 decodes. The transformer computes under the bf16 autocast of training; the VAE in
the family's dtype (Wan's in fp32, never under bf16 autocast).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from tsa.configs.schema import BUNDLED, Config, ConfigError, config_from_dict
from tsa.train.distributed import Dist

VALIDATION_DIR = "validation"
EMBEDS = "prompt_embeds.safetensors"
DONE = "prompts.json"  # written last: a step folder with it is complete
TB_FRAMES = 8  # frames per TensorBoard strip


def validation_prompts(cfg: Config) -> list[str]:
    ref = cfg.train.validation_prompts
    path = BUNDLED / "validation_prompts.txt" if ref == "bundled" else Path(ref)
    if not path.is_file():
        raise ConfigError(f"train.validation_prompts={ref}: file not found")
    prompts = [s.strip() for s in path.read_text(encoding="utf-8-sig").splitlines()
               if s.strip() and not s.strip().startswith("#")]
    if not prompts:
        raise ConfigError(f"train.validation_prompts={ref}: no prompts in {path}")
    return prompts


def _digest(prompts: list[str], cfg: Config) -> str:
    blob = json.dumps({"prompts": prompts, "text_encoder": cfg.models.text_encoder,
                       "tokenizer": cfg.models.tokenizer, "text": list(cfg.geometry.text_shape)})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def embed_prompts(cfg: Config, out: Path, dist: Dist) -> Path:
    """Collective. RUN/validation/prompt_embeds.safetensors with `prompts` [P, L, D] and the empty
    negative prompt `negative` [1, L, D] (float32), made by rank 0 unless already there."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    prompts = validation_prompts(cfg)
    path = Path(out) / VALIDATION_DIR / EMBEDS
    digest = _digest(prompts, cfg)
    if dist.is_main:
        fresh = path.is_file() and safe_open(str(path), "pt").metadata().get("digest") == digest
        if not fresh:
            from tsa.models.text import TextEncoder
            from tsa.models.tiny import resolve_tiny

            text_cfg = resolve_tiny(config_from_dict(cfg.to_dict()))  # a copy: the run's own config stays as it is
            text = TextEncoder(text_cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
            embeds = torch.from_numpy(text.encode(prompts + [""]))
            del text
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            save_file({"prompts": embeds[:-1].contiguous(), "negative": embeds[-1:].contiguous()}, str(tmp),
                      metadata={"digest": digest, "prompts": json.dumps(prompts)})
            tmp.replace(path)
    dist.barrier()
    return path


class Validator:
    """Called after optimizer steps; renders when `step % validate_every == 0`."""

    def __init__(self, cfg: Config, out: Path, dist: Dist, embeds: Path):
        from safetensors.torch import load_file

        from tsa.models.family import student_family

        self.cfg, self.out, self.dist = cfg, Path(out), dist
        self.family = student_family(cfg)
        loaded = load_file(str(embeds))
        self.prompts = validation_prompts(cfg)
        self.embeds, self.negative = loaded["prompts"], loaded["negative"]
        self._pipe_parts = None

    def due(self, step: int) -> bool:
        """Collective: rank 0 decides for all (a slower rank must not see rank 0's finished
        folder and skip a validation the others run)."""
        every = self.cfg.train.validate_every
        return bool(self.dist.broadcast(every > 0 and step % every == 0 and not (self.folder(step) / DONE).is_file()))

    def folder(self, step: int) -> Path:
        return self.out / VALIDATION_DIR / f"step-{step}"

    @property
    def renders_alone(self) -> bool:
        """Rank 0 renders by itself unless the model is sharded (FSDP2 needs every rank in each
        forward): with one worker or DDP every rank holds the whole student, so the others only
        wait at the barrier instead of making the same videos."""
        return not (self.dist.active and self.dist.strategy == "fsdp2")

    @property
    def compute_dtype(self) -> Optional[torch.dtype]:
        """The transformer's autocast dtype while rendering (bf16 on GPUs, as in training)."""
        if self.dist.device.type == "cuda" and self.cfg.train.mixed_precision == "bf16":
            return torch.bfloat16
        return None

    def _parts(self):
        """VAE (rank 0 only: it alone decodes) and scheduler, loaded at the first validation; the
        VAE waits on the CPU between validations (the transformer is the one being trained)."""
        if self._pipe_parts is None:
            m = self.cfg.models
            vae = None
            if self.dist.is_main:
                # The family's dtype: CogVideoX's VAE runs under the bf16 autocast of training,
                # Wan's stays fp32 (its causal 3D convs lose detail in bf16: family.vae_dtype).
                vae = self.family.load_vae(m.vae).eval()
                vae.requires_grad_(False)
                if self.dist.device.type == "cuda":  # 49 x 480 x 720 decodes in ~19 GB untiled
                    vae.enable_tiling()
            self._pipe_parts = (vae, self.family.sampling_scheduler(m.scheduler))
        return self._pipe_parts

    def __call__(self, step: int, model: nn.Module, transformer: nn.Module, tensorboard=None) -> Path:
        """Collective. Render every prompt with `transformer` (the student's, inside `model`, the
        wrapped module): rank 0 alone (one worker, DDP) or every rank with rank 0 decoding (FSDP2);
        rank 0 writes RUN/validation/step-N/, the others wait. The training RNG is left as it was."""
        if self.renders_alone and not self.dist.is_main:
            self.dist.barrier()
            return self.folder(step)
        devices = [self.dist.device] if self.dist.device.type == "cuda" else []
        fsdp = hasattr(model, "unshard") and self.dist.active
        with torch.random.fork_rng(devices=devices):
            if fsdp:  # the layers outside the blocks belong to the root's shard group
                model.unshard()
            try:
                return self._render(step, transformer, tensorboard)
            finally:
                if fsdp:
                    model.reshard()

    def _render(self, step: int, transformer: nn.Module, tensorboard) -> Path:
        from tsa.media.mp4 import to_uint8, write_mp4

        cfg, dev = self.cfg, self.dist.device
        vae, sched = self._parts()
        g = cfg.geometry
        if vae is not None:
            vae.to(dev)
        pipe = self.family.pipeline(None, None, vae, transformer, sched)
        if vae is None:  # FSDP2, rank > 0: latents only; the pipeline's frame and grid arithmetic from the geometry
            pipe.vae_scale_factor_temporal = g.vae_temporal_compression
            pipe.vae_scale_factor_spatial = g.vae_spatial_compression
        pipe.set_progress_bar_config(disable=True)
        was_training = transformer.training
        transformer.eval()
        folder = self.folder(step)
        tmp = folder.with_name(folder.name + ".tmp")
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        files = []
        # The transformer computes under autocast as in training; the VAE decodes in its own dtype,
        # under autocast only where the family allows a bf16 VAE (CogVideoX: yes; Wan: fp32).
        dtype = self.compute_dtype
        autocast_vae = dtype is not None and vae is not None and self.family.vae_dtype(dtype) == dtype
        try:
            with _autocast_call(transformer, "forward", dev.type, dtype), \
                    _autocast_call(vae, "decode", dev.type, dtype if autocast_vae else None), torch.no_grad():
                for i, prompt in enumerate(self.prompts):
                    frames = pipe(prompt_embeds=self.embeds[i:i + 1].to(dev),
                                  negative_prompt_embeds=self.negative.to(dev), num_frames=g.num_frames,
                                  height=g.height, width=g.width, num_inference_steps=cfg.train.validation_steps,
                                  guidance_scale=cfg.train.validation_guidance, **self.family.call_kwargs(True),
                                  generator=torch.Generator("cpu").manual_seed(cfg.train.validation_seed + i),
                                  output_type="np" if vae is not None else "latent").frames[0]
                    if self.dist.is_main:
                        video = to_uint8(np.asarray(frames))
                        name = f"{i:02d}_s{cfg.train.validation_seed + i}.mp4"
                        write_mp4(video, tmp / name, fps=self.family.default_fps)
                        files.append({"file": name, "prompt": prompt, "seed": cfg.train.validation_seed + i})
                        if tensorboard is not None:
                            pick = np.linspace(0, len(video) - 1, min(TB_FRAMES, len(video))).round().astype(int)
                            tensorboard.add_image(f"validation/{i:02d}", np.concatenate(list(video[pick]), axis=1),
                                                  step, dataformats="HWC")
        finally:
            transformer.train(was_training)
            del pipe
            if vae is not None:
                vae.to("cpu")  # until the next validation: the GPU is the training's
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        if self.dist.is_main:
            (tmp / DONE).write_text(json.dumps({"step": step, "videos": files}, indent=1))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.replace(folder)
        self.dist.barrier()
        return folder


@contextlib.contextmanager
def _autocast_call(module, method: str, device_type: str, dtype: Optional[torch.dtype]):
    """`module.<method>` runs under autocast to `dtype` for the duration (None or no module: as is)."""
    if module is None or dtype is None:
        yield
        return
    had = method in vars(module)
    own = vars(module).get(method)
    inner = getattr(module, method)

    def call(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return inner(*args, **kwargs)

    setattr(module, method, call)
    try:
        yield
    finally:
        if had:
            setattr(module, method, own)
        else:
            delattr(module, method)
