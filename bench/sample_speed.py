"""Time `tsa sample` pieces: pipeline build, seconds per video (tiny models, CPU), mp4 writing.

    python bench/sample_speed.py --videos 4 --steps 2
    python bench/sample_speed.py --videos 4 --steps 50 --mp4-frames 49 --mp4-size 480 720

The tiny run (random weights) measures the tool's own overhead around diffusers; the mp4 row
measures the encoder at paper size on a synthetic moving gradient. Prints one line per number.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--mp4-frames", type=int, default=49)
    ap.add_argument("--mp4-size", type=int, nargs=2, default=[480, 720])
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tsa-sample-bench-"))
    os.environ.setdefault("TSA_CACHE", str(work / "cache"))
    import numpy as np
    import torch
    import yaml

    from tsa.configs import load_config
    from tsa.models.tiny import resolve_tiny
    from tsa.media.mp4 import write_mp4
    from tsa.evaluate.render import RenderSpec, build_pipeline
    from tsa.evaluate.sample import SampleOptions, sample
    from tsa.evaluate.samples_log import read_samples

    try:
        cfg = load_config("tiny")
        base = Path(resolve_tiny(load_config("tiny")).models.student)
        run = work / "run"
        shutil.copytree(base / "transformer", run / "checkpoint-1" / "transformer")
        (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        prompts = work / "prompts.txt"
        prompts.write_text("".join(f"a ball rolls across table number {i}\n" for i in range(args.videos)))
        from tsa.evaluate.render import CPU_THREADS

        print(f"torch threads while sampling on the CPU: {CPU_THREADS} (evaluate/render.py)")

        t = time.perf_counter()
        g = cfg.geometry
        spec = RenderSpec(cfg.models.family, *(str(base),) * 5, transformer_dir=str(base / "transformer"),
                          lora_dir=None, dtype="fp32", device="cpu", frames=g.num_frames, height=g.height,
                          width=g.width, steps=args.steps, guidance=6.0, dynamic_cfg=True, fps=8,
                          max_sequence_length=g.text_length)
        build_pipeline(spec, torch.float32)
        print(f"pipeline build (tiny, fp32): {time.perf_counter() - t:.2f} s")

        t = time.perf_counter()
        out = work / "out"
        sample(SampleOptions(checkpoint=run / "checkpoint-1", prompts=prompts, out=out, steps=args.steps),
               log=lambda _: None)
        total = time.perf_counter() - t
        secs = [r["seconds"] for r in read_samples(out)]
        print(f"tiny sample, {args.videos} videos of {g.num_frames}x{g.height}x{g.width}, {args.steps} steps: "
              f"{total:.2f} s total, median {statistics.median(secs):.2f} s/video (first {secs[0]:.2f} s)")

        t = time.perf_counter()
        sample(SampleOptions(checkpoint=run / "checkpoint-1", prompts=prompts, out=out, steps=args.steps),
               log=lambda _: None)
        print(f"resume with everything done: {time.perf_counter() - t:.2f} s")

        f, (h, w) = args.mp4_frames, args.mp4_size
        ti, yi, xi = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij")
        clip = np.stack([(xi + 8 * ti) % 256, (yi + 4 * ti) % 256, np.full_like(xi, 128)], -1).astype(np.uint8)
        times = []
        for i in range(3):
            t = time.perf_counter()
            write_mp4(clip, work / f"m{i}.mp4", fps=8)
            times.append(time.perf_counter() - t)
        size = (work / "m0.mp4").stat().st_size / 1e6
        print(f"write_mp4 {f}x{h}x{w}: median {statistics.median(times):.2f} s ({size:.2f} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
