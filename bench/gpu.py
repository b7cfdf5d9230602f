"""GPU benchmark at real size with random weights (issue 7).

Prints, as one JSON object per section and a summary table:
 1. the training step at paper size (CogVideoX-2B architecture, latents [13, 16, 60, 90], 226 text
    tokens, projector, M-TSA at k=0.2, bf16 autocast with fp32 master weights, gradient
    checkpointing) at micro-batch 1 and the largest micro-batch that fits: s/sample, peak memory,
    MFU from FLOPs counted with torch.utils.flop_counter;
 2. the same step with the teacher run online as VideoREPA does (VideoMAEv2-B on 48x160x240
    frames plus the VAE encode of 49x480x720 frames), as a ratio to the cached step;
 3. preprocess throughput of the GPU stages (VAE encode, teacher, T5-XXL-sized encoder), clips/s,
    and the stage that bounds it;
 4. M-TSA against dense TSA at paper size: time and peak memory.

    python bench/gpu.py                 # on one GPU, about 5-8 minutes
    python bench/gpu.py --small         # the same code at tiny sizes on the CPU (a test runs this)
    python bench/gpu.py --json out.json # also write the results
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tsa.configs import load_config  # noqa: E402
from tsa.configs.schema import Config  # noqa: E402

# Dense bf16 tensor-core peak (TFLOP/s) by device name, for MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 6000 Ada": 364.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


# ----------------------------------------------------------------------------- models

def paper_config() -> Config:
    return load_config("cogvideox2b_mtsa", ["models.teacher.checkpoint=random"])


def small_config() -> Config:
    # Half the tiny config's frame size: the same code paths in seconds on a CPU.
    return load_config("tiny", ["geometry.height=96", "geometry.width=144"])


def build_models(cfg: Config, small: bool, device: torch.device):
    """Random-weight student (CogVideoX-2B default config), VAE, T5 encoder, VideoMAEv2 teacher."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from tsa.models.teacher import VideoMAEv2

    torch.manual_seed(0)
    if small:
        from tsa.models.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(cfg)
        transformer, vae, t5 = pipe.transformer, pipe.vae, pipe.text_encoder
    else:
        with torch.device(device):
            transformer = CogVideoXTransformer3DModel()  # the default config is CogVideoX-2B
            vae = AutoencoderKLCogVideoX().to(torch.bfloat16)
            t5 = T5EncoderModel(T5Config(  # T5-v1.1-XXL encoder, as CogVideoX uses
                vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)).to(torch.bfloat16)
    teacher = VideoMAEv2(cfg.models.teacher, cfg.geometry)
    dtype = torch.float32 if small else torch.bfloat16
    return (transformer.to(device), vae.to(device, dtype).eval(), t5.to(device, dtype).eval(),
            teacher.to(device, dtype).eval())


# ----------------------------------------------------------------------------- measuring

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of `fn` over `iters` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def counted_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


# ----------------------------------------------------------------------------- 1 + 2: training step

