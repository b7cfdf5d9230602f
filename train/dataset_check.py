"""`dataset.json` of a preprocess output, checked against the training config before step 1.

Every mismatch names both values: what the shards hold and what the model/config expects.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsa.configs.schema import Config
from tsa.shards.reader import DataError, NotAnOutput, NotUsable, OutputInfo, SampleRef, open_output
from tsa.shards.storage import StorageError, basename, join, parent, resolve


class DatasetMismatch(ValueError):
    """The shards were made for another geometry or model than the training config."""


@dataclass
class DatasetInfo:
    root: str  # the preprocess output (absolute path or URL; holds dataset.json and shards/)
    meta: dict[str, Any]  # parsed dataset.json
    shards: list[str]  # complete shard tars with samples, in shard order
    shard_refs: list[tuple[SampleRef, ...]]  # the samples of each of `shards`, from its marker

    @property
    def latents(self) -> str:
        return self.meta["latents"]

    @property
    def teacher_dtype(self) -> str:
        return self.meta["teacher_dtype"]

    @property
    def mask_ratio(self) -> float:
        return float(self.meta["mask_ratio"])

    @property
    def scaling_factor(self) -> float:
        return float(self.meta["scaling_factor"])

    def latent_norm(self) -> tuple[Any, Any]:
        """(scale, shift) for posterior samples of stored moments: dataset.json's per-channel
        `latent_norm` as tensors [C, 1, 1, 1] (Wan), else (scaling_factor, 0.0) (CogVideoX)."""
        norm = self.meta.get("latent_norm")
        if norm is None:
            return self.scaling_factor, 0.0
        import torch

        return tuple(torch.tensor(norm[k], dtype=torch.float32).view(-1, 1, 1, 1) for k in ("scale", "shift"))

    @property
    def dataset_json(self) -> str:
        return join(self.root, "dataset.json")

    def spec(self, member: str) -> tuple[str, tuple[int, ...]]:
        m = self.meta["members"][member]
        return m["dtype"], tuple(m["shape"])


def _open(path: str | Path) -> OutputInfo:
    """The output at `path`, or at its parent when `path` is its shards/ folder."""
    from tsa.shards.layout import SHARDS_DIR

    try:
        try:
            return open_output(path)
        except NotAnOutput:
            location = resolve(path)
            if basename(location) != SHARDS_DIR:
                raise
            return open_output(parent(location))
    except NotAnOutput as e:
        raise DatasetMismatch(f"--shards: {e}") from None
    except StorageError as e:
        raise DataError(f"--shards: {e}") from None


def probe_dataset(path: str | Path) -> str:
    """The resolved location of the output at `path` (absolute path or URL), after reading its
    dataset.json: a missing bucket, bad credentials or a folder that is not an output are
    reported before anything is written."""
    out = _open(path)
    out.close()
    return out.root


def open_dataset(path: str | Path) -> DatasetInfo:
    """The preprocess output at `path` (or its parent, when `path` is its shards/ folder), with
    every complete shard's marker read and its size checked (a truncated shard stops here,
    before step 1, even with --skip-bad-samples: docs/storage.md)."""
    from tsa.shards.layout import SHARDS_DIR

    out = _open(path)
    meta = out.dataset
    shard_refs: dict[int, tuple[SampleRef, ...]] = {}
    try:
        # shared with tsa view (shards/reader.py): dataset.json keys, version, sizes; the markers are
        # streamed once, each shard's samples taken on the way (no marker kept: ~10K at 1M clips)
        out.check_usable(visit=lambda s, marker: shard_refs.__setitem__(s, out.refs(s, marker)))
    except NotUsable as e:
        raise DatasetMismatch(str(e)) from None
    except StorageError as e:
        raise DataError(str(e)) from None
    # A shard whose clips all failed has a marker but no sample; data streams skip it.
    refs = [(tar, shard_refs[s]) for tar, s in zip(out.shards, out.shard_ids)]
    refs = [(tar, r) for tar, r in refs if r]
    out.close()
    if not refs:
        raise DatasetMismatch(f"{out.where(SHARDS_DIR)}: no complete shard with samples (a shard is complete "
                              "when its .json marker exists)")
    return DatasetInfo(root=out.root, meta=meta, shards=[t for t, _ in refs], shard_refs=[r for _, r in refs])


def needed_members(info: DatasetInfo, cfg: Config) -> list[str]:
    """The .npy members the trainer reads for `align.loss` (baseline fine-tuning reads no
    teacher features, only M-TSA reads the motion map and mask)."""
    names = ["latent.npy"] if info.latents == "sample" else ["latent_mean.npy", "latent_logvar.npy"]
    names.append("text.npy")
    if cfg.align.loss != "none":
        names.append("teacher.npy")
        if info.teacher_dtype == "int8":
            names.append("teacher_scale.npy")
    if cfg.align.loss == "mtsa":
        names.append("mask.npy" if uses_stored_mask(info, cfg) else "motion.npy")
    return names


def uses_stored_mask(info: DatasetInfo, cfg: Config) -> bool:
    """mask.npy holds the top-k mask at the preprocess ratio; another k needs motion.npy."""
    return abs(cfg.align.ratio - info.mask_ratio) < 1e-9


def check_dataset(info: DatasetInfo, cfg: Config, projector_grid: tuple[int, int, int] | None = None,
                  projector_dim: int | None = None) -> None:
    """Raise DatasetMismatch if the shards cannot feed this config's student and projector."""
    ds = info.dataset_json
    geo = info.meta["geometry"]
    g = cfg.geometry

    def same(key: str, shard_value: Any, expected: Any, what: str) -> None:
        if shard_value is None or list(shard_value) != list(expected):
            raise DatasetMismatch(f"{ds}: geometry.{key}={list(shard_value) if shard_value else shard_value} "
                                  f"but {what} is {list(expected)}")

    shard_family = ((info.meta.get("config") or {}).get("models") or {}).get("family", "cogvideox")
    if shard_family != cfg.models.family:
        raise DatasetMismatch(f"{ds}: the shards were made for models.family={shard_family} (its VAE latents and "
                              f"text embeddings), but this config trains models.family={cfg.models.family}")
    frames = f"num_frames={g.num_frames}, height={g.height}, width={g.width}"
    same("latent_shape", geo.get("latent_shape"), g.latent_shape,
         f"the student's latent shape from the config ({frames})")
    same("text_shape", geo.get("text_shape"), g.text_shape,
         "the student's text input from the config (geometry.text_length, geometry.text_dim)")
    if cfg.align.loss != "none":
        grid = projector_grid if projector_grid is not None else g.teacher_grid
        same("teacher_grid", geo.get("teacher_grid"), grid, "the projector's output grid")
        dim = projector_dim if projector_dim is not None else cfg.models.teacher.dim
        if geo.get("teacher_dim") != dim:
            raise DatasetMismatch(f"{ds}: geometry.teacher_dim={geo.get('teacher_dim')} but the projector "
                                  f"outputs {dim} channels (models.teacher.dim)")
    if info.latents not in ("sample", "moments"):
        raise DatasetMismatch(f"{ds}: latents={info.latents!r}, expected sample or moments")
    if info.latents == "moments" and not isinstance(info.meta.get("scaling_factor"), (int, float)):
        norm = info.meta.get("latent_norm")
        channels = g.latent_shape[0]
        if not (isinstance(norm, dict) and all(isinstance(norm.get(k), list) and len(norm[k]) == channels
                                               for k in ("scale", "shift"))):
            raise DatasetMismatch(f"{ds}: latents=moments needs a numeric scaling_factor or latent_norm "
                                  f"scale and shift lists of {channels} values, got scaling_factor="
                                  f"{info.meta.get('scaling_factor')!r}, latent_norm={norm!r}")
    if info.teacher_dtype not in ("float16", "int8"):
        raise DatasetMismatch(f"{ds}: teacher_dtype={info.teacher_dtype!r}, expected float16 or int8")
    n_tokens = g.teacher_grid[0] * g.teacher_grid[1] * g.teacher_grid[2]
    expected = {
        "latent.npy": ("float16", g.latent_shape), "latent_mean.npy": ("float16", g.latent_shape),
        "latent_logvar.npy": ("float16", g.latent_shape), "text.npy": ("float16", g.text_shape),
        "teacher.npy": ("int8" if info.teacher_dtype == "int8" else "float16",
                        (n_tokens, cfg.models.teacher.dim)),
        "teacher_scale.npy": ("float16", (n_tokens,)), "motion.npy": ("float16", g.teacher_grid),
        "mask.npy": ("bool", g.teacher_grid),
    }
    for name in needed_members(info, cfg):
        if name not in info.meta["members"]:
            raise DatasetMismatch(f"{ds}: members has no {name}, which align.loss={cfg.align.loss} "
                                  f"with latents={info.latents} needs")
        dtype, shape = info.spec(name)
        want_dtype, want_shape = expected[name]
        if dtype != want_dtype or list(shape) != list(want_shape):
            raise DatasetMismatch(f"{ds}: members.{name} is {dtype} {list(shape)} but the config "
                                  f"expects {want_dtype} {list(want_shape)}")
