"""One video from a prompt: the student family's diffusers pipeline, built once per worker from a
plain-data RenderSpec, turned into mp4 bytes.

A video depends only on its prompt and its generator seed (`seed + video index`, drawn by a CPU
generator), never on which worker makes it or what that worker made before, so the bytes are the
same for any number of workers. On a CPU, torch's float results depend on its thread count, so a
CPU pipeline always runs with `CPU_THREADS` threads (on a GPU the threads do not touch the math).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

CPU_THREADS = 1


class RenderError(ValueError):
    """A model could not be loaded; the message names it and where it came from."""


@dataclass(frozen=True)
class Job:
    """One video to make."""

    file: str  # relative to the output folder, e.g. 00012_s42_v0.mp4 or videos/{prompt}-3.mp4
    index: int  # prompt index in the prompt set
    prompt: str  # the text the model sees
    generator_seed: int  # seed + video index


@dataclass(frozen=True)
class RenderSpec:
    """Everything a worker needs to build the pipeline and make a video: refs, not models."""

    family: str  # models.family name (cogvideox, wan)
    transformer: str  # the base transformer's ref (used when transformer_dir is None)
    vae: str
    text_encoder: str
    tokenizer: str
    scheduler: str
    transformer_dir: Optional[str]  # the fine-tuned transformer folder; None for a LoRA checkpoint
    lora_dir: Optional[str]  # RUN/checkpoint-N holding pytorch_lora_weights.safetensors, or None
    dtype: str  # bf16 | fp16 | fp32
    device: Optional[str]  # None: cuda if available (a Ray worker's own GPU), else cpu
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    dynamic_cfg: bool
    fps: int
    max_sequence_length: int
    cpu_offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False


TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _load(what: str, ref: str, fn):
    try:
        return fn()
    except (OSError, ValueError, RuntimeError) as e:
        raise RenderError(f"cannot load the {what} from {ref}: {e}") from None


def build_pipeline(spec: RenderSpec, torch_dtype):
    """The family's pipeline with the fine-tuned transformer (or the base one, for a LoRA
    checkpoint, with the adapters loaded) and its sampling scheduler, on the CPU."""
    from tsa.models.family import student_family

    family = student_family(spec.family)
    if spec.transformer_dir is None:
        transformer = _load("base transformer", spec.transformer,
                            lambda: family.load_transformer(spec.transformer, torch_dtype))
    else:
        transformer = _load("checkpoint transformer", spec.transformer_dir,
                            lambda: family.load_transformer(spec.transformer_dir, torch_dtype))
    vae = _load("VAE", spec.vae, lambda: family.load_vae(spec.vae, torch_dtype))
    text_encoder = _load("text encoder", spec.text_encoder,
                         lambda: family.load_text_encoder(spec.text_encoder, torch_dtype))
    tokenizer = _load("tokenizer", spec.tokenizer, lambda: family.load_tokenizer(spec.tokenizer))
    scheduler = _load("scheduler config", spec.scheduler, lambda: family.sampling_scheduler(spec.scheduler))
    pipe = family.pipeline(tokenizer, text_encoder, vae, transformer.eval(), scheduler)
    if spec.lora_dir is not None:
        _load("LoRA adapters", spec.lora_dir, lambda: pipe.load_lora_weights(spec.lora_dir))
    return pipe


class PipelineRenderer:
    """Builds the pipeline once (the expensive part), then `render(job)` -> mp4 bytes."""

    def __init__(self, spec: RenderSpec):
        import torch

        from tsa.models.family import student_family

        self.spec = spec
        self.family = student_family(spec.family)
        self.device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.pipe = build_pipeline(spec, getattr(torch, TORCH_DTYPES[spec.dtype]))
        if spec.cpu_offload:
            self.pipe.enable_model_cpu_offload(device=self.device)
        else:
            self.pipe.to(self.device)
        if spec.vae_slicing:
            self.pipe.vae.enable_slicing()
        if spec.vae_tiling:
            self.pipe.vae.enable_tiling()
        self.pipe.set_progress_bar_config(disable=True)

    def frames(self, job: Job) -> np.ndarray:
        """[F, H, W, 3] float in [0, 1] of `job`."""
        import torch

        s = self.spec
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(CPU_THREADS)
        try:
            with torch.inference_mode():
                return np.asarray(self.pipe(
                    prompt=job.prompt, num_frames=s.frames, height=s.height, width=s.width,
                    num_inference_steps=s.steps, guidance_scale=s.guidance, **self.family.call_kwargs(s.dynamic_cfg),
                    num_videos_per_prompt=1, max_sequence_length=s.max_sequence_length,
                    # A CPU generator gives the same initial noise on every device.
                    generator=torch.Generator(device="cpu").manual_seed(job.generator_seed), output_type="np",
                ).frames[0])
        finally:
            torch.set_num_threads(threads)

    def render(self, job: Job) -> bytes:
        """The mp4 (H.264, or MPEG-4 part 2 without x264) of `job` at the spec's fps."""
        from tsa.media.mp4 import to_uint8, write_mp4

        video = to_uint8(self.frames(job))
        with tempfile.TemporaryDirectory(prefix="tsa-render-") as tmp:
            path = Path(tmp) / "video.mp4"
            write_mp4(video, path, self.spec.fps)
            return path.read_bytes()


def timed_render(renderer, job: Job) -> tuple[bytes, float]:
    """(mp4 bytes, seconds) of one job."""
    start = time.perf_counter()
    data = renderer.render(job)
    return data, time.perf_counter() - start