class TrainStep:
    """One optimizer step of student + projector + diffusion loss + lambda * M-TSA."""

    def __init__(self, cfg: Config, transformer, device: torch.device, online=None):
        from tsa.core import mask_to_index, topk_mask
        from tsa.train.loss import alignment_loss, diffusion_loss
        from tsa.models.cogvideox import FAMILY
        from tsa.models.student import Student, build_projector

        self.cfg, self.device = cfg, device
        transformer.enable_gradient_checkpointing()
        transformer.train()
        self.student = Student(FAMILY, transformer, build_projector(transformer, cfg).to(device), cfg.align.layer,
                               cfg.geometry.student_grid).to(device)
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=cfg.train.lr, weight_decay=1e-4,
                                     fused=device.type == "cuda")
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                         else contextlib.nullcontext())
        self.online = online  # (vae, teacher) run on raw frames, as VideoREPA does
        self._diffusion_loss, self._alignment_loss = diffusion_loss, alignment_loss
        self._topk_mask, self._mask_to_index = topk_mask, mask_to_index

    def batch(self, b: int) -> dict[str, torch.Tensor]:
        g, d = self.cfg.geometry, self.device
        c, f, h, w = g.latent_shape
        tf, th, tw = g.teacher_grid
        out = {
            "latent": torch.randn(b, c, f, h, w, device=d),  # the Student takes [B, C, F, H, W]
            "noise": torch.randn(b, c, f, h, w, device=d),
            "text": torch.randn(b, *g.text_shape, device=d),
            "timestep": torch.randint(0, 1000, (b,), device=d),
            "teacher": torch.randn(b, tf * th * tw, self.cfg.models.teacher.dim, device=d),
            "motion": torch.rand(b, tf, th, tw, device=d),
        }
        if self.online is not None:
            out["frames"] = torch.rand(b, 3, g.num_frames, g.height, g.width, device=d)
        return out

    def _online_targets(self, batch):
        from tsa.models.teacher import preprocess_frames

        vae, teacher = self.online
        dtype = next(teacher.parameters()).dtype
        with torch.no_grad():
            frames = batch["frames"]
            latent = vae.encode((frames * 2 - 1).to(dtype)).latent_dist.sample()
            batch["latent"] = latent.float() * vae.config.scaling_factor
            _, normalized = preprocess_frames(frames, self.cfg.geometry)
            batch["teacher"] = teacher(normalized.to(dtype)).float()

    def model_flops_per_sample(self) -> int:
        """Model FLOPs of one sample: 3x the counted forward (backward = 2x forward; the
        recompute of gradient checkpointing is not model work, as MFU conventionally counts)."""
        batch = self.batch(1)
        with torch.no_grad(), self.autocast:
            return 3 * counted_flops(lambda: self.student(batch["latent"], batch["text"], batch["timestep"]))

    def __call__(self, batch) -> None:
        if self.online is not None:
            self._online_targets(batch)
        alpha_bar = 0.5  # the noise level does not change the cost of a step
        noisy = alpha_bar ** 0.5 * batch["latent"] + (1 - alpha_bar) ** 0.5 * batch["noise"]
        target = alpha_bar ** 0.5 * batch["noise"] - (1 - alpha_bar) ** 0.5 * batch["latent"]
        with self.autocast:
            pred, projected = self.student(noisy, batch["text"], batch["timestep"])
        index = self._mask_to_index(self._topk_mask(batch["motion"], self.cfg.align.ratio))
        loss = self._diffusion_loss(pred, target) + self.cfg.align.weight * self._alignment_loss(
            self.cfg.align, projected, batch["teacher"], self.cfg.geometry.teacher_grid, index)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def bench_train(cfg: Config, transformer, vae, teacher, device, small: bool) -> dict:
    step = TrainStep(cfg, transformer, device)
    warm, iters = (0, 1) if small else (2, 3)
    results: dict = {"micro_batches": []}
    peak = peak_tflops(device)
    flops_per_sample = None
    # Doubling micro-batches keeps the section inside the 8 minutes.
    candidates = [1, 2] if small else [1, 2, 4, 8]
    for b in candidates:
        reset_peak(device)
        batch = step.batch(b)
        try:
            seconds = timed(lambda: step(batch), device, warm if b == 1 else min(warm, 1), iters)
        except RuntimeError as err:
            if not is_oom(err):
                raise
            step.opt.zero_grad(set_to_none=True)
            del batch
            reset_peak(device)
            results["micro_batches"].append({"micro_batch": b, "oom": True})
            break
        if flops_per_sample is None:
            flops_per_sample = step.model_flops_per_sample()
        row = {"micro_batch": b, "s_per_sample": seconds / b, "samples_per_s": b / seconds,
               "peak_gib": peak_gib(device)}
        if peak:
            row["mfu"] = flops_per_sample * b / seconds / (peak * 1e12)
        results["micro_batches"].append(row)
        del batch
    results["tflop_per_sample"] = flops_per_sample / 1e12 if flops_per_sample else None
    ok = [r for r in results["micro_batches"] if not r.get("oom")]
    results["largest_micro_batch"] = ok[-1]["micro_batch"] if ok else None
    if not ok:  # not even micro-batch 1 fits: nothing to compare the online step with
        results["online"] = {"skipped": "micro-batch 1 does not fit"}
        return results

    # 2. Online teacher (VideoREPA style): VAE encode + VideoMAEv2 inside the step, micro-batch 1,
    # with the VAE's memory savers on, as a trainer that encodes 49 x 480 x 720 frames needs them.
    if device.type == "cuda":
        vae.enable_slicing()
        vae.enable_tiling()
    reset_peak(device)
    step.online = (vae, teacher)
    batch = step.batch(1)
    try:
        online = timed(lambda: step(batch), device, warm, iters)
        results["online"] = {"s_per_sample": online, "peak_gib": peak_gib(device),
                             "ratio_to_cached": online / ok[0]["s_per_sample"]}
    except RuntimeError as err:
        if not is_oom(err):
            raise
        results["online"] = {"oom": True}
    step.online = None
    del step, batch
    return results


