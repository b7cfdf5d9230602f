"""Which models `tsa sample` loads: the checkpoint's transformer (full fine-tune or LoRA), the
base model's other components (from `--base` or the run's config.yaml), the student family, the
architecture check, and the default geometry, device and dtype. Nothing is loaded here but
config files."""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from tsa.configs.schema import Config, ConfigError, load_config
from tsa.models.family import StudentFamily, family_of_class, student_family

PAPER_FRAMES, PAPER_HEIGHT, PAPER_WIDTH = 49, 480, 720
RUN_CONFIG = "config.yaml"
DTYPES = ("bf16", "fp16", "fp32")

# Transformer config keys that do not change the architecture or the function it computes.
_ARCH_IGNORED = {"dropout", "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}


class SampleError(ValueError):
    """The checkpoint, base model, options or output folder are unusable; the message says which."""


@dataclass
class BaseRefs:
    """Where each base component comes from (hub id or folder; loaded from its subfolder)."""

    transformer: str  # only its config.json is read, to check the checkpoint's architecture
    vae: str
    text_encoder: str
    tokenizer: str
    scheduler: str


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
    base = base_transformer_config(base_transformer, family)
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


def base_transformer_config(ref: str, family: StudentFamily) -> dict:
    """Config of the base transformer: a pipeline (hub id or folder, subfolder `transformer`) or,
    as `models.student` may name, a transformer folder itself (e.g. another run's checkpoint)."""
    try:
        return family.transformer_config(ref)
    except (OSError, ValueError) as e:
        raise SampleError(f"cannot read the base transformer config from {ref}: {e}") from None


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def default_dtype(device_type: str, dtype: Optional[str]) -> str:
    """`dtype` checked, or the default for the device the pipelines run on: bf16 on CUDA (as
    VideoREPA samples), fp32 on a CPU."""
    name = dtype or ("bf16" if device_type == "cuda" else "fp32")
    if name not in DTYPES:
        raise SampleError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
    return name


def _load(what: str, ref: str, fn):
    try:
        return fn()
    except (OSError, ValueError, RuntimeError) as e:
        raise SampleError(f"cannot load the {what} from {ref}: {e}") from None


def check_geometry(frames: int, height: int, width: int, refs: BaseRefs, arch: dict, family: StudentFamily) -> None:
    """Frames and size the family's VAE and patch size accept (from config files only)."""
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
