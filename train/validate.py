"""Validation videos during training: every `train.validate_every` optimizer steps, the same
few prompts with the same seeds and a few denoising steps, so that videos of different steps
compare. Written to RUN/validation/step-N/ (mp4s + prompts.json) and to TensorBoard as frame
strips (TensorBoard's own video summary needs moviepy, which tsa does not depend on).

The prompts are embedded once per run with the T5 encoder (on the GPU when there is one, then
freed before the student loads) by rank 0, into RUN/validation/prompt_embeds.safetensors;
VAE and scheduler are loaded at the first validation. Every rank generates the same videos
(FSDP2 needs all ranks in each forward; under DDP it keeps the ranks in step), rank 0 writes.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
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

    def _parts(self):
        """VAE and scheduler, loaded once (the transformer is the one being trained)."""
        if self._pipe_parts is None:
            m = self.cfg.models
            vae = self.family.load_vae(m.vae).to(self.dist.device).eval()
            vae.requires_grad_(False)
            if self.dist.device.type == "cuda":  # 49 x 480 x 720 decodes in ~19 GB untiled
                vae.enable_tiling()
            sched = self.family.sampling_scheduler(m.scheduler)
            self._pipe_parts = (vae, sched)
        return self._pipe_parts

    def __call__(self, step: int, model: nn.Module, transformer: nn.Module, tensorboard=None) -> Path:
        """Collective. Render every prompt with `transformer` (the student's, inside `model`, the
        wrapped module); rank 0 writes RUN/validation/step-N/. The training RNG is left as it was."""
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
        pipe = self.family.pipeline(None, None, vae, transformer, sched)
        pipe.set_progress_bar_config(disable=True)
        g = cfg.geometry
        was_training = transformer.training
        transformer.eval()
        folder = self.folder(step)
        tmp = folder.with_name(folder.name + ".tmp")
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        files = []
        try:
            for i, prompt in enumerate(self.prompts):
                bf16 = dev.type == "cuda" and cfg.train.mixed_precision == "bf16"
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16), torch.no_grad():
                    frames = pipe(prompt_embeds=self.embeds[i:i + 1].to(dev),
                                  negative_prompt_embeds=self.negative.to(dev), num_frames=g.num_frames,
                                  height=g.height, width=g.width, num_inference_steps=cfg.train.validation_steps,
                                  guidance_scale=cfg.train.validation_guidance, **self.family.call_kwargs(True),
                                  generator=torch.Generator("cpu").manual_seed(cfg.train.validation_seed + i),
                                  output_type="np").frames[0]
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
        if self.dist.is_main:
            (tmp / DONE).write_text(json.dumps({"step": step, "videos": files}, indent=1))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.replace(folder)
        self.dist.barrier()
        return folder
