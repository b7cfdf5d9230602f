"""Extra peak memory and time of M-TSA against dense TSA, forward + backward, fp32.

Each variant runs in its own subprocess, so peaks do not mix:
  dense_plain  the plain autograd formulation with full [B, N, N] matrices (what a
               straightforward dense TSA costs)
  gather_plain the plain autograd formulation on gathered query rows ([B, M, N] matrices)
  dense        tsa_core.tsa_loss with every token a query (chunked custom backward)
  mtsa         tsa_core.tsa_loss with query_index (chunked custom backward)
Extra peak = peak during forward+backward minus the level before it, with the inputs
allocated and one untimed warm-up step done: on CPU VmHWM from /proc/self/status, reset
to the current RSS (after malloc_trim) through /proc/self/clear_refs; on CUDA
torch.cuda.max_memory_allocated. The student's .grad is part of the extra peak.

    python bench/mtsa_memory.py            # paper size: B=4, grid 24x10x15, C=768, k=20%
    python bench/mtsa_memory.py --small    # a quick run

Times: median over rounds of each subprocess's median step, and the fastest step seen;
memory: median over rounds.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

VARIANTS = ("dense_plain", "gather_plain", "dense", "mtsa")


def vm_hwm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def plain_tsa(student, teacher, grid, tau, query_index):
    """Straightforward autograd TSA: the reference a dense implementation would use."""
    f, h, w = grid

    def log_probs(x):
        e = F.normalize(x, dim=-1)
        q = e if query_index is None else torch.gather(
            e, 1, query_index.unsqueeze(-1).expand(-1, -1, e.shape[-1]))
        return torch.log_softmax((q @ e.transpose(1, 2)).unflatten(-1, (f, h * w)) / tau, dim=-1)

    log_ps = log_probs(student)
    with torch.no_grad():
        log_pt = log_probs(teacher)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()


def make_inputs(batch, grid, dim, ratio, device):
    from tsa.core import mask_to_index, topk_mask

    n = grid[0] * grid[1] * grid[2]
    student = torch.randn(batch, n, dim, device=device, requires_grad=True)
    teacher = torch.randn(batch, n, dim, device=device)
    query_index = mask_to_index(topk_mask(torch.rand(batch, *grid, device=device), ratio))
    return student, teacher, query_index


def step(variant, student, teacher, query_index, grid, tau, chunk):
    from tsa.core import tsa_loss

    if variant == "dense_plain":
        loss = plain_tsa(student, teacher, grid, tau, None)
    elif variant == "gather_plain":
        loss = plain_tsa(student, teacher, grid, tau, query_index)
    elif variant == "dense":
        loss = tsa_loss(student, teacher, grid, tau, None, chunk)
    else:
        loss = tsa_loss(student, teacher, grid, tau, query_index, chunk)
    loss.backward()
    if student.is_cuda:
        torch.cuda.synchronize()


def reset_cpu_peak() -> int:
    """Return freed heap pages to the OS, reset VmHWM to the current RSS, return it."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return vm_hwm_bytes()


def worker(args) -> dict:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    grid = tuple(args.grid)
    cuda = device.type == "cuda"
    student, teacher, query_index = make_inputs(args.batch, grid, args.dim, args.ratio, device)
    # One untimed step first: code pages, thread pools and BLAS buffers it brings in stay
    # resident for every later step, so they are not counted as this variant's peak.
    step(args.variant, student, teacher, query_index, grid, args.tau, args.chunk)
    student.grad = None
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = reset_cpu_peak()
    times = []
    for _ in range(args.repeats):
        student.grad = None
        t0 = time.perf_counter()
        step(args.variant, student, teacher, query_index, grid, args.tau, args.chunk)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else vm_hwm_bytes()
    return {"variant": args.variant, "extra_peak_bytes": peak - base,
            "seconds": statistics.median(times), "min_seconds": min(times), "all_seconds": times,
            "queries_per_sample": int(query_index.shape[1]), "tokens": student.shape[1]}


def run_variant(args, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--batch", str(args.batch),
           "--grid", *map(str, args.grid), "--dim", str(args.dim), "--ratio", str(args.ratio),
           "--tau", str(args.tau), "--chunk", str(args.chunk), "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--device", args.device]
    env = dict(os.environ)
    if args.malloc_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="B=2, grid 8x10x15, C=128")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--grid", type=int, nargs=3, default=[24, 10, 15])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per subprocess")
    p.add_argument("--rounds", type=int, default=3, help="subprocesses per variant, interleaved")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--malloc-mmap", action="store_true",
                   help="CPU: glibc serves every block over 64 KiB by mmap, so the peak counts "
                        "tensors and not heap fragmentation")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.small:
        args.batch, args.grid, args.dim = 2, [8, 10, 15], 128
    if args.worker:
        args.variant = args.worker
        print(json.dumps(worker(args)))
        return

    print(f"B={args.batch} grid={tuple(args.grid)} C={args.dim} k={args.ratio} tau={args.tau} "
          f"chunk={args.chunk} device={args.device} threads={args.threads or torch.get_num_threads()} "
          f"repeats={args.repeats} rounds={args.rounds}"
          + (" MALLOC_MMAP_THRESHOLD_=65536" if args.malloc_mmap else ""))
    # Rounds interleave the variants, so a change in the load of a shared machine hits all.
    runs = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for v in args.variants:
            runs[v].append(run_variant(args, v))
    results = {}
    for v, rs in runs.items():
        results[v] = {"extra_peak_bytes": statistics.median(r["extra_peak_bytes"] for r in rs),
                      "seconds": statistics.median(r["seconds"] for r in rs),
                      "min_seconds": min(r["min_seconds"] for r in rs),
                      "queries_per_sample": rs[0]["queries_per_sample"], "tokens": rs[0]["tokens"]}
    for v, r in results.items():
        print(f"{v:>12}: extra peak {r['extra_peak_bytes'] / 2**20:9.1f} MiB   "
              f"time median {r['seconds']:7.3f} s  min {r['min_seconds']:7.3f} s   "
              f"(M={r['queries_per_sample']}, N={r['tokens']})")
    if "mtsa" in results:
        m = results["mtsa"]
        for ref in ("dense_plain", "dense"):
            if ref in results:
                r = results[ref]
                print(f"mtsa / {ref}: memory {m['extra_peak_bytes'] / r['extra_peak_bytes']:.3f}x   "
                      f"time (median) {m['seconds'] / r['seconds']:.3f}x   "
                      f"time (min) {m['min_seconds'] / r['min_seconds']:.3f}x")


if __name__ == "__main__":
    main()
