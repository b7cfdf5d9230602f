"""Per-GPU memory plan of `tsa train` at the paper settings (train/memory_plan.py), for DDP and
FSDP2 and several micro-batches, and the largest micro-batch that fits 48 and 80 GB cards.
No GPU and no weights: the transformer (CogVideoX 2B, 5B or 1.5-5B, Wan2.1 1.3B) is built on
the meta device.

    python bench/memory_plan.py [--model 2b|5b|1.5-5b|wan1.3b] [--config NAME] [--workers 8] [--lora-rank 64]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tsa.configs import load_config  # noqa: E402
from tsa.train.memory_plan import GIB, plan_memory  # noqa: E402
from tsa.core import Projector  # noqa: E402

CARDS_GB = (48, 80)  # RTX 6000 Ada / L40S "48 GB" and A100/H100 "80 GB" hold that many GiB
# diffusers' CogVideoXTransformer3DModel defaults are CogVideoX-2B; the 5B release differs in
# width, depth and positions (THUDM/CogVideoX-5b transformer/config.json).
ARCHITECTURES = {"2b": {}, "5b": {"num_attention_heads": 48, "num_layers": 42,
                                  "use_rotary_positional_embeddings": True}}
# CogVideoX1.5-5B (THUDM/CogVideoX1.5-5B): the 5B with temporal patches (docs/families.md).
ARCHITECTURES["1.5-5b"] = ARCHITECTURES["5b"] | {"patch_size_t": 2, "patch_bias": False, "sample_height": 300,
                                                 "sample_width": 300, "sample_frames": 81}
# Wan2.1-T2V-1.3B (diffusers' scripts/convert_wan_to_diffusers.py): a WanTransformer3DModel.
ARCHITECTURES["wan1.3b"] = {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128,
                            "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
                            "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True,
                            "qk_norm": "rms_norm_across_heads", "eps": 1e-6}
CLASSES = {"wan1.3b": "WanTransformer3DModel"}  # the others: CogVideoXTransformer3DModel
NAMES = {"2b": "CogVideoX-2B", "5b": "CogVideoX-5B", "1.5-5b": "CogVideoX1.5-5B", "wan1.3b": "Wan2.1-T2V-1.3B"}
CONFIGS = {"2b": "cogvideox2b_mtsa", "5b": "cogvideox5b_mtsa", "1.5-5b": "cogvideox15_5b_mtsa",
           "wan1.3b": "wan21_1.3b_mtsa"}
SLACK_GIB = 2.0  # CUDA context and allocator slack, not in the plan


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=None, help="default: the family's paper config (docs/families.md)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--model", choices=sorted(ARCHITECTURES), default="2b")
    ap.add_argument("--lora-rank", type=int, default=0, help="train.lora.rank (0: full fine-tune)")
    args = ap.parse_args(argv)
    import diffusers

    transformer_class = getattr(diffusers, CLASSES.get(args.model, "CogVideoXTransformer3DModel"))
    config = args.config or CONFIGS[args.model]
    cfg = load_config(config, [f"train.lora.rank={args.lora_rank}"], optional=["models.teacher.checkpoint"])
    with torch.device("meta"):
        transformer = transformer_class(**ARCHITECTURES[args.model])
        c = transformer.config
        projector = Projector(c.num_attention_heads * c.attention_head_dim, cfg.align.projector_hidden,
                              cfg.models.teacher.dim)
        if args.lora_rank:
            from tsa.models.lora import add_lora

            add_lora(transformer, cfg.train.lora, seed=0)
    n = sum(p.numel() for p in transformer.parameters())
    t = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    print(f"{NAMES[args.model]}: {n / 1e9:.2f}B parameters, {t / 1e6:.1f}M trainable; "
          f"projector {sum(p.numel() for p in projector.parameters()) / 1e6:.1f}M\n")
    setups = [("ddp", 1)] if args.workers == 1 else [("ddp", args.workers), ("fsdp2", 2), ("fsdp2", args.workers)]
    for strategy, workers in setups:
        cfg.train.micro_batch = 1
        print(plan_memory(transformer, projector, cfg, strategy, workers).table())
        fits = {}
        for card in CARDS_GB:
            best = 0
            for b in range(1, 65):
                cfg.train.micro_batch = b
                if plan_memory(transformer, projector, cfg, strategy, workers).total / GIB + SLACK_GIB <= card:
                    best = b
            fits[card] = best
        print("  largest micro-batch (plan + %.0f GiB slack): %s\n" % (
            SLACK_GIB, ", ".join(f"{b} on {card} GB" for card, b in fits.items())))


if __name__ == "__main__":
    main()
