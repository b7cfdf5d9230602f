"""Names and shapes of a `tsa preprocess` output folder (SPEC section 4).

    OUT/dataset.json   OUT/manifest.parquet   OUT/masks.h5
    OUT/shards/shard-NNNNNN.tar   OUT/shards/shard-NNNNNN.json (done marker + member index)

One place for every file name, member name, dtype and shape, so that the writer, the
reader, the synthetic maker and the checks cannot drift apart.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from tsa.configs.schema import Config

FORMAT_VERSION = 1

DATASET_JSON = "dataset.json"
MANIFEST = "manifest.parquet"
MASKS = "masks.h5"
SUBSET_FILE = "subset.txt"  # `tsa preprocess --sample N` writes the chosen video names here
SHARDS_DIR = "shards"
TMP_SUFFIX = ".tmp"  # a tar being written: never visible under its final name

# Manifest columns written for every row (CSV extras follow, see `extra_column_name`).
MANIFEST_COLUMNS = ["key", "video", "caption", "status", "error", "shard", "fps", "frames", "width",
                    "height", "seconds"]
STATUSES = ("ok", "failed", "skipped")

FRAME_RULE = ("stride s = max(1, n // num_frames); frames 0, s, 2s, ... first num_frames; a clip shorter "
              "than num_frames repeats its last frame; center-crop to height:width, then bilinear "
              "antialiased resize to height x width")


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def shard_tar(out: Path, shard: int) -> Path:
    return Path(out) / SHARDS_DIR / f"{shard_name(shard)}.tar"


def shard_marker(out: Path, shard: int) -> Path:
    return Path(out) / SHARDS_DIR / f"{shard_name(shard)}.json"


def shard_of(index: int, samples_per_shard: int) -> int:
    """Shard id of the clip at position `index` of the input list (after subset and limit)."""
    return index // samples_per_shard


def num_shards(n_clips: int, samples_per_shard: int) -> int:
    return (n_clips + samples_per_shard - 1) // samples_per_shard


def extra_column_name(name: str) -> str:
    """A CSV column kept in the manifest; one that clashes with ours (OpenVid has `fps`,
    `seconds`, `frame`) is kept as `csv_<name>`."""
    return f"csv_{name}" if name in MANIFEST_COLUMNS else name


def base_key(video: str) -> str:
    """`__key__` of a clip: its file name without extension, dots replaced by `_` (webdataset
    splits member names at the first dot)."""
    name = Path(video).name
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem.replace(".", "_") or "clip"


def disambiguated_key(video: str) -> str:
    """The key of a later clip whose base key is taken: a short hash of its path appended."""
    return f"{base_key(video)}_{hashlib.sha1(video.encode()).hexdigest()[:8]}"


def member_specs(cfg: Config) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Array members of each sample: name -> (numpy dtype name, shape), from the config."""
    g, p = cfg.geometry, cfg.preprocess
    grid = tuple(g.teacher_grid)
    n_tokens = grid[0] * grid[1] * grid[2]
    dim = cfg.models.teacher.dim
    specs: dict[str, tuple[str, tuple[int, ...]]] = {}
    if p.latents == "sample":
        specs["latent.npy"] = ("float16", tuple(g.latent_shape))
    else:
        specs["latent_mean.npy"] = ("float16", tuple(g.latent_shape))
        specs["latent_logvar.npy"] = ("float16", tuple(g.latent_shape))
    specs["text.npy"] = ("float16", tuple(g.text_shape))
    if p.teacher_dtype == "int8":
        specs["teacher.npy"] = ("int8", (n_tokens, dim))
        specs["teacher_scale.npy"] = ("float16", (n_tokens,))
    else:
        specs["teacher.npy"] = ("float16", (n_tokens, dim))
    specs["motion.npy"] = ("float16", grid)
    specs["mask.npy"] = ("bool", grid)
    return specs


def member_names(cfg: Config) -> list[str]:
    """All members of a sample, in the order they are written to the tar."""
    return [*member_specs(cfg), "preview.jpg", "meta.json"]


def preview_layout(cfg: Config) -> dict[str, int]:
    """Sprite geometry: one tile per teacher time slot, half the teacher input size, 6 a row."""
    t_slots = cfg.geometry.teacher_grid[0]
    _, h, w = cfg.geometry.teacher_input
    cols = min(6, t_slots)
    rows = (t_slots + cols - 1) // cols
    return {"tiles": t_slots, "tile_height": h // 2, "tile_width": w // 2, "cols": cols, "rows": rows}
