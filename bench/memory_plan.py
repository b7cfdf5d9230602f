"""Per-GPU memory plan of `tsa train` at the paper settings (train/memory_plan.py), for DDP and
FSDP2 and several micro-batches, and the largest micro-batch that fits 48 and 80 GB cards.
No GPU and no weights: CogVideoX-2B is built on the meta device.

    python bench/memory_plan.py [--config cogvideox2b_mtsa] [--workers 8]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import load_config  # noqa: E402
from train.memory_plan import GIB, plan_memory  # noqa: E402
from tsa_core import Projector  # noqa: E402

CARDS_GB = (48, 80)
SLACK_GIB = 2.0  # CUDA context and allocator slack, not in the plan


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="cogvideox2b_mtsa")
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args(argv)
    from diffusers import CogVideoXTransformer3DModel

    cfg = load_config(args.config, optional=["models.teacher.checkpoint"])
    with torch.device("meta"):
        transformer = CogVideoXTransformer3DModel()  # the default config is CogVideoX-2B
        c = transformer.config
        projector = Projector(c.num_attention_heads * c.attention_head_dim, cfg.align.projector_hidden,
                              cfg.models.teacher.dim)
    for strategy, workers in (("ddp", args.workers), ("fsdp2", 2), ("fsdp2", args.workers)):
        cfg.train.micro_batch = 1
        print(plan_memory(transformer, projector, cfg, strategy, workers).table())
        fits = {}
        for card in CARDS_GB:
            best = 0
            for b in range(1, 65):
                cfg.train.micro_batch = b
                if plan_memory(transformer, projector, cfg, strategy, workers).total / GIB + SLACK_GIB \
                        <= card * 1e9 / GIB:
                    best = b
            fits[card] = best
        print("  largest micro-batch (plan + %.0f GiB slack): %s\n" % (
            SLACK_GIB, ", ".join(f"{b} on {card} GB" for card, b in fits.items())))


if __name__ == "__main__":
    main()
