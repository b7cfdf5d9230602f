"""A student family: everything tsa needs to know about one text-to-video model release.

Each family is one adapter file (models/cogvideox.py, models/wan.py) holding a subclass of
`StudentFamily`: which diffusers classes load it, which block output the projector reads, how
the transformer is called, its noise objective, how latents are normalised, how captions
become text embeddings, which pipeline samples it, and its tiny random-weight counterpart.
`models.family` in a config picks one; adding a family means one file here and a config.

Layouts used throughout: clean and noisy latents [B, C, F, H, W]; text [B, L, D]; block
outputs [B, F*H*W, width] in (frame, row, column) order.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from tsa.configs.schema import Config

FAMILIES = {"cogvideox": "tsa.models.cogvideox", "wan": "tsa.models.wan"}


class ModelError(ValueError):
    """The student model does not fit the config; the message names both values."""


class StudentFamily:
    name: str = ""
    transformer_class: str = ""  # diffusers class names
    vae_class: str = ""
    pipeline_class: str = ""
    text_encoder_class: str = ""  # a transformers class name
    default_guidance: float = 6.0  # `tsa sample` defaults of the release's own inference
    default_fps: int = 8
    sampler: str = ""  # recorded in samples.jsonl
    joint_text: bool = True  # text tokens run through the blocks with the video tokens (memory plan)

    # ---------------------------------------------------------------- loading
    @staticmethod
    def diffusers_class(name: str):
        return getattr(importlib.import_module("diffusers"), name)

    def load_transformer(self, ref: str, dtype: torch.dtype = torch.float32, low_cpu_mem_usage: bool = True):
        """The transformer from a hub id or a folder: a pipeline folder (subfolder `transformer`)
        or a transformer folder itself (e.g. RUN/checkpoint-N/transformer).

        `low_cpu_mem_usage` (accelerate) builds the model empty and fills it from the files: eight
        ranks on a node do not each hold a random copy and the loaded one at the same time."""
        cls = self.diffusers_class(self.transformer_class)
        kwargs = {"torch_dtype": dtype, "low_cpu_mem_usage": low_cpu_mem_usage}
        if _is_model_folder(ref):
            return cls.from_pretrained(ref, **kwargs)
        return cls.from_pretrained(ref, subfolder="transformer", **kwargs)

    def transformer_config(self, ref: str) -> dict:
        """config.json of the transformer at `ref` (pipeline or transformer folder, or hub id)."""
        import json

        if _is_model_folder(ref):
            return dict(json.loads((Path(ref) / "config.json").read_text()))
        return dict(self.diffusers_class(self.transformer_class).load_config(ref, subfolder="transformer"))

    def vae_dtype(self, requested: torch.dtype) -> torch.dtype:
        """The dtype the VAE runs in when `requested` (preprocess.dtype, --dtype) is asked for."""
        return requested

    def load_vae(self, ref: str, dtype: torch.dtype = torch.float32):
        return self.diffusers_class(self.vae_class).from_pretrained(ref, subfolder="vae",
                                                                    torch_dtype=self.vae_dtype(dtype))

    def vae_config(self, ref: str) -> dict:
        import json

        local = Path(ref) / "vae" / "config.json"
        if local.is_file():
            return dict(json.loads(local.read_text()))
        try:
            return dict(self.diffusers_class(self.vae_class).load_config(ref, subfolder="vae"))
        except Exception as e:  # offline, wrong id, no vae/ subfolder: say which config key
            raise FileNotFoundError(f"models.vae={ref}: cannot read vae/config.json ({type(e).__name__}: {e})") from None

    def load_text_encoder(self, ref: str, dtype: torch.dtype = torch.float32):
        cls = getattr(importlib.import_module("transformers"), self.text_encoder_class)
        # `dtype=` is the transformers>=4.56 spelling; .to() covers older versions too.
        return cls.from_pretrained(ref, subfolder="text_encoder", dtype=dtype).to(dtype)

    @staticmethod
    def load_tokenizer(ref: str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(ref, subfolder="tokenizer")

    # ---------------------------------------------------------------- the student forward
    def check_transformer(self, transformer, cfg: Config) -> None:
        """Raise ModelError if the transformer cannot take this config's latents and text."""
        raise NotImplementedError

    def width(self, transformer) -> int:
        """Channels of a block's video tokens."""
        c = transformer.config
        return c.num_attention_heads * c.attention_head_dim

    def blocks(self, transformer) -> nn.ModuleList:
        raise NotImplementedError

    def block_tokens(self, output) -> torch.Tensor:
        """A block's output -> its video tokens [B, F*H*W, width]."""
        raise NotImplementedError

    def conditioning(self, transformer, cfg: Config, device: torch.device) -> Any:
        """Per-run inputs of the forward that depend on the geometry only (rotary tables)."""
        return None

    def predict(self, transformer, noisy: torch.Tensor, text: torch.Tensor, timestep: torch.Tensor,
                conditioning: Any) -> torch.Tensor:
        """noisy [B, C, F, H, W], text [B, L, D], timestep [B] (the model's own scale) ->
        prediction [B, C, F, H, W]."""
        raise NotImplementedError

    def objective(self, scheduler_ref: str):
        """The training objective (models/objectives.py) from the release's scheduler config."""
        raise NotImplementedError

    # ---------------------------------------------------------------- preprocessing
    def latent_norm(self, vae_config: dict) -> tuple[list[float], list[float]]:
        """(scale [C], shift [C]): the transformer is trained on (z - shift) * scale of a VAE
        posterior sample z (CogVideoX: scaling_factor and 0; Wan: 1 / latents_std and latents_mean),
        the order train.loss.posterior_sample takes them in."""
        raise NotImplementedError

    def normalize_latent(self, z: torch.Tensor, vae_config: dict) -> torch.Tensor:
        """A VAE posterior sample [B, C, F, H, W] -> the latent the transformer is trained on.
        (With shift 0 this is bit for bit z * scaling_factor: x - 0.0 is x, -0.0 included.)"""
        scale, shift = (torch.tensor(v, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
                        for v in self.latent_norm(vae_config))
        return (z.float() - shift) * scale

    def scaling_factor(self, vae_config: dict) -> Optional[float]:
        """The one scalar latent scale (recorded in dataset.json) when the norm has no shift and the
        same scale on every channel; None when the family normalises per channel."""
        scale, shift = self.latent_norm(vae_config)
        return scale[0] if not any(shift) and len(set(scale)) == 1 else None

    def encode_text(self, tokenizer, encoder, captions: list[str], length: int, device: torch.device) -> torch.Tensor:
        """captions -> float32 text embeddings [B, length, D] as the release's pipeline computes them."""
        raise NotImplementedError

    # ---------------------------------------------------------------- sampling
    def sampling_scheduler(self, scheduler_ref: str):
        raise NotImplementedError

    def pipeline(self, tokenizer, text_encoder, vae, transformer, scheduler):
        cls = self.diffusers_class(self.pipeline_class)
        return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                   scheduler=scheduler)

    def call_kwargs(self, dynamic_cfg: bool) -> dict:
        """Family-specific keyword arguments of the pipeline call."""
        return {}

    def spatial_step(self, vae_config: dict, transformer_config: dict) -> tuple[int, int]:
        """(VAE spatial compression, transformer spatial patch): heights and widths are multiples
        of their product."""
        raise NotImplementedError

    def temporal_compression(self, vae_config: dict) -> int:
        raise NotImplementedError

    def text_length(self, transformer_config: dict) -> int:
        """Text length of the release's pipeline, when no run config says which."""
        raise NotImplementedError

    # ---------------------------------------------------------------- tiny
    def tiny_pipeline(self, cfg: Config, tokenizer):
        """All components at tiny size, random weights (the caller seeds the RNG)."""
        raise NotImplementedError


def _is_model_folder(ref: str) -> bool:
    """`ref` is a model's own folder (config.json, no model_index.json), not a pipeline folder."""
    path = Path(ref)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "model_index.json").is_file()


def student_family(name_or_cfg) -> StudentFamily:
    """The family adapter for `models.family` (a name or a Config)."""
    name = name_or_cfg if isinstance(name_or_cfg, str) else name_or_cfg.models.family
    if name not in FAMILIES:
        from tsa.configs.schema import ConfigError

        raise ConfigError(f"models.family={name!r}: expected one of {', '.join(FAMILIES)}")
    module = importlib.import_module(FAMILIES[name])
    return module.FAMILY


def family_of_class(class_name: Optional[str]) -> Optional[StudentFamily]:
    """The family whose transformer class is `class_name` (a config.json's _class_name), or None."""
    for name in FAMILIES:
        fam = student_family(name)
        if fam.transformer_class == class_name:
            return fam
    return None
