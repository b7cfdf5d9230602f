"""What FSDP2 ranks really hold, measured on the CPU (gloo), against train/memory_plan.py.

W processes each build the student the way `tsa train --workers W --strategy fsdp2` does
(train/loop.py: an empty twin on every rank, rank 0 loads, `wrap` shards and broadcasts), run
a few accumulation micro-batches and one AdamW step, and report per rank:

- host memory while loading: the peak resident set (VmHWM, reset just before) above the
  resident set before the build, next to the model's fp32 bytes;
- parameter, gradient (after each micro-batch) and AdamW bytes this rank holds
  (train/memory_plan.py `held_bytes`: distinct storages of the local shards, plus any unsharded
  gradient FSDP2 keeps), next to the plan's numbers for the same model;
- the control: gradient bytes after one micro-batch with gradient sync switched off
  (`set_requires_gradient_sync(False)`, what tsa did before), to show the measurement sees
  unsharded gradients.

The student is `tiny` widened to be measurable (8 heads x 64 = 512 wide, 6 blocks: ~24M
parameters, ~95 MB in fp32); `--load every-rank` builds it the old way (every rank loads the
weights, then shards) for comparison.

    python bench/fsdp_memory.py --workers 2 [--workers 4] [--load every-rank] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDE = ["models.tiny_student.num_attention_heads=8", "models.tiny_student.attention_head_dim=64",
        "models.tiny_student.num_layers=6", "models.tiny_student.time_embed_dim=128",
        "train.micro_batch=1"]
MIB = 2 ** 20


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current resident set
        f.write("5")


def wide_config(world: int, accum: int = 2):
    from tsa.configs import load_config

    return load_config("tiny", WIDE + [f"train.global_batch={world * accum}", f"train.data_streams={world}"])


def _rank(rank: int, world: int, port: int, student_ref: str, load: str, out: str) -> None:
    import gc

    import torch.distributed as tdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from tsa.models.student import build_student
        from tsa.train.data import microbatches_per_step
        from tsa.train.distributed import Dist, no_grad_sync, wrap
        from tsa.train.memory_plan import held_bytes, plan_memory
        from tsa.train.optim import build_optimizer

        cfg = wide_config(world)
        cfg.models.student = student_ref
        dist = Dist.from_process_group(torch.device("cpu"), "fsdp2")
        build_student(cfg, empty=True)  # imports and first-call caches before the baseline
        gc.collect()
        tdist.barrier()
        _reset_peak()
        before = _status("VmRSS")
        torch.manual_seed(cfg.seed)
        if load == "rank0":  # what train/loop.py does
            student = build_student(cfg, empty=True)
            model = wrap(student, dist, load=lambda: build_student(cfg))
        else:  # every rank loads the weights, then shards (tsa before the empty twin)
            student = build_student(cfg)
            model = wrap(student, dist)
        gc.collect()
        load_peak = _status("VmHWM") - before
        model_bytes = sum(p.numel() * 4 for p in student.parameters())
        held = held_bytes(model)
        tdist.barrier()

        optimizer = build_optimizer(model, cfg.train)
        g = torch.Generator().manual_seed(100 + rank)
        c, f, h, w = cfg.geometry.latent_shape

        def micro_batch() -> torch.Tensor:
            noisy = torch.randn(1, c, f, h, w, generator=g)
            text = torch.randn(1, cfg.geometry.text_length, cfg.geometry.text_dim, generator=g)
            t = torch.randint(0, 1000, (1,), generator=g)
            pred, projected = model(noisy, text, t, None)
            return pred.float().square().mean() + projected.float().square().mean()

        accum = microbatches_per_step(cfg, world)
        grads = []
        for m in range(accum):
            with no_grad_sync(model, dist, sync=m == accum - 1):
                (micro_batch() / accum).backward()
            grads.append(held_bytes(model)["gradients"])
        optimizer.step()
        adam = held_bytes(model, optimizer)["optimizer"]
        optimizer.zero_grad(set_to_none=True)
        model.set_requires_gradient_sync(False)  # the control: no reduce-scatter until a sync
        micro_batch().backward()
        unsynced = held_bytes(model)["gradients"]
        model.set_requires_gradient_sync(True)
        plan = plan_memory(student.transformer, student.projector, cfg, "fsdp2", world)
        result = {"rank": rank, "world": world, "load": load, "model_bytes": model_bytes,
                  "rss_before": before, "load_peak": load_peak, "held_after_load": held,
                  "gradients_per_micro_batch": grads, "optimizer": adam, "gradients_without_sync": unsynced,
                  "plan": {"parameters": plan.parameters, "gradients": plan.gradients,
                           "optimizer": plan.optimizer, "buffers": plan.buffers}}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(workers: int, load: str = "rank0") -> list[dict]:
    """Spawn `workers` gloo ranks; one result dict per rank (see the module docstring)."""
    import torch.multiprocessing as mp

    from tsa.models.tiny import resolve_tiny

    cfg = resolve_tiny(wide_config(workers))  # built once here, in $TSA_CACHE; the ranks only read it
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(workers, _free_port(), cfg.models.student, load, out), nprocs=workers)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(workers)]


def table(results: list[dict]) -> str:
    lines = ["| rank | load peak RSS (model fp32) | parameters held / plan | gradients after micro-batch 1, 2 "
             "/ plan | AdamW held / plan | gradients, sync off (control) |", "|---|---|---|---|---|---|"]
    for r in results:
        p = r["plan"]
        grads = ", ".join(f"{g / MIB:.1f}" for g in r["gradients_per_micro_batch"])
        lines.append(
            f"| {r['rank']} | {r['load_peak'] / MIB:.0f} MiB ({r['model_bytes'] / MIB:.0f}) | "
            f"{r['held_after_load']['parameters'] / MIB:.1f} / {p['parameters'] / MIB:.1f} MiB | "
            f"{grads} / {p['gradients'] / MIB:.1f} MiB | {r['optimizer'] / MIB:.1f} / {p['optimizer'] / MIB:.1f} MiB | "
            f"{r['gradients_without_sync'] / MIB:.1f} MiB |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, action="append", help="ranks (repeat for several runs; default 2)")
    ap.add_argument("--load", choices=["rank0", "every-rank"], default="rank0")
    ap.add_argument("--json", type=Path, default=None, help="write every rank's numbers here")
    args = ap.parse_args(argv)
    everything = []
    for workers in args.workers or [2]:
        results = measure(workers, args.load)
        everything += results
        print(f"\nFSDP2, {workers} gloo ranks, load: {args.load}")
        print(table(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
