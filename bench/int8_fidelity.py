"""Fidelity and size of `--teacher-dtype int8` against float16 teacher features.

Fidelity: mean KL(P_float16 || P_int8) of the tau-tempered correspondence distributions (Eq. 8),
over every query token and frame: exactly `tsa_core.tsa_loss(int8_features, float16_features)`,
i.e. how far the M-TSA target moves when the cache stores int8. Features at paper size
[3600, 768] on the 24 x 10 x 15 grid, two kinds:
  * structured: the synthetic teacher features of `tsa.testing.synthetic` (a fixed embedding per
    position, so every query has a sharp match in each frame, plus a moving blob and noise),
  * random: i.i.d. Gaussian (nearly flat distributions: a lower bound on the effect).
Size: bytes per clip of the whole sample (all members, tar headers included), written by the
real writer for both dtypes.

    python bench/int8_fidelity.py --clips 4 --tau 0.1
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tsa.configs import load_config
from tsa.shards.encode import dequantize_int8, quantize_int8
from tsa.shards.reader import iter_shard_paths
from tsa.testing.synthetic import make_synthetic_dataset, synthetic_sample
from tsa.core import tsa_loss


def mean_kl(features: np.ndarray, grid: tuple[int, int, int], tau: float) -> float:
    """KL(P_float16 || P_int8) of one clip's features [N, C], mean over queries and frames."""
    f16 = torch.from_numpy(features.astype(np.float16).astype(np.float32))[None]
    q, scale = quantize_int8(features.astype(np.float16))
    i8 = torch.from_numpy(dequantize_int8(q, scale))[None]
    return float(tsa_loss(i8, f16, grid, tau=tau))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--tau", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(2)

    cfg = load_config("cogvideox2b_mtsa", ["models.teacher.checkpoint=unused.pth"])
    grid = tuple(cfg.geometry.teacher_grid)
    n_tokens, dim = grid[0] * grid[1] * grid[2], cfg.models.teacher.dim
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    structured = [mean_kl(synthetic_sample(cfg, i, seed=0)[0]["teacher"], grid, args.tau) for i in range(args.clips)]
    random = [mean_kl(rng.standard_normal((n_tokens, dim)).astype(np.float32), grid, args.tau)
              for _ in range(args.clips)]
    print(f"features [{n_tokens}, {dim}], grid {grid}, tau {args.tau}, {args.clips} clips each "
          f"({time.perf_counter() - t0:.1f} s)")
    print(f"mean KL(P_fp16 || P_int8): structured {np.mean(structured):.3e} (max {np.max(structured):.3e}), "
          f"random {np.mean(random):.3e} (max {np.max(random):.3e})")

    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        for dtype in ("float16", "int8"):
            cfg.preprocess.teacher_dtype = dtype
            out = make_synthetic_dataset(Path(tmp) / dtype, cfg, n=2)
            sizes[dtype] = sum(p.stat().st_size for p in iter_shard_paths(out)) / 2
    teacher16 = n_tokens * dim * 2
    teacher8 = n_tokens * dim + n_tokens * 2
    print(f"teacher member bytes: float16 {teacher16:,}, int8 + scale {teacher8:,} ({teacher8 / teacher16:.3f}x)")
    print(f"bytes per clip (whole sample in the tar): float16 {sizes['float16']:,.0f}, int8 {sizes['int8']:,.0f} "
          f"({sizes['int8'] / sizes['float16']:.3f}x)")


if __name__ == "__main__":
    main()