# ----------------------------------------------------------------------------- 3: preprocess GPU stages

def bench_preprocess(cfg: Config, vae, teacher, t5, device, small: bool) -> dict:
    from tsa.models.teacher import preprocess_frames

    g = cfg.geometry
    dtype = next(teacher.parameters()).dtype
    warm, iters = (0, 1) if small else (1, 3)
    out = {}
    if device.type == "cuda":
        vae.enable_slicing()
        vae.enable_tiling()
    frames = torch.rand(1, 3, g.num_frames, g.height, g.width, device=device)
    with torch.inference_mode():
        reset_peak(device)
        s = timed(lambda: vae.encode((frames * 2 - 1).to(dtype)).latent_dist.sample(), device, warm, iters)
        out["vae"] = {"clips_per_s": 1 / s, "batch": 1, "peak_gib": peak_gib(device)}

        b = cfg.preprocess.teacher.batch_size if not small else 2
        clips = torch.rand(b, 3, g.num_frames, g.height, g.width, device=device)
        _, normalized = preprocess_frames(clips, g)
        normalized = normalized.to(dtype)
        reset_peak(device)
        s = timed(lambda: teacher(normalized), device, warm, iters)
        out["teacher"] = {"clips_per_s": b / s, "batch": b, "peak_gib": peak_gib(device)}

        b = cfg.preprocess.text.batch_size if not small else 4
        ids = torch.randint(0, t5.config.vocab_size, (b, g.text_length), device=device)
        reset_peak(device)
        s = timed(lambda: t5(input_ids=ids).last_hidden_state, device, warm, iters)
        out["t5"] = {"clips_per_s": b / s, "batch": b, "peak_gib": peak_gib(device)}
    bound = min(("vae", "teacher", "t5"), key=lambda k: out[k]["clips_per_s"])
    # The stages share one GPU, so a clip costs the sum of the per-clip stage times.
    out["pipeline_clips_per_s_per_gpu"] = 1 / sum(1 / out[k]["clips_per_s"] for k in ("vae", "teacher", "t5"))
    out["bounded_by"] = bound
    return out


# ----------------------------------------------------------------------------- 4: M-TSA vs dense TSA

