"""Teacher stage throughput: preprocess_frames and teacher_features on random clips.

Uses a random-weight checkpoint of the configured size (the architecture, not the weights,
sets the cost). Prints one line per stage with seconds per clip and clips/s.

    python bench/teacher_throughput.py --config tiny --batch 2 --repeats 5
    python bench/teacher_throughput.py --config cogvideox2b_mtsa --batch 1 --repeats 1
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tsa.configs import load_config
from tsa.models.teacher import load_teacher, preprocess_frames, save_random_checkpoint, teacher_features


def _timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    cfg = load_config(args.config, ["models.teacher.checkpoint=random.safetensors"])
    g, tc = cfg.geometry, cfg.models.teacher
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    with tempfile.TemporaryDirectory() as tmp:
        tc.checkpoint = str(save_random_checkpoint(tc, g, Path(tmp) / "teacher.safetensors"))
        model = load_teacher(tc, g, device=device, dtype=dtype)

    frames = torch.randint(0, 256, (args.batch, g.num_frames, g.height, g.width, 3), dtype=torch.uint8)
    frames = frames.to(device)
    _, normalized = preprocess_frames(frames, g)

    t_pre = _timed(lambda: preprocess_frames(frames, g), args.repeats, sync)
    t_feat = _timed(lambda: teacher_features(model, normalized), args.repeats, sync)
    print(f"config={args.config} device={device} dtype={args.dtype} batch={args.batch} threads={torch.get_num_threads()} "
          f"clip={g.num_frames}x{g.height}x{g.width} teacher_input={g.teacher_input} grid={g.teacher_grid} dim={tc.dim}")
    for name, sec in (("preprocess_frames", t_pre), ("teacher_features", t_feat)):
        print(f"{name:18s} {sec / args.batch:8.3f} s/clip  {args.batch / sec:8.2f} clips/s")


if __name__ == "__main__":
    main()
