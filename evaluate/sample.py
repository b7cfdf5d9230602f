"""`tsa sample`: generate mp4s from a fine-tuned student transformer for a benchmark or a prompt set,
on one GPU or on N at once (one Ray actor per GPU).

The pipeline is the student family's own diffusers pipeline (`CogVideoXPipeline`, `WanPipeline`;
models/<family>.py) built from a base model (VAE, text encoder, tokenizer, scheduler) with the
checkpoint's transformer swapped in. CogVideoX defaults follow the paper's evaluation setup and
the CogVideoX / VideoREPA inference scripts: 49 frames at 480x720, 50 steps of
CogVideoXDPMScheduler with trailing timestep spacing, guidance 6 with dynamic CFG, 8 fps, seed 42.
Wan2.1: the run's clip size, 50 steps of the release's UniPC flow sampler, guidance 5, 16 fps.

Output folder (evaluate/samples_log.py):
    OUT/00012_s42_v0.mp4       prompt index 12, --seed 42, video 0 of that prompt
    OUT/videos/{prompt}-{i}.mp4  instead, for --benchmark vbench (VBench's standard-mode names)
    OUT/samples.jsonl          one line per finished video (written after the mp4 is complete)
    OUT/sample.json            what was asked for (`tsa score` checks the folder is complete)
    OUT/eval.csv               videopath,caption of every finished video (for the evaluators)
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import typer

from tsa.evaluate.benchmarks import (BENCHMARKS, NAMING_INDEX, NAMING_VBENCH, VBENCH_MAX_VIDEOS, benchmark_prompts,
                                     get_benchmark, video_file)
from tsa.evaluate.checkpoint import (BaseRefs, SampleError, base_transformer_config, check_architecture,
                                     check_geometry, default_dtype, default_geometry, find_transformer_dir,
                                     load_run_config, lora_checkpoint, resolve_base, resolve_family)
from tsa.evaluate.prompts import Prompt, PromptError, read_prompts
from tsa.evaluate.render import Job, PipelineRenderer, RenderError, RenderSpec
from tsa.evaluate.samples_log import (EVAL_FILE, SAMPLES_FILE, SamplesError, append_record, check_resume,
                                      commit_video, done_files, read_samples, write_eval_csv, write_plan)
from tsa.evaluate.workers import PoolEvents, WorkerError, connect_ray, run_jobs

__all__ = ["BaseRefs", "SampleError", "SampleOptions", "SampleSummary", "default_geometry", "sample", "sample_cmd"]

ERRORS = (SampleError, PromptError, SamplesError, RenderError, WorkerError)


@dataclass
class SampleOptions:
    checkpoint: Path  # RUN/checkpoint-N (holding transformer/) or a transformer folder itself
    out: Path
    prompts: Optional[Path] = None  # a .txt/.csv prompt set; with `benchmark`: its prompt texts (needs `column`)
    benchmark: Optional[str] = None  # videophy | videophy2 | vbench (evaluate/benchmarks.py)
    base: Optional[str] = None  # hub id or pipeline folder; default: RUN/config.yaml's models
    column: Optional[str] = None
    caption_column: Optional[str] = None
    limit: Optional[int] = None
    seed: int = 42
    num_videos_per_prompt: Optional[int] = None  # None: the benchmark's (VBench 5), else 1
    steps: int = 50
    guidance: Optional[float] = None  # None: the family's (CogVideoX 6, Wan 5)
    dynamic_cfg: bool = True  # CogVideoX only
    frames: Optional[int] = None  # None: the run's geometry.num_frames, else 49
    height: Optional[int] = None  # None: the run's geometry.height, else 480
    width: Optional[int] = None  # None: the run's geometry.width, else 720
    fps: Optional[int] = None  # None: the family's (CogVideoX 8, Wan 16)
    dtype: Optional[str] = None  # bf16 | fp16 | fp32; None: bf16 on CUDA, fp32 on CPU
    device: Optional[str] = None  # None: cuda if available, else cpu
    cpu_offload: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    workers: int = 1  # pipelines at once: 1 in this process, more as Ray actors (one GPU each)
    ray_address: Optional[str] = None  # a Ray cluster (`auto`, host:port); None: local Ray if workers > 1


@dataclass
class SampleSummary:
    out: Path
    generated: int = 0
    skipped: int = 0
    files: list[str] = field(default_factory=list)  # generated in this call


@dataclass
class PromptSet:
    prompts: list[Prompt]
    benchmark: Optional[str]
    naming: str
    videos_per_prompt: int
    source: str  # the prompt file, or package:prompt_sets/<file>


@dataclass
class Models:
    """The models and geometry a run samples with, resolved from config files only."""

    spec_args: dict  # RenderSpec fields except dtype and device
    checkpoint: str
    base: BaseRefs
    sampler: str


# ----------------------------------------------------------------------------- what to make

def resolve_prompts(opts: SampleOptions) -> PromptSet:
    vpp = opts.num_videos_per_prompt
    if vpp is not None and vpp < 1:
        raise SampleError(f"--num-videos-per-prompt {vpp}: must be >= 1")
    if opts.benchmark is not None:
        bench = get_benchmark(opts.benchmark)
        if opts.caption_column is not None:
            raise SampleError(f"--caption-column: --benchmark {bench.name} fixes the caption the evaluator sees "
                              f"({bench.caption_column!r})")
        if opts.column is not None and opts.prompts is None:
            raise SampleError(f"--column {opts.column}: with --benchmark, --column names a column of your own "
                              f"--prompts file")
        vpp = bench.videos_per_prompt if vpp is None else vpp
        if bench.naming == NAMING_VBENCH and vpp > VBENCH_MAX_VIDEOS:
            raise SampleError(f"--num-videos-per-prompt {vpp}: VBench's standard mode reads videos 0..4 of each "
                              f"prompt (at most {VBENCH_MAX_VIDEOS})")
        prompts = benchmark_prompts(bench, opts.limit, opts.prompts, opts.column)
        source = str(opts.prompts) if opts.prompts is not None else f"package:prompt_sets/{bench.file}"
        return PromptSet(prompts, bench.name, bench.naming, vpp, source)
    if opts.prompts is None:
        raise SampleError(f"give --benchmark ({'|'.join(BENCHMARKS)}) or --prompts FILE")
    prompts = read_prompts(opts.prompts, opts.column, opts.caption_column, opts.limit)
    return PromptSet(prompts, None, NAMING_INDEX, 1 if vpp is None else vpp, str(opts.prompts))


def resolve_models(opts: SampleOptions) -> Models:
    if opts.steps < 1:
        raise SampleError(f"--steps {opts.steps}: must be >= 1")
    if opts.fps is not None and opts.fps < 1:
        raise SampleError(f"--fps {opts.fps}: must be >= 1")
    lora_dir = lora_checkpoint(opts.checkpoint)
    if lora_dir is not None:  # adapters on top of the base transformer
        transformer_dir, run_dir = None, lora_dir.parent
    else:
        transformer_dir, run_dir = find_transformer_dir(opts.checkpoint)
    run_cfg = load_run_config(run_dir)
    refs = resolve_base(opts.base, run_cfg, run_dir)
    family = resolve_family(run_cfg, transformer_dir)
    arch = (check_architecture(transformer_dir, refs.transformer, family) if transformer_dir is not None
            else base_transformer_config(refs.transformer, family))
    d_frames, d_height, d_width = default_geometry(run_cfg)
    frames, height, width = opts.frames or d_frames, opts.height or d_height, opts.width or d_width
    check_geometry(frames, height, width, refs, arch, family)
    spec_args = dict(
        family=family.name, **asdict(refs), transformer_dir=str(transformer_dir) if transformer_dir else None,
        lora_dir=str(lora_dir) if lora_dir else None, frames=frames, height=height, width=width, steps=opts.steps,
        guidance=family.default_guidance if opts.guidance is None else opts.guidance, dynamic_cfg=opts.dynamic_cfg,
        fps=family.default_fps if opts.fps is None else opts.fps,
        # The text length the run trained with (CogVideoX1.5: 224); else the release's.
        max_sequence_length=run_cfg.geometry.text_length if run_cfg is not None else family.text_length(arch),
        cpu_offload=opts.cpu_offload, vae_slicing=opts.vae_slicing, vae_tiling=opts.vae_tiling)
    return Models(spec_args, str(transformer_dir or lora_dir), refs, family.sampler)


def _settings(models: Models, spec: RenderSpec) -> dict:
    return {"checkpoint": models.checkpoint, "base": asdict(models.base), "steps": spec.steps,
            "guidance": spec.guidance, "dynamic_cfg": spec.dynamic_cfg, "frames": spec.frames,
            "height": spec.height, "width": spec.width, "fps": spec.fps, "dtype": spec.dtype,
            "scheduler": models.sampler, "max_sequence_length": spec.max_sequence_length}


def wanted_videos(ps: PromptSet, seed: int) -> dict[str, tuple[Prompt, int]]:
    """file -> (prompt, video index), in prompt order; prompts whose file another prompt already
    names (VBench's repeated texts) share that video."""
    wanted: dict[str, tuple[Prompt, int]] = {}
    for p in ps.prompts:
        for v in range(ps.videos_per_prompt):
            wanted.setdefault(video_file(ps.naming, p, seed, v), (p, v))
    return wanted


def video_record(prompt: Prompt, video_index: int, file: str, benchmark: Optional[str], seed: int,
                 seconds: float, settings: dict) -> dict:
    """The samples.jsonl line of a finished video."""
    return {"index": prompt.index, "prompt": prompt.text, "caption": prompt.caption, "category": prompt.category,
            "benchmark": benchmark, "seed": seed, "video_index": video_index, "generator_seed": seed + video_index,
            "file": file, "seconds": round(seconds, 3), "settings": settings}


def plan_entry(ps: PromptSet, opts: SampleOptions, wanted: dict) -> dict:
    """sample.json's content for this run (samples_log.write_plan merges it with earlier runs')."""
    return {"benchmark": ps.benchmark, "prompts": ps.source, "column": opts.column,
            "caption_column": opts.caption_column, "limit": opts.limit, "naming": ps.naming,
            "videos_per_prompt": ps.videos_per_prompt, "seeds": [opts.seed], "expected": list(wanted)}


# ----------------------------------------------------------------------------- sampling

def sample(opts: SampleOptions, log: Callable[[str], None] = print, bar=None,
           factory: Optional[Callable[[RenderSpec], object]] = None) -> SampleSummary:
    """Generate the missing videos into `opts.out` (see the module docstring). `bar`: a
    progress.SampleBar; `factory(spec)` builds a renderer in each worker (default
    render.PipelineRenderer; the sampling benchmark passes a stand-in)."""
    if opts.workers < 1:
        raise SampleError(f"--workers {opts.workers}: must be >= 1")
    on_ray = opts.workers > 1 or opts.ray_address is not None
    if on_ray and opts.device not in (None, "cuda", "cpu"):
        raise SampleError(f"--device {opts.device}: each Ray worker uses its own GPU; give cuda, cpu or nothing")
    ps = resolve_prompts(opts)
    models = resolve_models(opts)
    started = connect_ray(opts.ray_address) if on_ray else False
    try:
        return _sample(opts, ps, models, on_ray, log, bar, factory or PipelineRenderer)
    finally:
        if started:
            import ray

            ray.shutdown()


def _device_type(opts: SampleOptions, on_ray: bool) -> str:
    import torch

    if opts.device is not None:
        return torch.device(opts.device).type
    if on_ray:
        import ray

        return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _sample(opts, ps: PromptSet, models: Models, on_ray: bool, log, bar, factory) -> SampleSummary:
    device_type = _device_type(opts, on_ray)
    if opts.cpu_offload and device_type == "cpu":
        raise SampleError("--cpu-offload moves models between CPU and an accelerator; there is none here")
    spec = RenderSpec(**models.spec_args, dtype=default_dtype(device_type, opts.dtype), device=opts.device)
    settings = _settings(models, spec)
    out = Path(opts.out)
    records = read_samples(out)
    wanted = wanted_videos(ps, opts.seed)
    keys = {f: (p.index, p.text, opts.seed, v) for f, (p, v) in wanted.items()}
    check_resume(out, records, settings, keys)
    done = done_files(out, records, keys)
    todo = [Job(f, p.index, p.text, opts.seed + v) for f, (p, v) in wanted.items() if f not in done]
    summary = SampleSummary(out=out, skipped=len(wanted) - len(todo))
    if summary.skipped:
        log(f"{summary.skipped} video(s) already in {out / SAMPLES_FILE}: skipped")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(".*.tmp"), *out.glob("videos/.*.tmp")]:  # a crashed run's half-written videos
        stale.unlink()
    write_plan(out, plan_entry(ps, opts, wanted))
    if not todo:
        write_eval_csv(out, records)
        return summary

    def done_video(job: Job, data: bytes, seconds: float) -> None:
        commit_video(out, job.file, data)
        prompt, v = wanted[job.file]
        record = video_record(prompt, v, job.file, ps.benchmark, opts.seed, seconds, settings)
        append_record(out, record)
        records.append(record)
        summary.generated += 1
        summary.files.append(job.file)
        if bar is not None:
            bar.advance()
        log(f"[{summary.generated}/{len(todo)}] {job.file} ({seconds:.1f} s)")

    workers = min(opts.workers, len(todo))
    if bar is not None:
        bar.start(len(todo), workers)
    def worker_ready(worker: int, where: str) -> None:
        if bar is not None:
            bar.ready()
        if on_ray:
            log(f"worker {worker} ready ({where})")

    events = PoolEvents(done=done_video, ready=worker_ready, notice=log)
    try:
        run_jobs(todo, functools.partial(factory, spec), workers, events,
                 ray_address=opts.ray_address if on_ray else None)
    finally:
        write_eval_csv(out, records)
    return summary


