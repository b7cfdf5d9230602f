"""Throughput of `tsa sample --workers N` for N = 1..8 on fake GPUs: the real driver (`sample()`:
job dealing, Ray actors, the mp4 bytes sent back and written under a temporary name, the
samples.jsonl line per video, the plan and eval.csv) with stand-in pipelines that sleep a fixed
time per video and return fixed bytes, so only the tool's own overhead can cost throughput.

    python bench/sample_scaling.py --workers 1,2,4,8 --videos-per-worker 24 --seconds 0.5

N = 1 runs in this process (as `tsa sample` does); N > 1 on a local Ray declaring 8 GPUs (one
per actor; the stand-ins run on the CPU), after one untimed warm-up run. Per N it prints: the steady rate (videos finished after
the last worker was ready, less one in-flight video per worker, over the time from then to the
last video), that rate over N times the one-worker rate, which must be >= 0.9 (exit 1
otherwise), the steady rate over the ideal N / seconds, and the wall rate (all videos over the
whole call, Ray actor start included).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


class SleepPipeline:
    """Stand-in for a GPU pipeline: `seconds` per video, `size` bytes of mp4 back."""

    def __init__(self, spec, seconds: float, size: int):
        self.seconds, self.data = seconds, bytes(size)

    def render(self, job) -> bytes:
        time.sleep(self.seconds)
        return self.data


class Clock:
    """The progress-bar interface of sample(), recording when workers are ready and videos done."""

    def __init__(self):
        self.ready_at, self.done_at = [], []

    def start(self, total: int, workers: int) -> None:
        pass

    def ready(self) -> None:
        self.ready_at.append(time.perf_counter())

    def advance(self) -> None:
        self.done_at.append(time.perf_counter())


def run(n: int, videos: int, seconds: float, size: int, ckpt: Path, work: Path) -> dict:
    import functools

    from tsa.evaluate.sample import SampleOptions, sample

    out = work / f"out{n}"
    clock = Clock()
    start = time.perf_counter()
    sample(SampleOptions(checkpoint=ckpt, out=out, benchmark="videophy", limit=videos, steps=2, dtype="fp32",
                         workers=n), log=lambda _: None, bar=clock,
           factory=functools.partial(SleepPipeline, seconds=seconds, size=size))
    end = time.perf_counter()
    assert len(clock.done_at) == videos and len(list(out.glob("*.mp4"))) == videos
    ready = max(clock.ready_at)
    after = sum(t > ready for t in clock.done_at) - n
    shutil.rmtree(out)
    return {"steady": after / (clock.done_at[-1] - ready), "wall": videos / (end - start), "seconds": end - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,3,4,5,6,7,8", help="comma-separated worker counts")
    ap.add_argument("--videos-per-worker", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=0.5, help="stand-in seconds per video (a real one: 60-120)")
    ap.add_argument("--mb", type=float, default=1.5, help="bytes per video sent back (MB; a 49x480x720 mp4 is ~1-2)")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]

    work = Path(tempfile.mkdtemp(prefix="tsa-sample-scaling-"))
    os.environ.setdefault("TSA_CACHE", str(work / "cache"))
    import ray
    import yaml

    from tsa.configs import load_config
    from tsa.models.tiny import resolve_tiny

    try:
        cfg = load_config("tiny")  # only the run's config files are read: the stand-ins load nothing
        base = Path(resolve_tiny(load_config("tiny")).models.student)
        shutil.copytree(base / "transformer", work / "run" / "checkpoint-1" / "transformer")
        (work / "run" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        ckpt = work / "run" / "checkpoint-1"
        size = int(args.mb * 1e6)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; stand-in {args.seconds} s and "
              f"{args.mb} MB per video, {args.videos_per_worker} videos per worker")
        results = {}
        if max(counts) > 1:
            ray.init(address="local", num_cpus=min(os.cpu_count() or 2, 2), num_gpus=max(counts),
                     include_dashboard=False, log_to_driver=False)
            run(max(counts), 2 * max(counts), args.seconds, size, ckpt, work)  # warm-up: Ray's own start-up work
        for n in counts:
            results[n] = run(n, n * args.videos_per_worker, args.seconds, size, ckpt, work)
        one = results[counts[0]]["steady"] / counts[0]
        print(f"{'N':>2}  {'videos':>6}  {'steady videos/s':>15}  {'/ (N x one)':>11}  {'/ ideal':>7}  "
              f"{'wall videos/s':>13}  {'wall s':>6}")
        ok = True
        for n, r in results.items():
            ratio = r["steady"] / (n * one)
            ok &= ratio >= 0.9
            print(f"{n:>2}  {n * args.videos_per_worker:>6}  {r['steady']:>15.2f}  {ratio:>11.3f}  "
                  f"{r['steady'] * args.seconds / n:>7.3f}  {r['wall']:>13.2f}  {r['seconds']:>6.1f}")
        print(f"ideal: N / {args.seconds} s = {1 / args.seconds:.2f} videos/s per worker; load average now "
              f"{os.getloadavg()[0]:.1f}")
        print("PASS: every N >= 0.9 N x the one-worker rate" if ok else "FAIL: some N < 0.9 N x the one-worker rate")
        sys.exit(0 if ok else 1)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
