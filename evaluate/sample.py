"""`tsa sample`: generate mp4s from a fine-tuned student transformer for a prompt set.

The pipeline is the student family's own diffusers pipeline (`CogVideoXPipeline`, `WanPipeline`;
models/<family>.py) built from a base model (VAE, text encoder, tokenizer, scheduler) with the
checkpoint's transformer swapped in. CogVideoX defaults follow the paper's evaluation setup and
the CogVideoX / VideoREPA inference scripts: 49 frames at 480x720, 50 steps of
CogVideoXDPMScheduler with trailing timestep spacing, guidance 6 with dynamic CFG, 8 fps, seed 42.
Wan2.1: the run's clip size, 50 steps of the release's UniPC flow sampler, guidance 5, 16 fps.

Output folder:
    OUT/00012_s42_v0.mp4   prompt index 12, --seed 42, video 0 of that prompt
    OUT/samples.jsonl      one line per finished video (written after the mp4 is complete)
    OUT/eval.csv           videopath,caption of every finished video (for the evaluators)
"""
from __future__ import annotations

import copy
import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer

from tsa.configs.schema import Config, ConfigError, load_config
from tsa.models.family import StudentFamily, family_of_class, student_family
from tsa.media.mp4 import to_uint8, write_mp4
from tsa.evaluate.prompts import Prompt, PromptError, read_prompts

PAPER_FRAMES, PAPER_HEIGHT, PAPER_WIDTH = 49, 480, 720
SAMPLES_FILE = "samples.jsonl"
EVAL_FILE = "eval.csv"
RUN_CONFIG = "config.yaml"
DTYPES = ("bf16", "fp16", "fp32")