# ----------------------------------------------------------------------------- CLI

def sample_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="RUN/checkpoint-N written by `tsa train` "
                                    "(or the transformer/ folder inside it)."),
    out: Path = typer.Option(..., "--out", help="Output folder: mp4s, samples.jsonl, sample.json, eval.csv."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="videophy | videophy2 | vbench: the shipped "
                                            "prompt set with the paper's protocol (docs/evaluate.md)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="A .txt (one prompt a line) or a .csv prompt set; "
                                           "with --benchmark, a CSV holding the benchmark's captions and, in "
                                           "--column, the texts to prompt with instead."),
    base: Optional[str] = typer.Option(None, "--base", help="Hub id or pipeline folder of the family for VAE, text "
                                       "encoder, tokenizer, scheduler. Default: the models of RUN/config.yaml."),
    column: Optional[str] = typer.Option(None, "--column", help="CSV column to prompt with "
                                         "(default: caption, else prompt; a benchmark's own column)."),
    caption_column: Optional[str] = typer.Option(None, "--caption-column", help="CSV column recorded as the "
                                                 "caption for the evaluators (default: caption, else prompt)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N prompts."),
    seed: int = typer.Option(42, "--seed", help="Video v of every prompt starts from noise of seed + v."),
    num_videos_per_prompt: Optional[int] = typer.Option(None, "--num-videos-per-prompt",
                                                        help="Default: the benchmark's (VBench 5), else 1."),
    steps: int = typer.Option(50, "--steps", help="Denoising steps (CogVideoX: DPM, trailing spacing; Wan: UniPC)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale "
                                             "(default: CogVideoX 6, Wan 5)."),
    dynamic_cfg: bool = typer.Option(True, "--dynamic-cfg/--no-dynamic-cfg",
                                     help="CogVideoX's cosine-ramped guidance, as in its inference scripts (CogVideoX only)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Default: the run's geometry.num_frames (49 without a run config)."),
    height: Optional[int] = typer.Option(None, "--height", help="Default: the run's geometry.height (480 without a run config)."),
    width: Optional[int] = typer.Option(None, "--width", help="Default: the run's geometry.width (720 without a run config)."),
    fps: Optional[int] = typer.Option(None, "--fps", help="Default: CogVideoX 8, Wan 16."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 | fp16 | fp32 (default bf16 on CUDA, fp32 on CPU)."),
    device: Optional[str] = typer.Option(None, "--device", help="Default cuda if available, else cpu."),
    cpu_offload: bool = typer.Option(False, "--cpu-offload", help="diffusers model CPU offload (accelerate, a dependency)."),
    vae_slicing: bool = typer.Option(False, "--vae-slicing", help="diffusers' VAE slicing (decodes a batch one video at a time; "
                                     "tsa sample decodes one video per call, so it changes little)."),
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help="Decode in spatial tiles (less GPU memory)."),
    workers: int = typer.Option(1, "--workers", help="Pipelines at once: 1 runs here; N > 1 starts N Ray actors "
                                "with one GPU each (one CPU each on a cluster without GPUs)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster (`auto` or host:port). "
                                              "Default: RAY_ADDRESS, else a local Ray when --workers > 1."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Generate mp4s for a benchmark (--benchmark) or a prompt file (--prompts) from a fine-tuned checkpoint."""
    from rich.console import Console

    from tsa.evaluate.progress import SampleBar

    opts = SampleOptions(
        checkpoint=checkpoint, prompts=prompts, benchmark=benchmark, out=out, base=base, column=column,
        caption_column=caption_column, limit=limit, seed=seed, num_videos_per_prompt=num_videos_per_prompt,
        steps=steps, guidance=guidance, dynamic_cfg=dynamic_cfg, frames=frames, height=height, width=width, fps=fps,
        dtype=dtype, device=device, cpu_offload=cpu_offload, vae_slicing=vae_slicing, vae_tiling=vae_tiling,
        workers=workers, ray_address=ray_address)
    console = Console(stderr=False)
    try:
        with SampleBar(console, enabled=progress) as bar:
            summary = sample(opts, log=bar.print, bar=bar)
    except ERRORS as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{summary.generated} video(s) written, {summary.skipped} already there: "
               f"{summary.out / SAMPLES_FILE}, {summary.out / EVAL_FILE}")
