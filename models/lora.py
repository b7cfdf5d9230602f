"""LoRA adapters (peft, through diffusers' adapter API) on the student transformer.

With `train.lora.rank` > 0 the base transformer is frozen and only the adapters (and the
projector, trained fully) get gradients and AdamW state. A checkpoint then holds the adapters
in diffusers' LoRA format, `pytorch_lora_weights.safetensors` with keys
`transformer.<module>.lora_A.weight` / `.lora_B.weight` and the adapter config in its
metadata, which the family pipeline's `load_lora_weights(checkpoint)` (e.g. CogVideoXPipeline,
WanPipeline) takes as is.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tsa.configs.schema import LoraConfig

ADAPTER = "default"  # peft's adapter name inside the training module
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def lora_alpha(cfg: LoraConfig) -> float:
    return cfg.alpha if cfg.alpha > 0 else float(cfg.rank)


def peft_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.rank, lora_alpha=lora_alpha(cfg), lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), init_lora_weights=True)


def add_lora(transformer: nn.Module, cfg: LoraConfig, seed: int) -> None:
    """Freeze the transformer and add the adapters (in place). lora_A is drawn from its own seeded
    RNG, lora_B starts at zero, so the adapted model starts equal to the base."""
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            transformer.add_adapter(peft_config(cfg), adapter_name=ADAPTER)
        except ValueError as e:  # e.g. a target module name the model does not have
            from tsa.configs.schema import ConfigError

            raise ConfigError(f"train.lora.target_modules={list(cfg.target_modules)}: {e}") from None
    for p in transformer.parameters():  # peft creates them in the base layer's dtype
        if p.requires_grad:
            p.data = p.data.float()


def is_lora_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def to_diffusers(student_weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Student state-dict entries `transformer.<m>.lora_A.default.weight` -> the keys
    `save_lora_weights(transformer_lora_layers=...)` takes: `<m>.lora_A.weight`."""
    out = {}
    for k, v in student_weights.items():
        if k.startswith("transformer.") and is_lora_key(k):
            out[k[len("transformer."):].replace(f".{ADAPTER}.", ".")] = v.contiguous()
    return out


def from_diffusers(lora_file: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse, from the saved file's keys (`transformer.<m>.lora_A.weight`) to Student keys."""
    out = {}
    for k, v in lora_file.items():
        for part in (".lora_A.", ".lora_B."):
            if part in k:
                out[k.replace(part, f"{part}{ADAPTER}.")] = v
    return out


def save_lora(folder: Path, student_weights: dict[str, torch.Tensor], cfg: LoraConfig, family) -> None:
    """`folder/pytorch_lora_weights.safetensors` in diffusers' format, adapter config included,
    written by the family's pipeline class (models/family.py) so that its load_lora_weights takes it."""
    pipeline_class = family.diffusers_class(family.pipeline_class)

    meta = peft_config(cfg).to_dict()
    meta["target_modules"] = sorted(meta["target_modules"])
    # rank_pattern and alpha_pattern (empty) too: diffusers 0.35-0.37 read them unconditionally
    # when they load the adapters (a KeyError without them); newer and older releases default them.
    meta = {k: v for k, v in meta.items()
            if k in ("r", "lora_alpha", "lora_dropout", "target_modules", "rank_pattern", "alpha_pattern")}
    pipeline_class.save_lora_weights(str(folder), transformer_lora_layers=to_diffusers(student_weights),
                                        weight_name=LORA_WEIGHTS, transformer_lora_adapter_metadata=meta)
