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
 4. M-TSA against dense TSA at paper size: time and peak memory;
 5. sampling: seconds a denoising step and a VAE decode, so seconds per benchmark video.

The training step is the trainer's own (assemble_student, wrap, build_optimizer,
micro_batch_losses, clip_gradients); each micro-batch row carries the memory plan's total
beside the measured peak, and the micro-batches are 1, 2 and the largest the plan says fits.

    python bench/gpu.py                 # on one GPU, about 5-8 minutes
    python bench/gpu.py --small         # the same code at tiny sizes on the CPU (a test runs this)
    python bench/gpu.py --json out.json # also write the results
"""
from __future__ import annotations

import argparse
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


def local_scheduler(cfg: Config) -> None:
    """Point `models.scheduler` at CogVideoX-2B's scheduler config written to a temporary folder
    (no hub access needed; the trainer reads only the noise schedule from it)."""
    import tempfile

    from diffusers import CogVideoXDPMScheduler

    from tsa.models.cogvideox import COGVIDEOX_2B_SCHEDULER

    folder = Path(tempfile.mkdtemp(prefix="tsa-gpu-bench-"))
    CogVideoXDPMScheduler(**COGVIDEOX_2B_SCHEDULER).save_pretrained(folder / "scheduler")
    cfg.models.scheduler = str(folder)


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
    """One optimizer step of the trainer's own code (train/loop.py without the data loader):
    the Student assembled as `build_student` does, `wrap` on one worker, the trainer's AdamW
    (fused on CUDA), `micro_batch_losses` (bf16 autocast over fp32 weights on GPUs, the family's
    objective and conditioning, diffusion loss + lambda * alignment loss) and `clip_gradients`.
    The batch is laid out as the loader gives it: page-locked float16 latents and text, float32
    teacher tokens, boolean motion masks."""

    def __init__(self, cfg: Config, transformer, device: torch.device, online=None):
        from tsa.models.family import student_family
        from tsa.models.student import assemble_student
        from tsa.train.distributed import Dist, wrap
        from tsa.train.optim import build_optimizer
        from tsa.train.step import StepContext

        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.seed)
        self.student = assemble_student(cfg, transformer)
        self.model = wrap(self.student, Dist(device=device))
        self.opt = build_optimizer(self.model, cfg.train, device)
        family = student_family(cfg)
        self.ctx = StepContext(cfg, family.objective(cfg.models.scheduler), device, None,
                               family.conditioning(self.student.transformer, cfg, device))
        self.online = online  # (vae, teacher) run on raw frames, as VideoREPA does
        self.fb_peak = self.step_peak = 0  # bytes, since the last reset_peaks()

    def reset_peaks(self) -> None:
        self.fb_peak = self.step_peak = 0

    def peaks_gib(self) -> dict:
        if self.device.type != "cuda":
            return {"peak_gib": None}
        return {"peak_gib": self.step_peak / 2**30, "forward_backward_peak_gib": self.fb_peak / 2**30}

    def batch(self, b: int) -> dict:
        from tsa.core import topk_mask

        g, pin = self.cfg.geometry, self.device.type == "cuda"
        tf, th, tw = g.teacher_grid

        def host(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory() if pin else t

        out = {
            "latent": host(torch.randn(b, *g.latent_shape).half()),
            "text": host(torch.randn(b, *g.text_shape).half()),
            "teacher": host(torch.randn(b, tf * th * tw, self.cfg.models.teacher.dim)),
            "mask": host(topk_mask(torch.rand(b, tf, th, tw), self.cfg.align.ratio)),
            "index": list(range(b)),
        }
        if self.online is not None:
            out["frames"] = torch.rand(b, 3, g.num_frames, g.height, g.width, device=self.device)
        return out

    def _online_targets(self, batch) -> dict:
        from tsa.models.teacher import preprocess_frames

        vae, teacher = self.online
        dtype = next(teacher.parameters()).dtype
        with torch.no_grad():
            frames = batch["frames"]
            latent = vae.encode((frames * 2 - 1).to(dtype)).latent_dist.sample()
            _, normalized = preprocess_frames(frames, self.cfg.geometry)
            return {**batch, "latent": latent.float() * vae.config.scaling_factor,
                    "teacher": teacher(normalized.to(dtype)).float()}

    def model_flops_per_sample(self) -> int:
        """Model FLOPs of one sample: 3x the counted forward (backward = 2x forward; the
        recompute of gradient checkpointing is not model work, as MFU conventionally counts)."""
        from tsa.train.step import to_device

        batch = self.batch(1)
        x = to_device(batch["latent"], self.ctx, torch.float32)
        text = to_device(batch["text"], self.ctx, torch.float32)
        t = torch.zeros(1, dtype=torch.long, device=self.device)
        dtype = self.ctx.autocast_dtype
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return 3 * counted_flops(lambda: self.model(x, text, t, self.ctx.conditioning))

    def __call__(self, batch, align_loss: str | None = None) -> None:
        """One step; `align_loss` overrides `align.loss` for this call (none: the diffusion loss
        alone, to take the alignment's share of the step)."""
        from tsa.train.distributed import clip_gradients
        from tsa.train.step import micro_batch_losses

        if self.online is not None:
            batch = self._online_targets(batch)
        ctx = self.ctx
        if align_loss is not None and align_loss != self.cfg.align.loss:
            cfg = _with_align_loss(self.cfg, align_loss)
            ctx = type(ctx)(cfg, ctx.objective, ctx.device, ctx.latent_norm, ctx.conditioning, ctx.param_dtype)
        self.opt.zero_grad(set_to_none=True)
        cuda = self.device.type == "cuda"
        if cuda:  # the peak of forward + backward alone, apart from the optimizer step's
            torch.cuda.reset_peak_memory_stats(self.device)
        micro_batch_losses(self.model, batch, ctx)["loss"].backward()
        if cuda:
            self.fb_peak = max(self.fb_peak, torch.cuda.max_memory_allocated(self.device))
        clip_gradients(self.model, self.cfg.train.grad_clip)
        self.opt.step()
        if cuda:
            self.step_peak = max(self.step_peak, torch.cuda.max_memory_allocated(self.device))


def _with_align_loss(cfg: Config, loss: str) -> Config:
    import copy

    out = copy.deepcopy(cfg)
    out.align.loss = loss
    return out


def planned_gib(step: TrainStep, b: int) -> float:
    """The trainer's memory plan (train/memory_plan.py, one worker) at micro-batch `b`, GiB."""
    import copy

    from tsa.train.memory_plan import plan_memory

    cfg = copy.deepcopy(step.cfg)
    cfg.train.micro_batch = b
    return plan_memory(step.student.transformer, step.student.projector, cfg, "ddp", 1).total / 2**30


def largest_planned(step: TrainStep, device: torch.device, limit: int = 64) -> int:
    """The largest micro-batch whose planned memory, plus what the benchmark's other models
    (VAE, teacher) hold and 2 GiB of CUDA context and allocator slack, fits the GPU (1 on the CPU)."""
    if device.type != "cuda":
        return 1
    own = sum(t.numel() * t.element_size() for t in [*step.student.parameters(), *step.student.buffers()])
    others = (torch.cuda.memory_allocated(device) - own) / 2**30
    card = torch.cuda.get_device_properties(device).total_memory / 2**30
    fits = [b for b in range(1, limit + 1) if planned_gib(step, b) + others + 2.0 <= card]
    return fits[-1] if fits else 1


def bench_train(cfg: Config, transformer, vae, teacher, device, small: bool,
                micro_batches: list[int] | None = None) -> dict:
    """`micro_batches`: measure exactly these (the activation slope against the plan's) and skip
    the micro-batch 1 comparisons (alignment share, online teacher)."""
    step = TrainStep(cfg, transformer, device)
    warm, iters = (0, 1) if small else (2, 3)
    results: dict = {"micro_batches": []}
    peak = peak_tflops(device)
    flops_per_sample = None
    # Micro-batch 1 and 2, then the largest the memory plan says fits this GPU: measuring it
    # checks the plan; if it does not fit after all, the next smaller ones are tried.
    largest = largest_planned(step, device)
    results["planned_largest_micro_batch"] = largest
    candidates = [1, 2] if small else sorted({1, 2, largest})
    fallback = [max(1, largest - k) for k in (1, 2, 4, 8)] if not small else []
    if micro_batches:
        candidates, fallback = sorted(micro_batches), []
    tried: set[int] = set()
    while candidates:
        b = candidates.pop(0)
        if b in tried:
            continue
        tried.add(b)
        reset_peak(device)
        step.reset_peaks()
        batch = step.batch(b)
        big = b > 2
        try:
            seconds = timed(lambda: step(batch), device, warm if b == 1 else min(warm, 1), 1 if big else iters)
        except RuntimeError as err:
            if not is_oom(err):
                raise
            step.opt.zero_grad(set_to_none=True)
            del batch
            reset_peak(device)
            results["micro_batches"].append({"micro_batch": b, "oom": True, "planned_gib": planned_gib(step, b),
                                             "error": str(err)[:400]})
            candidates = [f for f in fallback if f < b and f not in tried][:1]
            continue
        if flops_per_sample is None:
            flops_per_sample = step.model_flops_per_sample()
        row = {"micro_batch": b, "s_per_sample": seconds / b, "samples_per_s": b / seconds,
               **step.peaks_gib(), "planned_gib": planned_gib(step, b)}
        if peak:
            row["mfu"] = flops_per_sample * b / seconds / (peak * 1e12)
        results["micro_batches"].append(row)
        del batch
    results["tflop_per_sample"] = flops_per_sample / 1e12 if flops_per_sample else None
    ok = [r for r in results["micro_batches"] if not r.get("oom")]
    results["largest_micro_batch"] = max(r["micro_batch"] for r in ok) if ok else None
    if not ok or micro_batches:  # nothing (or not asked) to compare the online step with
        results["online"] = {"skipped": "micro-batch 1 does not fit" if not ok else "--micro-batches"}
        return results

    # The alignment's share of the step, and dense TSA in the step: micro-batch 1 with the
    # diffusion loss alone, with M-TSA (above), and with dense TSA over every query.
    batch = step.batch(1)
    base = ok[0]["s_per_sample"]
    align = {"mtsa_s": base}
    for name in ("none", "tsa"):
        reset_peak(device)
        align[f"{name}_s"] = timed(lambda: step(batch, align_loss=name), device, min(warm, 1), iters)
        align[f"{name}_peak_gib"] = peak_gib(device)
    align["mtsa_share"] = (base - align["none_s"]) / base
    align["dense_tsa_share"] = (align["tsa_s"] - align["none_s"]) / align["tsa_s"]
    results["alignment"] = align
    del batch

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


# ----------------------------------------------------------------------------- 5: sampling

def bench_sample(cfg: Config, transformer, vae, device, small: bool) -> dict:
    """Seconds per benchmark video, from its parts: one denoising step (the transformer on the
    conditional and unconditional halves together, bf16 weights, as `tsa sample` runs it) times
    `sample.steps`, plus the VAE decode of one latent [C, F, H, W] (tiled on GPUs)."""
    from tsa.models.family import student_family

    g, family = cfg.geometry, student_family(cfg)
    dtype = torch.float32 if small else torch.bfloat16
    warm, iters = (0, 1) if small else (1, 3)
    transformer = transformer.to(dtype).eval()
    text = torch.randn(2, *g.text_shape, device=device, dtype=dtype)
    latent = torch.randn(2, *g.latent_shape, device=device, dtype=dtype)
    t = torch.full((2,), 500, device=device)
    conditioning = family.conditioning(transformer, cfg, device)
    vae.disable_tiling()  # as `tsa sample` decodes by default (--vae-tiling is off)
    from dataclasses import fields

    from tsa.evaluate.sample import SampleOptions

    out: dict = {"steps": next(f.default for f in fields(SampleOptions) if f.name == "steps")}
    with torch.inference_mode():
        reset_peak(device)
        out["step_s"] = timed(lambda: family.predict(transformer, latent, text, t, conditioning), device, warm, iters)
        out["step_peak_gib"] = peak_gib(device)
        # The VAE takes [B, C, F, H, W] latents, as the sampler passes them.
        z = torch.randn(1, *g.latent_shape, device=device, dtype=next(vae.parameters()).dtype)
        reset_peak(device)
        decode = lambda: vae.decode(z / vae.config.scaling_factor).sample  # noqa: E731
        try:
            out["decode_s"] = timed(decode, device, warm, 1 if not small else iters)
        except RuntimeError as err:
            if not is_oom(err):
                raise
            reset_peak(device)
            vae.enable_tiling()
            out["decode_tiled"] = True
            out["decode_s"] = timed(decode, device, warm, 1 if not small else iters)
        out["decode_peak_gib"] = peak_gib(device)
    out["s_per_video"] = out["steps"] * out["step_s"] + out["decode_s"]
    out["videos_per_hour"] = 3600 / out["s_per_video"]
    return out


# ----------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny sizes on the CPU: checks that the script works")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--micro-batches", default="", help="comma-separated micro-batches to measure in the "
                    "training section instead of 1, 2 and the plan's largest")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: train,preprocess,loss,sample")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    from tsa.train.launch import set_allocator_defaults

    set_allocator_defaults()  # the trainer's allocator settings, before the first CUDA tensor
    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = small_config() if args.small else paper_config()
    local_scheduler(cfg)
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
        results["train"] = bench_train(cfg, transformer, vae, teacher, device, args.small,
                                       [int(x) for x in args.micro_batches.split(",") if x])
        print(json.dumps({"train": results["train"]}), flush=True)
    if "sample" not in skip:
        results["sample"] = bench_sample(cfg, transformer, vae, device, args.small)
        print(json.dumps({"sample": results["sample"]}), flush=True)
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
            mem = (f"  peak {row['peak_gib']:.1f} GiB (plan {row['planned_gib']:.1f})"
                   if row["peak_gib"] is not None else "")
            lines.append(f"train  micro-batch {row['micro_batch']}: {row['s_per_sample']:.3f} s/sample{mem}{mfu}")
        if "alignment" in r["train"]:
            a = r["train"]["alignment"]
            lines.append(f"train  micro-batch 1: M-TSA {a['mtsa_s']:.3f} s, dense TSA {a['tsa_s']:.3f} s, no alignment "
                         f"{a['none_s']:.3f} s: the alignment is {a['mtsa_share']:.1%} of the step "
                         f"({a['dense_tsa_share']:.1%} with dense TSA)")
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
    if "sample" in r:
        x = r["sample"]
        lines.append(f"sample {x['step_s']:.3f} s a denoising step (CFG pair) x {x['steps']} + decode "
                     f"{x['decode_s']:.2f} s = {x['s_per_video']:.1f} s a video ({x['videos_per_hour']:.0f} an hour)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