# Transformer config keys that do not change the architecture or the function it computes.
_ARCH_IGNORED = {"dropout", "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}
# Settings that must agree before new videos are added to an existing OUT folder.
_RESUME_KEYS = ("checkpoint", "steps", "guidance", "dynamic_cfg", "frames", "height", "width", "fps",
                "dtype", "scheduler")


class SampleError(ValueError):
    """The checkpoint, base model, options or output folder are unusable; the message says which."""


@dataclass
class SampleOptions:
    checkpoint: Path  # RUN/checkpoint-N (holding transformer/) or a transformer folder itself
    prompts: Path
    out: Path
    base: Optional[str] = None  # hub id or CogVideoX pipeline folder; default: RUN/config.yaml's models
    column: Optional[str] = None
    caption_column: Optional[str] = None
    limit: Optional[int] = None
    seed: int = 42
    num_videos_per_prompt: int = 1
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


@dataclass
class BaseRefs:
    """Where each base component comes from (hub id or folder; loaded from its subfolder)."""

    transformer: str  # only its config.json is read, to check the checkpoint's architecture
    vae: str
    text_encoder: str
    tokenizer: str
    scheduler: str


@dataclass
class SampleSummary:
    out: Path
    generated: int = 0
    skipped: int = 0
    files: list[str] = field(default_factory=list)  # generated in this call


# ----------------------------------------------------------------------------- checkpoint and base

def lora_checkpoint(checkpoint: Path) -> Optional[Path]:
    """RUN/checkpoint-N of a LoRA run (it holds pytorch_lora_weights.safetensors and no
    transformer/), resolved; None for a full fine-tune."""
    from tsa.models.lora import LORA_WEIGHTS

    checkpoint = Path(checkpoint)
    if checkpoint.is_dir() and (checkpoint / LORA_WEIGHTS).is_file() and not (checkpoint / "transformer").exists():
        return checkpoint.resolve()
    return None


def find_transformer_dir(checkpoint: Path) -> tuple[Path, Path]:
    """(transformer folder, run folder) of `checkpoint`: RUN/checkpoint-N or RUN/checkpoint-N/transformer."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise SampleError(f"checkpoint not found: {checkpoint}")
    if not checkpoint.is_dir():
        raise SampleError(f"checkpoint {checkpoint} is not a folder (expected RUN/checkpoint-N)")
    if (checkpoint / "transformer").is_dir():
        tdir = checkpoint / "transformer"
    elif (checkpoint / "config.json").is_file():
        tdir = checkpoint
    else:
        raise SampleError(f"checkpoint {checkpoint} has no transformer/ folder "
                          f"(expected RUN/checkpoint-N/transformer saved by `tsa train`)")
    if not (tdir / "config.json").is_file():
        raise SampleError(f"checkpoint transformer config missing: {tdir / 'config.json'}")
    run_dir = tdir.parent.parent
    return tdir.resolve(), run_dir.resolve()


def load_run_config(run_dir: Path) -> Optional[Config]:
    """RUN/config.yaml with model refs as given (e.g. `tiny`), or None if the run has none."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        return load_config(path)
    except ConfigError as e:
        raise SampleError(f"run config unusable: {e}") from None


def resolve_base(base: Optional[str], run_cfg: Optional[Config], run_dir: Path) -> BaseRefs:
    """`--base` for every component if given, else the run config's models (with `tiny` materialised)."""
    if base is not None:
        _check_local_ref(base, "--base")
        return BaseRefs(base, base, base, base, base)
    if run_cfg is None:
        raise SampleError(f"no --base given and no run config at {Path(run_dir) / RUN_CONFIG}: "
                          f"pass --base (hub id or pipeline folder)")
    from tsa.models.tiny import resolve_tiny

    m = resolve_tiny(copy.deepcopy(run_cfg)).models  # the caller's config keeps its `tiny` refs
    refs = BaseRefs(m.student, m.vae, m.text_encoder, m.tokenizer, m.scheduler)
    for name, ref in asdict(refs).items():
        key = "student" if name == "transformer" else name
        _check_local_ref(ref, f"models.{key} in {Path(run_dir) / RUN_CONFIG}")
    return refs


def _check_local_ref(ref: str, what: str) -> None:
    # Hub ids are `org/name`; anything else with a path shape is a folder that must exist.
    looks_local = ref.startswith(("/", ".", "~")) or ref.count("/") > 1
    if looks_local and not Path(ref).expanduser().exists():
        raise SampleError(f"{what}: folder not found: {ref}")


def default_geometry(run_cfg: Optional[Config]) -> tuple[int, int, int]:
    """(frames, height, width): the run's own geometry, the clips it was trained on (49x480x720
    for the paper and CogVideoX-5B configs, 81x768x1360 for CogVideoX1.5, the tiny size for tiny
    runs); the paper's 49x480x720 when there is no run config."""
    if run_cfg is not None:
        g = run_cfg.geometry
        return g.num_frames, g.height, g.width
    return PAPER_FRAMES, PAPER_HEIGHT, PAPER_WIDTH


def resolve_family(run_cfg: Optional[Config], transformer_dir: Optional[Path]) -> StudentFamily:
    """The run's `models.family`; without a run config, the family whose transformer class the
    checkpoint's config.json names."""
    if run_cfg is not None:
        return student_family(run_cfg)
    if transformer_dir is not None:
        path = Path(transformer_dir) / "config.json"
        try:
            cls = json.loads(path.read_text()).get("_class_name")
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise SampleError(f"cannot read checkpoint transformer config {path}: {e}") from None
        family = family_of_class(cls)
        if family is None:
            raise SampleError(f"{path}: _class_name is {cls!r}, not the transformer of a student family")
        return family
    raise SampleError("no run config to say which student family the checkpoint belongs to")


def _architecture_defaults(family: StudentFamily) -> dict:
    import inspect

    sig = inspect.signature(family.diffusers_class(family.transformer_class).__init__)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def check_architecture(transformer_dir: Path, base_transformer: str, family: StudentFamily) -> dict:
    """Compare the checkpoint's transformer config.json with the base transformer's; return the former.

    Every constructor argument counts (patch size, channels, layers, heads, text dims, positional
    embeddings...), each missing key taking diffusers' default, except dropout.
    """
    path = Path(transformer_dir) / "config.json"
    try:
        ckpt = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SampleError(f"cannot read checkpoint transformer config {path}: {e}") from None
    if not isinstance(ckpt, dict):
        raise SampleError(f"{path}: expected a JSON object")
    cls = ckpt.get("_class_name")
    if cls != family.transformer_class:
        raise SampleError(f"{path}: _class_name is {cls!r}, expected {family.transformer_class!r}")
    base = _base_transformer_config(base_transformer, family)
    defaults = _architecture_defaults(family)
    keys = sorted((set(defaults) | set(ckpt) | set(base)) - _ARCH_IGNORED)
    diffs = []
    for k in keys:
        a, b = ckpt.get(k, defaults.get(k)), base.get(k, defaults.get(k))
        if _norm(a) != _norm(b):
            diffs.append(f"{k}: checkpoint {a!r} vs base {b!r}")
    if diffs:
        raise SampleError(f"checkpoint {transformer_dir} is not a fine-tune of the base transformer "
                          f"({base_transformer}); differing config fields: " + "; ".join(diffs))
    return ckpt


def _base_transformer_config(ref: str, family: StudentFamily) -> dict:
    """Config of the base transformer: a pipeline (hub id or folder, subfolder `transformer`) or,
    as `models.student` may name, a transformer folder itself (e.g. another run's checkpoint)."""
    try:
        return family.transformer_config(ref)
    except (OSError, ValueError) as e:
        raise SampleError(f"cannot read the base transformer config from {ref}: {e}") from None


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


# ----------------------------------------------------------------------------- pipeline

def resolve_device_dtype(device: Optional[str], dtype: Optional[str]):
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = dtype or ("bf16" if dev.type == "cuda" else "fp32")
    if name not in DTYPES:
        raise SampleError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
    return dev, name, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _load(what: str, ref: str, fn):
    try:
        return fn()
    except (OSError, ValueError, RuntimeError) as e:
        raise SampleError(f"cannot load the {what} from {ref}: {e}") from None


def build_pipeline(refs: BaseRefs, transformer_dir: Optional[Path], torch_dtype, family: StudentFamily):
    """The family's pipeline with the fine-tuned transformer (None: the base one, for a LoRA
    checkpoint whose adapters are loaded afterwards) and its sampling scheduler."""
    if transformer_dir is None:
        transformer = _load("base transformer", refs.transformer,
                            lambda: family.load_transformer(refs.transformer, torch_dtype))
    else:
        transformer = _load("checkpoint transformer", str(transformer_dir),
                            lambda: family.load_transformer(str(transformer_dir), torch_dtype))
    vae = _load("VAE", refs.vae, lambda: family.load_vae(refs.vae, torch_dtype))
    text_encoder = _load("text encoder", refs.text_encoder, lambda: family.load_text_encoder(refs.text_encoder, torch_dtype))
    tokenizer = _load("tokenizer", refs.tokenizer, lambda: family.load_tokenizer(refs.tokenizer))
    scheduler = _load("scheduler config", refs.scheduler, lambda: family.sampling_scheduler(refs.scheduler))
    return family.pipeline(tokenizer, text_encoder, vae, transformer.eval(), scheduler)


def _check_geometry(frames: int, height: int, width: int, refs: BaseRefs, arch: dict, family: StudentFamily) -> None:
    vae_cfg = _load("VAE config", refs.vae, lambda: family.vae_config(refs.vae))
    spatial, patch = family.spatial_step(vae_cfg, arch)
    temporal = family.temporal_compression(vae_cfg)
    step = spatial * patch
    if frames < 1 or (frames - 1) % temporal:
        raise SampleError(f"--frames {frames}: frames - 1 must be a multiple of the VAE's temporal "
                          f"compression {temporal} (e.g. 49)")
    for name, v in (("--height", height), ("--width", width)):
        if v < step or v % step:
            raise SampleError(f"{name} {v}: must be a positive multiple of {step} "
                              f"(VAE compression {spatial} x patch {patch})")


# ----------------------------------------------------------------------------- the samples log

def video_name(index: int, seed: int, video_index: int) -> str:
    return f"{index:05d}_s{seed}_v{video_index}.mp4"


def read_samples(out: Path) -> list[dict]:
    """Finished videos recorded in OUT/samples.jsonl (a torn last line from a crash is ignored)."""
    path = Path(out) / SAMPLES_FILE
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
            _ = rec["index"], rec["prompt"], rec["seed"], rec["video_index"], rec["file"]
        except (ValueError, KeyError) as e:
            if n == len(lines):
                continue  # torn write of the last line; its video is simply made again
            raise SampleError(f"{path}: line {n} is not a sample record ({e})") from None
        records.append(rec)
    return records


def _append_record(out: Path, record: dict) -> None:
    path = Path(out) / SAMPLES_FILE
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            # Drop the torn tail of a crashed write so that it cannot end up mid-file.
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_eval_csv(out: Path, records: list[dict]) -> None:
    latest = {}
    for rec in records:
        latest[rec["file"]] = rec
    tmp = Path(out) / (EVAL_FILE + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["videopath", "caption"])
        for name in sorted(latest):
            w.writerow([str((Path(out) / name).resolve()), latest[name].get("caption", latest[name]["prompt"])])
    os.replace(tmp, Path(out) / EVAL_FILE)


def _check_resume(out: Path, records: list[dict], settings: dict, prompts: list[Prompt], seed: int) -> None:
    for rec in records:
        old = rec.get("settings", {})
        diffs = [f"{k}: {old.get(k)!r} before, {settings[k]!r} now" for k in _RESUME_KEYS
                 if k in old and old[k] != settings[k]]
        if diffs:
            raise SampleError(f"{out / SAMPLES_FILE} holds videos made with other settings ({'; '.join(diffs)}); "
                              f"use a new --out")
    by_index = {p.index: p.text for p in prompts}
    for rec in records:
        text = by_index.get(rec["index"])
        if rec["seed"] == seed and text is not None and text != rec["prompt"]:
            raise SampleError(f"{out / SAMPLES_FILE}: prompt {rec['index']} was {rec['prompt']!r} before and is "
                              f"{text!r} now (the prompt file changed); use a new --out")


def _done_keys(out: Path, records: list[dict]) -> set[tuple]:
    return {(r["index"], r["prompt"], r["seed"], r["video_index"]) for r in records if (out / r["file"]).is_file()}


# ----------------------------------------------------------------------------- sampling

def sample(opts: SampleOptions, log: Callable[[str], None] = print) -> SampleSummary:
    """Generate the missing videos of `opts.prompts` into `opts.out` (see the module docstring)."""
    import torch

    if opts.num_videos_per_prompt < 1:
        raise SampleError(f"--num-videos-per-prompt {opts.num_videos_per_prompt}: must be >= 1")
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
    prompts = read_prompts(opts.prompts, opts.column, opts.caption_column, opts.limit)
    refs = resolve_base(opts.base, run_cfg, run_dir)
    family = resolve_family(run_cfg, transformer_dir)
    arch = (check_architecture(transformer_dir, refs.transformer, family) if transformer_dir is not None
            else _base_transformer_config(refs.transformer, family))
    d_frames, d_height, d_width = default_geometry(run_cfg)
    frames, height, width = opts.frames or d_frames, opts.height or d_height, opts.width or d_width
    _check_geometry(frames, height, width, refs, arch, family)
    guidance = family.default_guidance if opts.guidance is None else opts.guidance
    fps = family.default_fps if opts.fps is None else opts.fps
    device, dtype_name, torch_dtype = resolve_device_dtype(opts.device, opts.dtype)
    if opts.cpu_offload:
        if device.type == "cpu":
            raise SampleError("--cpu-offload moves models between CPU and an accelerator; there is none here")

    settings = {
        "checkpoint": str(transformer_dir or lora_dir), "base": asdict(refs), "steps": opts.steps,
        "guidance": guidance, "dynamic_cfg": opts.dynamic_cfg, "frames": frames, "height": height,
        "width": width, "fps": fps, "dtype": dtype_name, "scheduler": family.sampler,
        # The text length the run trained with (CogVideoX1.5: 224); else the release's.
        "max_sequence_length": (run_cfg.geometry.text_length if run_cfg is not None
                                else family.text_length(arch)),
    }
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    records = read_samples(out)
    _check_resume(out, records, settings, prompts, opts.seed)
    done = _done_keys(out, records)
    todo = [(p, v) for p in prompts for v in range(opts.num_videos_per_prompt)
            if (p.index, p.text, opts.seed, v) not in done]
    summary = SampleSummary(out=out, skipped=len(prompts) * opts.num_videos_per_prompt - len(todo))
    if summary.skipped:
        log(f"{summary.skipped} video(s) already in {out / SAMPLES_FILE}: skipped")
    if not todo:
        _write_eval_csv(out, records)
        return summary

    pipe = build_pipeline(refs, transformer_dir, torch_dtype, family)
    if lora_dir is not None:
        _load("LoRA adapters", str(lora_dir), lambda: pipe.load_lora_weights(str(lora_dir)))
    if opts.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if opts.vae_slicing:
        pipe.vae.enable_slicing()
    if opts.vae_tiling:
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(leave=False)

    for n, (prompt, v) in enumerate(todo, 1):
        name = video_name(prompt.index, opts.seed, v)
        generator_seed = opts.seed + v
        start = time.perf_counter()
        with torch.inference_mode():
            video = pipe(
                prompt=prompt.text, num_frames=frames, height=height, width=width,
                num_inference_steps=opts.steps, guidance_scale=guidance, **family.call_kwargs(opts.dynamic_cfg),
                num_videos_per_prompt=1, max_sequence_length=settings["max_sequence_length"],
                # A CPU generator gives the same initial noise on every device.
                generator=torch.Generator(device="cpu").manual_seed(generator_seed), output_type="np",
            ).frames[0]
        tmp = out / f".{name}.tmp.mp4"
        write_mp4(to_uint8(np.asarray(video)), tmp, fps)
        os.replace(tmp, out / name)
        seconds = time.perf_counter() - start
        record = {"index": prompt.index, "prompt": prompt.text, "caption": prompt.caption, "seed": opts.seed,
                  "video_index": v, "generator_seed": generator_seed, "file": name, "seconds": round(seconds, 3),
                  "settings": settings}
        _append_record(out, record)
        records.append(record)
        summary.generated += 1
        summary.files.append(name)
        log(f"[{n}/{len(todo)}] {name} ({seconds:.1f} s)")
    _write_eval_csv(out, records)
    return summary


# ----------------------------------------------------------------------------- CLI

def sample_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="RUN/checkpoint-N written by `tsa train` "
                                    "(or the transformer/ folder inside it)."),
    prompts: Path = typer.Option(..., "--prompts", help="A .txt (one prompt a line) or a .csv prompt set."),
    out: Path = typer.Option(..., "--out", help="Output folder: mp4s, samples.jsonl, eval.csv."),
    base: Optional[str] = typer.Option(None, "--base", help="Hub id or pipeline folder of the family for VAE, text "
                                       "encoder, tokenizer, scheduler. Default: the models of RUN/config.yaml."),
    column: Optional[str] = typer.Option(None, "--column", help="CSV column to prompt with "
                                         "(default: caption, else prompt)."),
    caption_column: Optional[str] = typer.Option(None, "--caption-column", help="CSV column recorded as the "
                                                 "caption for the evaluators (default: caption, else prompt)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N prompts."),
    seed: int = typer.Option(42, "--seed", help="Video v of every prompt starts from noise of seed + v."),
    num_videos_per_prompt: int = typer.Option(1, "--num-videos-per-prompt"),
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
) -> None:
    """Generate one mp4 per prompt (and per --num-videos-per-prompt) from a fine-tuned checkpoint."""
    opts = SampleOptions(
        checkpoint=checkpoint, prompts=prompts, out=out, base=base, column=column, caption_column=caption_column,
        limit=limit, seed=seed, num_videos_per_prompt=num_videos_per_prompt, steps=steps, guidance=guidance,
        dynamic_cfg=dynamic_cfg, frames=frames, height=height, width=width, fps=fps, dtype=dtype, device=device,
        cpu_offload=cpu_offload, vae_slicing=vae_slicing, vae_tiling=vae_tiling)
    try:
        summary = sample(opts, log=typer.echo)
    except (SampleError, PromptError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{summary.generated} video(s) written, {summary.skipped} already there: "
               f"{summary.out / SAMPLES_FILE}, {summary.out / EVAL_FILE}")