def bench_loss(cfg: Config, device, small: bool) -> dict:
    """dense_plain: plain autograd TSA with [B, N, N] matrices (the "dense TSA" of issue 2 and
    bench/mtsa_memory.py); dense_tsa / mtsa: tsa_core.tsa_loss without / with query_index."""
    from bench.mtsa_memory import plain_tsa
    from tsa.core import mask_to_index, topk_mask, tsa_loss

    grid = tf, th, tw = cfg.geometry.teacher_grid
    n, c, b, tau = tf * th * tw, cfg.models.teacher.dim, (2 if small else 4), cfg.align.tau
    gen = torch.Generator(device="cpu").manual_seed(0)
    student = torch.randn(b, n, c, generator=gen).to(device).requires_grad_(True)
    teacher = torch.randn(b, n, c, generator=gen).to(device)
    index = mask_to_index(topk_mask(torch.rand(b, tf, th, tw, generator=gen).to(device), cfg.align.ratio))
    out = {"B": b, "N": n, "M": int(index.shape[1]), "C": c}
    variants = (("dense_plain", lambda: plain_tsa(student, teacher, grid, tau, None)),
                ("dense_tsa", lambda: tsa_loss(student, teacher, grid, tau=tau)),
                ("mtsa", lambda: tsa_loss(student, teacher, grid, tau=tau, query_index=index)))
    for name, loss_fn in variants:
        def run():
            student.grad = None
            loss = loss_fn()
            loss.backward()
            return loss
        student.grad = None  # the last variant's gradient is not part of this one's baseline
        reset_peak(device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        s = timed(run, device, 0 if small else 1, 1 if small else 5)
        peak = peak_gib(device)
        extra = None if peak is None else peak - before / 2**30
        out[name] = {"ms": s * 1e3, "extra_peak_gib": extra, "loss": float(run().detach())}
    for ref in ("dense_plain", "dense_tsa"):
        out[f"time_ratio_vs_{ref}"] = out["mtsa"]["ms"] / out[ref]["ms"]
        if out["mtsa"]["extra_peak_gib"] is not None:
            out[f"memory_ratio_vs_{ref}"] = out["mtsa"]["extra_peak_gib"] / out[ref]["extra_peak_gib"]
    out["time_ratio"] = out["time_ratio_vs_dense_plain"]
    if "memory_ratio_vs_dense_plain" in out:
        out["memory_ratio"] = out["memory_ratio_vs_dense_plain"]
    return out


# ----------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny sizes on the CPU: checks that the script works")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: train,preprocess,loss")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = small_config() if args.small else paper_config()
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "small": args.small,
                     "geometry": {"latent": list(cfg.geometry.latent_shape), "text": list(cfg.geometry.text_shape),
                                  "teacher_grid": list(cfg.geometry.teacher_grid)}}
    t0 = time.perf_counter()
    if "loss" not in skip:
        results["loss"] = bench_loss(cfg, device, args.small)
        print(json.dumps({"loss": results["loss"]}), flush=True)
    transformer, vae, t5, teacher = build_models(cfg, args.small, device)
    if "preprocess" not in skip:
        results["preprocess"] = bench_preprocess(cfg, vae, teacher, t5, device, args.small)
        print(json.dumps({"preprocess": results["preprocess"]}), flush=True)
    del t5
    reset_peak(device)
    if "train" not in skip:
        results["train"] = bench_train(cfg, transformer, vae, teacher, device, args.small)
        print(json.dumps({"train": results["train"]}), flush=True)
    results["wall_s"] = time.perf_counter() - t0
    print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def summary(r: dict) -> str:
    lines = [f"device: {r['device']}  torch {r['torch']}  small={r['small']}"]
    if "train" in r:
        for row in r["train"]["micro_batches"]:
            if row.get("oom"):
                lines.append(f"train  micro-batch {row['micro_batch']}: out of memory")
                continue
            mfu = f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""
            mem = f"  peak {row['peak_gib']:.1f} GiB" if row["peak_gib"] is not None else ""
            lines.append(f"train  micro-batch {row['micro_batch']}: {row['s_per_sample']:.3f} s/sample{mem}{mfu}")
        on = r["train"]["online"]
        if "s_per_sample" in on:
            lines.append(f"train  online teacher+VAE: {on['s_per_sample']:.3f} s/sample = "
                         f"{on['ratio_to_cached']:.2f}x the cached step")
    if "preprocess" in r:
        p = r["preprocess"]
        lines.append("preprocess clips/s per GPU: " + ", ".join(
            f"{k} {p[k]['clips_per_s']:.2f}" for k in ("vae", "teacher", "t5"))
            + f"; all stages {p['pipeline_clips_per_s_per_gpu']:.2f}, bounded by {p['bounded_by']}")
    if "loss" in r:
        x = r["loss"]
        mem = f", memory ratio {x['memory_ratio']:.3f}" if "memory_ratio" in x else ""
        lines.append(f"loss   dense TSA (plain [B, N, N]) {x['dense_plain']['ms']:.1f} ms, dense TSA "
                     f"(tsa_loss) {x['dense_tsa']['ms']:.1f} ms, M-TSA {x['mtsa']['ms']:.1f} ms "
                     f"(M-TSA / plain dense: time ratio {x['time_ratio']:.3f}{mem})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
