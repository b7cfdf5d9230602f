"""Trainer timing: (1) one optimizer step split into data wait, forward, backward and
optimizer on a config's student (tiny on a CPU); (2) the samples/s the data loader delivers
from synthetic shards at a config's array sizes (paper size: ~9.7 MB a sample), to set
against what one GPU consumes (about 1 sample/s for CogVideoX-2B on an H100).

    python bench/train_step.py step --config tiny --steps 20
    python bench/train_step.py loader --config cogvideox2b_mtsa --samples 24 --workers 0,2

Prints one line per measurement; docs/benchmarks.md records them with the machine.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_step(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    from tsa.configs import load_config
    from tsa.models.tiny import resolve_tiny
    from tsa.testing.synthetic import make_synthetic_dataset
    from tsa.train.data import RankLoader
    from tsa.train.dataset_check import open_dataset
    from tsa.models.family import student_family
    from tsa.models.student import build_student
    from tsa.train.optim import build_lr_scheduler, build_optimizer
    from tsa.train.step import StepContext, micro_batch_losses

    extra = [] if args.config == "tiny" else ["models.teacher.checkpoint=unused"]
    cfg = load_config(args.config, [*extra, *args.override])
    with tempfile.TemporaryDirectory() as tmp:
        n = max(2 * cfg.train.global_batch, cfg.train.data_streams * cfg.preprocess.samples_per_shard)
        shards = make_synthetic_dataset(Path(tmp) / "ds", cfg, n=n, seed=0)
        cfg = resolve_tiny(cfg)
        info = open_dataset(shards)
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        torch.manual_seed(cfg.seed)
        model = build_student(cfg).to(device)
        opt = build_optimizer(model, cfg.train)
        sched = build_lr_scheduler(opt, cfg.train)
        loader = RankLoader(info, cfg, 0, 1, pin_memory=device.type == "cuda")
        family = student_family(cfg)
        ctx = StepContext(cfg, family.objective(cfg.models.scheduler), device, None,
                          family.conditioning(model.transformer, cfg, device))
        accum = cfg.train.global_batch // cfg.train.micro_batch
        rows = []
        for step in range(args.steps + 1):
            t = {"data": 0.0, "forward": 0.0, "backward": 0.0}
            t0 = time.perf_counter()
            for _ in range(accum):
                a = time.perf_counter()
                batch = loader.next_microbatch()
                b = time.perf_counter()
                losses = micro_batch_losses(model, batch, ctx)
                _sync(device)
                c = time.perf_counter()
                (losses["loss"] / accum).backward()
                _sync(device)
                d = time.perf_counter()
                t["data"] += b - a
                t["forward"] += c - b
                t["backward"] += d - c
            a = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            t["optimizer"] = time.perf_counter() - a
            t["step"] = time.perf_counter() - t0
            if step > 0:  # step 0 warms up allocators and the DataLoader
                rows.append(t)
        loader.close()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"step config={args.config} device={device} threads={torch.get_num_threads()} "
          f"global_batch={cfg.train.global_batch} micro_batch={cfg.train.micro_batch} steps={len(rows)} (median s/step): "
          + "  ".join(f"{k} {v:.4f}" for k, v in med.items())
          + f"  -> {cfg.train.global_batch / med['step']:.2f} samples/s, data wait {med['data'] / med['step']:.1%}")


def time_loader(info, config: str, streams: int, workers: int, n: int, overrides) -> tuple[float, object, int]:
    """(samples/s, cfg, DataLoader workers) of `train.data.RankLoader` reading `n` samples of
    `info` with `streams` data streams; start-up (worker processes, first buffer fill) is not counted."""
    from tsa.configs import load_config
    from tsa.train.data import RankLoader

    cfg = load_config(config, [f"train.data_streams={streams}", f"train.num_workers={workers}",
                               "models.teacher.checkpoint=unused", *overrides])
    loader = RankLoader(info, cfg, 0, 1)
    loader.next_item()
    t = time.perf_counter()
    for _ in range(n):
        loader.next_item()
    dt = time.perf_counter() - t
    loader.close()
    return n / dt, cfg, loader.workers


def bench_loader(args) -> None:
    from tsa.configs import load_config
    from tsa.testing.synthetic import make_synthetic_dataset
    from tsa.train.dataset_check import open_dataset

    base = load_config(args.config, [f"preprocess.samples_per_shard={args.samples_per_shard}",
                                     "models.teacher.checkpoint=unused", *args.override])
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t = time.perf_counter()
        shards = make_synthetic_dataset(Path(tmp) / "ds", base, n=args.samples, seed=0)
        info = open_dataset(shards)
        mb = sum(p.stat().st_size for p in (Path(shards) / "shards").glob("*.tar")) / 2 ** 20
        print(f"loader: wrote {args.samples} samples in {len(info.shards)} shards ({mb / args.samples:.1f} MB a "
              f"sample) in {time.perf_counter() - t:.1f} s")
        streams = len(info.shards)
        n = args.samples * args.epochs
        for workers in [int(w) for w in args.workers.split(",")]:
            rate, cfg, used = time_loader(info, args.config, streams, workers, n, args.override)
            print(f"loader config={args.config} align.loss={cfg.align.loss} num_workers={used} "
                  f"streams={streams}: {rate:.1f} samples/s ({n} samples, page cache warm)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("step")
    s.add_argument("--config", default="tiny")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    s.add_argument("-o", "--override", action="append", default=[])
    lo = sub.add_parser("loader")
    lo.add_argument("--config", default="cogvideox2b_mtsa")
    lo.add_argument("--samples", type=int, default=24)
    lo.add_argument("--samples-per-shard", type=int, default=6)
    lo.add_argument("--epochs", type=int, default=2)
    lo.add_argument("--workers", default="0,2")
    lo.add_argument("--tmp", default=None, help="where to write the shards (default: the system temp dir)")
    lo.add_argument("-o", "--override", action="append", default=[])
    args = p.parse_args()
    bench_step(args) if args.what == "step" else bench_loader(args)


if __name__ == "__main__":
    main()
