"""Typed configuration: dataclasses loaded from YAML, with `key=value` overrides.

Every size the pipeline and the trainer use comes from here; nothing is hard-coded.
Derived geometry (latent shape, token grids) is computed by `Geometry` properties so
that `dataset.json` and the model configs can be checked against one source.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

REQUIRED = "???"  # a YAML value that must be set (by the file or by an override)


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the dotted key."""


@dataclass
class Geometry:
    """Clip, latent, text and token-grid sizes (SPEC section 2)."""

    num_frames: int = 49  # clip frames F' fed to the VAE
    height: int = 480
    width: int = 720
    latent_channels: int = 16
    vae_temporal_compression: int = 4
    vae_spatial_compression: int = 8
    student_patch: int = 2  # spatial patch of the student transformer
    # Temporal patch of the student (CogVideoX1.5: 2); the student pads the noisy latent in
    # front with a frame of its own (clean frame 0, fresh noise) to a multiple of it (docs/families.md).
    student_patch_t: int = 1
    teacher_scale: int = 3  # teacher input = frames[1:] resized by 1/teacher_scale
    # [H, W] of the teacher input frames when 1/teacher_scale does not give whole tubelets
    # (CogVideoX1.5's 1360 wide frames); None: height/teacher_scale x width/teacher_scale.
    teacher_size: Optional[list[int]] = None
    tubelet: list[int] = field(default_factory=lambda: [2, 16, 16])  # (Pt, Ph, Pw)
    text_length: int = 226
    text_dim: int = 4096

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """[C, F, H, W] of one VAE latent, e.g. [16, 13, 60, 90]."""
        f = (self.num_frames - 1) // self.vae_temporal_compression + 1
        s = self.vae_spatial_compression
        return (self.latent_channels, f, self.height // s, self.width // s)

    @property
    def student_grid(self) -> tuple[int, int, int]:
        """(F, H, W) of the student's video tokens, e.g. (13, 30, 45); with a temporal patch
        pt, F = ceil(latent frames / pt) (the padded latent), e.g. (11, 48, 85) for CogVideoX1.5."""
        _, f, h, w = self.latent_shape
        pt = self.student_patch_t
        return (-(-f // pt), h // self.student_patch, w // self.student_patch)

    @property
    def student_pad_frames(self) -> int:
        """Latent frames added in front (clean frame 0 with fresh noise) to fill the first temporal patch."""
        return self.student_grid[0] * self.student_patch_t - self.latent_shape[1]

    @property
    def projector_time_scale(self) -> int:
        """Time upsampling of the projector: teacher time slots per student frame after frame 0
        is dropped (2 at paper geometry: 24 / 12; 4 for CogVideoX1.5: 40 / 10)."""
        return self.teacher_grid[0] // max(1, self.student_grid[0] - 1)

    @property
    def teacher_input(self) -> tuple[int, int, int]:
        """(T, H, W) of the teacher's frames, e.g. (48, 160, 240): frame 0 dropped."""
        if self.teacher_size is not None:
            return (self.num_frames - 1, *self.teacher_size)
        return (self.num_frames - 1, self.height // self.teacher_scale, self.width // self.teacher_scale)

    @property
    def teacher_grid(self) -> tuple[int, int, int]:
        """(F, H, W) of teacher tokens and motion maps, e.g. (24, 10, 15)."""
        t, h, w = self.teacher_input
        pt, ph, pw = self.tubelet
        return (t // pt, h // ph, w // pw)

    @property
    def text_shape(self) -> tuple[int, int]:
        return (self.text_length, self.text_dim)

    def validate(self) -> None:
        if len(self.tubelet) != 3 or min(self.tubelet) < 1:
            raise ConfigError(f"geometry.tubelet={self.tubelet}: expected three positive sizes [Pt, Ph, Pw]")
        if self.teacher_size is not None and (len(self.teacher_size) != 2 or min(self.teacher_size) < 1):
            raise ConfigError(f"geometry.teacher_size={self.teacher_size}: expected [H, W] or null")
        if self.student_patch_t < 1:
            raise ConfigError(f"geometry.student_patch_t={self.student_patch_t}: must be >= 1")
        t, h, w = self.teacher_input
        pt, ph, pw = self.tubelet
        checks = [
            ((self.num_frames - 1) % self.vae_temporal_compression == 0,
             f"geometry.num_frames={self.num_frames}: num_frames - 1 must be a multiple of "
             f"vae_temporal_compression={self.vae_temporal_compression}"),
            (self.height % (self.vae_spatial_compression * self.student_patch) == 0
             and self.width % (self.vae_spatial_compression * self.student_patch) == 0,
             f"geometry.height/width={self.height}x{self.width} must be multiples of "
             f"vae_spatial_compression*student_patch"),
            (self.teacher_size is not None
             or (self.height % self.teacher_scale == 0 and self.width % self.teacher_scale == 0),
             "geometry.height/width must be multiples of geometry.teacher_scale (or set geometry.teacher_size)"),
            (t % pt == 0 and h % ph == 0 and w % pw == 0,
             f"geometry: teacher input {t}x{h}x{w} is not divisible by tubelet {self.tubelet}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        sf, tf = self.student_grid[0], self.teacher_grid[0]
        if sf >= 2 and tf % (sf - 1):  # (one student frame: the projector names the problem)
            raise ConfigError(
                f"geometry: {tf} teacher time slots are not a whole multiple of the {sf - 1} student frames "
                f"after frame 0 (student grid {self.student_grid}, teacher grid {self.teacher_grid}); "
                "the projector upsamples time by an integer factor (docs/families.md)")


@dataclass
class TinyStudent:
    """Architecture of the random-weight student used when `models.student` is `tiny`, and the
    few release settings that the tiny VAE and scheduler copy (defaults: CogVideoX-2B's)."""

    num_attention_heads: int = 2
    attention_head_dim: int = 16
    num_layers: int = 2
    time_embed_dim: int = 32
    use_rotary_positional_embeddings: bool = False  # CogVideoX-5B and 1.5: 3D RoPE
    patch_bias: bool = True  # CogVideoX1.5: false
    vae_scaling_factor: float = 1.15258426  # CogVideoX-5B and 1.5: 0.7
    snr_shift_scale: float = 3.0  # scheduler; CogVideoX-5B and 1.5: 1.0


@dataclass
class TeacherConfig:
    """The teacher (docs/teacher.md). `kind` videomaev2 (SPEC section 2): `checkpoint` is a .pth
    or .safetensors path; dinov2 / vjepa2: a transformers Dinov2Model / VJEPA2Model folder or hub
    id. Any may be `tiny`. dim/depth/heads/mlp_ratio describe the model (the tiny one is built from
    them; a loaded one must have hidden_size == dim); pos_grid is VideoMAEv2's pretrained table."""

    checkpoint: str = REQUIRED
    kind: str = "videomaev2"  # videomaev2 | dinov2 | vjepa2
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    pos_grid: list[int] = field(default_factory=lambda: [8, 14, 14])  # grid of the pretrained table

    def validate(self, geometry: "Geometry") -> None:
        if self.kind not in TEACHER_KINDS:
            raise ConfigError(f"models.teacher.kind={self.kind!r}: expected one of {', '.join(TEACHER_KINDS)}")
        if self.kind in ("dinov2", "vjepa2"):
            pt, ph, pw = geometry.tubelet
            if ph != pw:
                raise ConfigError(f"geometry.tubelet={geometry.tubelet}: models.teacher.kind={self.kind} needs a "
                                  f"square patch (Ph == Pw == the model's patch_size: 14 for DINOv2, 16 for V-JEPA 2)")


TEACHER_KINDS = ("videomaev2", "dinov2", "vjepa2")
STUDENT_FAMILIES = ("cogvideox", "wan")  # models/family.py FAMILIES


@dataclass
class ModelsConfig:
    """Where each model comes from: a hub id, a local path, or `tiny` (random weights, fixed
    seed, built from the tiny architecture below and saved so it loads through the real path)."""

    # The student family (models/<family>.py): cogvideox (2B, 5B, 1.5-5B) | wan (Wan2.1-T2V).
    family: str = "cogvideox"
    student: str = "THUDM/CogVideoX-2b"  # subfolder transformer
    vae: str = "THUDM/CogVideoX-2b"  # subfolder vae
    text_encoder: str = "THUDM/CogVideoX-2b"  # subfolder text_encoder
    tokenizer: str = "THUDM/CogVideoX-2b"  # subfolder tokenizer
    scheduler: str = "THUDM/CogVideoX-2b"  # subfolder scheduler
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    tiny_student: TinyStudent = field(default_factory=TinyStudent)
    tiny_seed: int = 0


@dataclass
class AlignConfig:
    loss: str = "mtsa"  # mtsa | tsa | trd | repa | none
    weight: float = 0.5  # lambda of Eq. 14
    tau: float = 0.1
    ratio: float = 0.2  # k of Eq. 12
    layer: int = 18  # 1-indexed: output of block `layer`
    margin: float = 0.1  # TRD margin
    projector_hidden: int = 2048
    query_chunk: int = 256  # rows per chunk in the M-TSA custom backward

    def validate(self) -> None:
        if self.loss not in {"mtsa", "tsa", "trd", "repa", "none"}:
            raise ConfigError(f"align.loss={self.loss!r}: expected one of mtsa, tsa, trd, repa, none")
        if not self.tau > 0:
            raise ConfigError(f"align.tau={self.tau}: must be > 0")
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"align.ratio={self.ratio}: must be in (0, 1]")
        if self.layer < 1:
            raise ConfigError(f"align.layer={self.layer}: blocks are 1-indexed")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"align.weight={self.weight}: must be a finite number >= 0")
        if self.query_chunk < 1 or self.projector_hidden < 1:
            raise ConfigError(f"align.query_chunk={self.query_chunk} and align.projector_hidden="
                              f"{self.projector_hidden}: must be >= 1")


@dataclass
class StageResources:
    """One Ray actor pool of the preprocess pipeline."""

    num_gpus: float = 0.0
    num_cpus: float = 1.0
    batch_size: int = 1
    # "auto": a GPU stage gets one actor per share of the cluster's GPUs (pipeline/plan.py), a CPU
    # stage one actor; an integer is used as is.
    actors: int | str = "auto"


@dataclass
class DecodeResources(StageResources):
    """The decode tasks (CPU); `actors` is unused (Ray Data runs as many tasks as CPUs allow)."""

    num_cpus: float = 1.0
    # A clip whose decode runs longer is a failed row ("decode timed out after N s"); the decode
    # runs in a child process that is killed then (decord can spin forever in native code).
    timeout_s: float = 300.0


@dataclass
class PreprocessConfig:
    samples_per_shard: int = 104  # about 1.0 GB per shard at paper size (9.7 MB a sample, float16)
    latents: str = "sample"  # sample | moments
    teacher_dtype: str = "float16"  # float16 | int8
    mask_ratio: float = 0.2
    preview_quality: int = 85
    vae_slicing: bool = True
    vae_tiling: bool = True
    decode: DecodeResources = field(default_factory=DecodeResources)
    teacher: StageResources = field(default_factory=lambda: StageResources(num_gpus=0.25, batch_size=4))
    vae: StageResources = field(default_factory=lambda: StageResources(num_gpus=0.5, batch_size=1))
    text: StageResources = field(default_factory=lambda: StageResources(num_gpus=0.25, batch_size=16))
    dtype: str = "bfloat16"  # compute dtype of the GPU stages (float32 on CPU)
    # separate: three actor pools (VAE, teacher, T5), each sized and placed on its own.
    # shared: one pool whose actors hold all three models and run them in turn on each batch
    # (one process and one CUDA context per actor instead of three; docs/preprocess.md).
    model_actors: str = "separate"
    # The run exits non-zero when every clip or more than this fraction of the clips failed.
    max_failed_fraction: float = 0.5
    # No clip finished for this long while clips remain: stop with a message naming what waits.
    stall_timeout_s: float = 1800.0

    def validate(self) -> None:
        if self.latents not in {"sample", "moments"}:
            raise ConfigError(f"preprocess.latents={self.latents!r}: expected sample or moments")
        if self.teacher_dtype not in {"float16", "int8"}:
            raise ConfigError(f"preprocess.teacher_dtype={self.teacher_dtype!r}: expected float16 or int8")
        if self.samples_per_shard < 1:
            raise ConfigError("preprocess.samples_per_shard must be >= 1")
        if not 0 < self.mask_ratio <= 1:
            raise ConfigError(f"preprocess.mask_ratio={self.mask_ratio}: must be in (0, 1]")
        if not 1 <= self.preview_quality <= 100:
            raise ConfigError(f"preprocess.preview_quality={self.preview_quality}: must be in 1..100")
        if self.dtype not in {"float32", "bfloat16", "float16"}:
            raise ConfigError(f"preprocess.dtype={self.dtype!r}: expected float32, bfloat16 or float16")
        for name in ("decode", "teacher", "vae", "text"):
            res = getattr(self, name)
            if res.num_gpus < 0 or res.num_cpus < 0 or res.batch_size < 1:
                raise ConfigError(f"preprocess.{name}: num_gpus/num_cpus must be >= 0, batch_size >= 1")
            if not (res.actors == "auto" or (isinstance(res.actors, int) and res.actors >= 1)):
                raise ConfigError(f"preprocess.{name}.actors={res.actors!r}: expected auto or an integer >= 1")
        if self.model_actors not in {"separate", "shared"}:
            raise ConfigError(f"preprocess.model_actors={self.model_actors!r}: expected separate or shared")
        if self.model_actors == "shared":
            gpus = shared_actor_gpus(self)
            if gpus > 1 and gpus != int(gpus):
                raise ConfigError(
                    f"preprocess.model_actors=shared: one actor would need the sum of preprocess.vae/teacher/"
                    f"text.num_gpus = {gpus:g} GPUs; Ray gives an actor a fraction of one GPU or whole GPUs")
        if not 0 <= self.max_failed_fraction <= 1:
            raise ConfigError(f"preprocess.max_failed_fraction={self.max_failed_fraction}: must be in [0, 1]")
        if not self.decode.timeout_s > 0 or not self.stall_timeout_s > 0:
            raise ConfigError(f"preprocess.decode.timeout_s={self.decode.timeout_s} and preprocess.stall_timeout_s="
                              f"{self.stall_timeout_s}: must be > 0")


def shared_actor_gpus(p: PreprocessConfig) -> float:
    """GPUs of one `model_actors: shared` actor: the three models' shares together."""
    return round(p.vae.num_gpus + p.teacher.num_gpus + p.text.num_gpus, 6)


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the student's attention projections instead of a full fine-tune."""

    rank: int = 0  # 0: full fine-tune (the paper); > 0: LoRA of this rank, the base transformer frozen
    # Learning rate of the adapters (train.lr is the full fine-tune's): B starts at zero, so the
    # full fine-tune's 2e-6 barely moves them; 1e-4 as diffusers' CogVideoX LoRA scripts and VideoREPA.
    lr: float = 1e-4
    alpha: float = 0.0  # scaling alpha / rank; 0 means alpha = rank (scale 1)
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    dropout: float = 0.0

    def validate(self) -> None:
        if self.rank < 0 or self.alpha < 0:
            raise ConfigError(f"train.lora.rank={self.rank}, train.lora.alpha={self.alpha}: must be >= 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lora.lr={self.lr}: must be a finite number > 0")
        if self.rank > 0 and not self.target_modules:
            raise ConfigError("train.lora.target_modules is empty: name the layers that get adapters")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"train.lora.dropout={self.dropout}: must be in [0, 1)")


@dataclass
class TrainConfig:
    lr: float = 2e-6
    projector_lr: float = 2e-6
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    max_steps: int = 4000
    global_batch: int = 32
    micro_batch: int = 1
    grad_clip: float = 1.0
    mixed_precision: str = "bf16"  # bf16 | no
    gradient_checkpointing: bool = True
    compile: bool = False
    checkpoint_every: int = 500
    keep_last: int = 2
    shuffle_buffer: int = 256  # sample references per data stream (docs/train.md)
    data_streams: int = 32  # seeded streams over the shards; a multiple of the worker count
    num_workers: int = 4  # DataLoader workers per trainer process
    prefetch_factor: int = 2
    skip_bad_samples: bool = False
    max_nonfinite_in_row: int = 5
    strategy: str = "ddp"  # ddp | fsdp2 (with more than one worker)
    log_every: int = 1
    # Ray Train workers: restarts from the last checkpoint after a lost worker or node (-1: no
    # limit, 0: none); errors of the run itself (config, data, storage) never restart (docs/train.md).
    max_failures: int = 3
    lora: LoraConfig = field(default_factory=LoraConfig)
    validate_every: int = 500  # videos every N optimizer steps (0: never); docs/train.md "Validation videos"
    validation_prompts: str = "bundled"  # a text file, one prompt a line; bundled: configs/validation_prompts.txt
    validation_steps: int = 10  # denoising steps per video
    validation_guidance: float = 6.0
    validation_seed: int = 42  # prompt i uses seed + i, the same at every validation

    def validate(self) -> None:
        if self.mixed_precision not in {"bf16", "no"}:
            raise ConfigError(f"train.mixed_precision={self.mixed_precision!r}: expected bf16 or no")
        if self.strategy not in {"ddp", "fsdp2"}:
            raise ConfigError(f"train.strategy={self.strategy!r}: expected ddp or fsdp2")
        if self.global_batch < 1 or self.micro_batch < 1:
            raise ConfigError("train.global_batch and train.micro_batch must be >= 1")
        if self.data_streams < 1:
            raise ConfigError(f"train.data_streams={self.data_streams}: must be >= 1")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas={self.betas}: expected two numbers in [0, 1)")
        if self.validation_steps < 1:
            raise ConfigError(f"train.validation_steps={self.validation_steps}: must be >= 1")
        for name in ("warmup_steps", "checkpoint_every", "max_steps", "num_workers", "validate_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)}: must be >= 0")
        if self.max_failures < -1:
            raise ConfigError(f"train.max_failures={self.max_failures}: expected -1 (no limit), 0 or more")
        self.lora.validate()
        if self.keep_last < 1:
            raise ConfigError(f"train.keep_last={self.keep_last}: must be >= 1 (the last checkpoint is "
                              "what --resume continues from)")


@dataclass
class Config:
    seed: int = 0
    geometry: Geometry = field(default_factory=Geometry)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, optional: Iterable[str] = ()) -> "Config":
        """Check every section; keys in `optional` may stay unset (`???`), e.g. the teacher
        checkpoint, which only `tsa preprocess` reads."""
        missing = [k for k in _required_left(self, "") if k not in set(optional)]
        if missing:
            raise ConfigError(f"missing required config key(s): {', '.join(missing)}")
        self.geometry.validate()
        self.models.teacher.validate(self.geometry)
        if self.models.family not in STUDENT_FAMILIES:
            raise ConfigError(f"models.family={self.models.family!r}: expected one of {', '.join(STUDENT_FAMILIES)}")
        self.align.validate()
        self.preprocess.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- loading

def _required_left(obj: Any, prefix: str):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _required_left(value, key + ".")
        elif value == REQUIRED:
            yield key


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (and build nested dataclasses)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 2e-6 as a string (no dot); accept numeric strings.
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            hint = " (YAML reads unquoted yes/no/on/off as booleans: quote the value)" \
                if isinstance(value, bool) else ""
            raise ConfigError(f"{key}: expected a string, got {value!r}{hint}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, names, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ConfigError(f"unknown config key {prefix}{k}{hint}")
    base = cls()
    kwargs = {}
    for name in names:
        if name in data:
            value = data[name]
            if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
                # Nested sections merge over their defaults.
                merged = dataclasses.asdict(getattr(base, name))
                _deep_update(merged, value)
                value = merged
            kwargs[name] = _coerce(value, hints[name], prefix + name)
    return cls(**kwargs)


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def _override_type(parts: list[str]) -> Any:
    """The annotation of the Config field at dotted `parts`, or None if there is none."""
    tp: Any = Config
    for p in parts:
        if not dataclasses.is_dataclass(tp):
            return None
        tp = _field_types(tp).get(p)
    return tp


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. align.tau=0.05")
    key, raw = override.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        value = e
    if _override_type(parts) is str and not isinstance(value, str):
        value = raw.strip()  # as typed: YAML reads `no`, `on`, `2024` as other types
    if isinstance(value, yaml.YAMLError):
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({value})")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {p} is not a section")
    node[parts[-1]] = value


def config_from_dict(data: dict[str, Any], overrides: Optional[list[str]] = None,
                     optional: Iterable[str] = ()) -> Config:
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy, plain types
    for o in overrides or []:
        _apply_override(data, o)
    return _build(Config, data).validate(optional)


def load_config(path: str | Path | None = None, overrides: Optional[list[str]] = None,
                optional: Iterable[str] = ()) -> Config:
    """Read a YAML config (default: the paper defaults) and apply `key=value` overrides.

    `path` may be a file or the name of a bundled config (`tiny`, `cogvideox2b_mtsa`).
    Required keys listed in `optional` may stay unset (a command that never reads them).
    """
    path = resolve_config_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return config_from_dict(data, overrides, optional)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


BUNDLED = Path(__file__).resolve().parent


def resolve_config_path(path: str | Path | None) -> Path:
    if path is None:
        return BUNDLED / "cogvideox2b_mtsa.yaml"
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config {path} is a folder; expected a YAML file or a bundled name")
    if p.exists():
        return p
    bundled = BUNDLED / f"{path}.yaml"
    if bundled.exists():
        return bundled
    raise ConfigError(f"config file not found: {path} (bundled: "
                      f"{', '.join(sorted(q.stem for q in BUNDLED.glob('*.yaml')))})")
