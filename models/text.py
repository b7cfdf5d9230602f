"""The frozen text encoder of a student family: captions -> embeddings [B, L, D] computed as the
family's own pipeline computes them (models/<family>.py). Preprocessing runs it in a Ray stage
(pipeline/encoders.py), training runs it once for the validation prompts (train/validate.py)."""
from __future__ import annotations

import numpy as np
import torch

from tsa.configs.schema import Config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def encoder_device(num_gpus: float) -> torch.device:
    return torch.device("cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu")


def encoder_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """preprocess.dtype on GPU; float32 on CPU (bf16 matmuls on CPU are slow and no smaller in RAM that matters)."""
    if cfg.preprocess.dtype not in DTYPES:
        raise ValueError(f"preprocess.dtype={cfg.preprocess.dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[cfg.preprocess.dtype] if device.type == "cuda" else torch.float32


class TextEncoder:
    """caption -> text float32 [B, L, D]: the family's text encoder (T5 for CogVideoX, UMT5 for
    Wan) over L = geometry.text_shape[0] tokens, on `device` in `encoder_dtype`."""

    def __init__(self, cfg: Config, device: torch.device):
        from tsa.models.family import student_family

        self.family = student_family(cfg)
        self.device = device
        self.tokenizer = self.family.load_tokenizer(cfg.models.tokenizer)
        encoder = self.family.load_text_encoder(cfg.models.text_encoder, encoder_dtype(cfg, device))
        self.encoder = encoder.to(device).eval().requires_grad_(False)
        self.shape = tuple(cfg.geometry.text_shape)

    def encode(self, captions: list[str]) -> np.ndarray:
        """captions -> float32 [B, L, D]."""
        out = self.family.encode_text(self.tokenizer, self.encoder, captions, self.shape[0], self.device)
        out = out.float().cpu().numpy()
        if tuple(out.shape[1:]) != self.shape:
            raise RuntimeError(f"text encoder output {tuple(out.shape[1:])} != config geometry.text_shape "
                               f"{self.shape}: models.text_encoder does not match geometry.text_dim")
        return out
