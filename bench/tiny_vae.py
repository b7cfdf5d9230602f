"""CPU cost of the tiny VAEs (models/cogvideox.py, models/wan.py) by their resnet count: one
clip of the tiny geometry encoded and its latent decoded, 1 torch thread, process CPU-seconds,
the two variants side by side in one process (best of --repeat).

    python bench/tiny_vae.py [--repeat 3]

Every tiny preprocess run encodes each clip once; every sampled or validation video decodes once.
"""
from __future__ import annotations

import argparse
import time

import torch


def cost(vae, x: torch.Tensor, repeat: int) -> tuple[float, float]:
    enc, dec = [], []
    with torch.inference_mode():
        for _ in range(repeat):
            t = time.process_time()
            z = vae.encode(x).latent_dist.sample()
            enc.append(time.process_time() - t)
            t = time.process_time()
            vae.decode(z)
            dec.append(time.process_time() - t)
    return min(enc), min(dec)


def main() -> None:
    from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan

    from tsa.configs import load_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"{'VAE':40s} {'encode CPU-s':>12s} {'decode CPU-s':>12s}")
    for name, config in (("tiny", "cogvideox"), ("tiny_wan21", "wan")):
        g = load_config(name).geometry
        x = torch.randn(1, 3, g.num_frames, g.height, g.width, generator=torch.Generator().manual_seed(0))
        for blocks in (1, 0):
            torch.manual_seed(0)
            if config == "cogvideox":
                vae = AutoencoderKLCogVideoX(block_out_channels=(16, 16, 16, 16), layers_per_block=blocks,
                                             norm_num_groups=4, latent_channels=16, sample_height=g.height,
                                             sample_width=g.width)
                label = f"CogVideoX layers_per_block={blocks}"
            else:
                vae = AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=blocks,
                                       temperal_downsample=[False, True, True])
                label = f"Wan num_res_blocks={blocks}"
            e, d = cost(vae.eval(), x, a.repeat)
            print(f"{label + f' ({g.num_frames}x{g.height}x{g.width})':40s} {e:12.2f} {d:12.2f}")


if __name__ == "__main__":
    main()
