"""Throughput of `tsa preprocess` against a decode-only ceiling, on the same clips and cores.

Three Ray Data runs over the same generated clips, one Ray instance (its start-up is timed
apart), each consumed in the driver like the real run:
  1. decode:  decode_clip only (decord get_batch of the selected frames, crop, resize)
  2. prepare: the whole CPU stage (decode + teacher input + motion map + mask + preview)
  3. full:    the real pipeline (prepare -> VAE -> teacher -> T5 actor pools -> shard writer)
A short warm-up run first imports everything in the task workers. Each mode then runs on the
first quarter of the clips and on all of them; steady-state clips/s is the difference
(n - n/4) / (T(n) - T(n/4)), which cancels the fixed costs (actor start-up, model loading,
pipeline fill and drain, reported as "fixed s"); "overall" is n / T(n).

    python bench/preprocess.py --config tiny --clips 32 --width 640 --height 360 --frames 96
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def make_clips(root: Path, n: int, width: int, height: int, frames: int, fps: int) -> Path:
    """`n` clips of one size (moving shapes over texture, H.264) and an OpenVid-style CSV."""
    import csv

    from tsa.media.mp4 import write_mp4
    from tsa.testing.sample_clips import ClipSpec, render_clip

    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"clip_{i:04d}.mp4"
        pixels, caption = render_clip(ClipSpec(name, width, height, frames, fps), seed=i)
        write_mp4(pixels, root / "videos" / name, fps)
        rows.append({"video": name, "caption": caption})
    with open(root / "clips.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video", "caption"])
        w.writeheader()
        w.writerows(rows)
    return root


def _decode_only(row, cfg_dict):
    from tsa.configs.schema import config_from_dict
    from tsa.pipeline.decode import DecodeError, decode_clip

    try:
        clip = decode_clip(row["path"], config_from_dict(cfg_dict).geometry)
        return {"index": row["index"], "frames": clip.frames}
    except DecodeError:
        return {"index": row["index"], "frames": None}


def time_run(make_rows) -> float:
    """Seconds from asking for the rows to the last row (rows consumed like the real driver)."""
    t0 = time.perf_counter()
    for _ in make_rows():
        pass
    return time.perf_counter() - t0


def steady(run, n_small: int, n: int) -> dict[str, float]:
    """Run on the first `n_small` and on all `n` clips; the difference cancels the fixed costs
    (actor start-up, model loading, pipeline fill and drain): steady = (n - n_small) / (T - T_small)."""
    t_small, t_all = run(n_small), run(n)
    rate = (n - n_small) / (t_all - t_small) if t_all > t_small else float("nan")
    return {"t_small": t_small, "t_all": t_all, "steady": rate, "fixed": t_small - n_small / rate,
            "overall": n / t_all}


def stage_costs(cfg) -> dict[str, float]:
    """Seconds per clip of each model stage called in-process on one batch of its configured size
    (after a warm-up call), on the device the config gives it: explains the gap to the ceiling."""
    import numpy as np

    from tsa.pipeline.encoders import TeacherStage, TextStage, VaeStage

    g, p = cfg.geometry, cfg.preprocess
    t, h, w = g.teacher_input
    rng = np.random.default_rng(0)
    costs = {}
    for name, cls, res, make in (
            ("vae", VaeStage, p.vae, lambda b: {"frames": rng.integers(0, 256, (b, g.num_frames, g.height, g.width, 3),
                                                                         dtype=np.uint8)}),
            ("teacher", TeacherStage, p.teacher, lambda b: {"teacher_in": rng.standard_normal((b, 3, t, h, w),
                                                                                              dtype=np.float32)}),
            ("text", TextStage, p.text, lambda b: {"caption": np.array(["a red ball rolls across a table"] * b)})):
        stage = cls(cfg.to_dict())
        b = res.batch_size
        batch = lambda: {"ok": np.ones(b, bool), "key": np.array([f"k{i}" for i in range(b)]), **make(b)}  # noqa: E731
        stage(batch())
        t0 = time.perf_counter()
        stage(batch())
        costs[name] = (time.perf_counter() - t0) / b
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("-o", "--override", action="append", default=[])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--keep", type=Path, default=None, help="reuse/keep the generated clips in this folder")
    args = ap.parse_args()

    import ray

    from tsa.configs import load_config
    from tsa.models.tiny import materialize_tiny
    from tsa.pipeline.run import build_dataset, configure_ray_data, prepare_dataset, write_rows
    from tsa.pipeline.inputs import list_clips

    cfg = load_config(args.config, args.override)
    if cfg.models.vae == "tiny":
        materialize_tiny(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="tsa-bench-"))
    src = args.keep or tmp / "clips"
    t = time.perf_counter()
    if not (src / "clips.csv").exists():
        make_clips(src, args.clips, args.width, args.height, args.frames, args.fps)
    print(f"clips: {args.clips} x {args.width}x{args.height}, {args.frames} frames at {args.fps} fps "
          f"(made in {time.perf_counter() - t:.1f} s); config {args.config}; Ray num_cpus={args.num_cpus}")

    t = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    print(f"Ray start-up: {time.perf_counter() - t:.2f} s")
    configure_ray_data()
    try:
        items = list_clips(src)[:args.clips]
        results = {}
        time_run(lambda: prepare_dataset(items[:4], cfg).iter_rows())  # warm-up: imports in the task workers

        def decode_run(k: int) -> float:
            rows = [{"index": it.index, "path": it.path} for it in items[:k]]
            return time_run(lambda: ray.data.from_items(rows, override_num_blocks=k).map(
                _decode_only, fn_kwargs={"cfg_dict": cfg.to_dict()}, num_cpus=cfg.preprocess.decode.num_cpus
            ).iter_rows())

        def full_run(k: int) -> float:
            out = tmp / f"out{k}"
            out.mkdir()
            t0 = time.perf_counter()
            write_rows(out, build_dataset(items[:k], cfg).iter_rows(), items[:k], cfg)
            return time.perf_counter() - t0

        small = max(1, args.clips // 4)
        results["decode"] = steady(decode_run, small, len(items))
        results["prepare"] = steady(lambda k: time_run(lambda: prepare_dataset(items[:k], cfg).iter_rows()),
                                    small, len(items))
        results["full"] = steady(full_run, small, len(items))
    finally:
        ray.shutdown()
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    import torch

    torch.set_num_threads(1)  # as in the actors on CPU
    costs = stage_costs(cfg)
    print("model stages in-process, 1 thread: " + ", ".join(f"{k} {v:.3f} s/clip" for k, v in costs.items()))
    ceiling = results["decode"]["steady"]
    print(f"{'run':8} {'T(' + str(small) + ') s':>9} {'T(' + str(len(items)) + ') s':>9} {'fixed s':>8} "
          f"{'steady clips/s':>15} {'overall clips/s':>16} {'steady vs decode':>17}")
    for name, r in results.items():
        print(f"{name:8} {r['t_small']:>9.2f} {r['t_all']:>9.2f} {r['fixed']:>8.2f} {r['steady']:>15.2f} "
              f"{r['overall']:>16.2f} {r['steady'] / ceiling:>16.2f}x")


if __name__ == "__main__":
    main()
