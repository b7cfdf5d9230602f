"""`dataset.json`: what a preprocess output holds, and the check that a rerun matches it.

The trainer reads `geometry`, `members`, `latents`, `teacher_dtype`, `mask_ratio` and
`scaling_factor` and checks them against its own config before step 1. A rerun of
`tsa preprocess` into the same folder compares `config_fingerprint` (the config parts that
change the bytes) and `inputs_fingerprint` (the ordered clip list) and refuses to mix.
"""
from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

from tsa.configs.schema import Config
from tsa.shards.layout import DATASET_JSON, FORMAT_VERSION, FRAME_RULE, member_specs, preview_layout

# Per-stage Ray resources and run policy (timeouts, failure threshold): never change the bytes of a sample.
RESOURCE_KEYS = ("decode", "teacher", "vae", "text", "model_actors", "max_failed_fraction", "stall_timeout_s")
PREPROCESS_MODELS = ("vae", "text_encoder", "tokenizer", "teacher")
GEOMETRY_ADDED = {"student_patch_t": 1, "teacher_size": None}  # key: value that equals the older outputs
TEACHER_KIND_DEFAULT = "videomaev2"  # models.teacher.kind, added after format 1


class OutputMismatch(RuntimeError):
    """`--out` already holds a preprocess output made with another config or input list."""


def tool_version() -> str:
    try:
        return version("tsa")
    except PackageNotFoundError:
        return "0+unknown"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=list).encode()).hexdigest()


def fingerprinted_config(cfg_dict: dict[str, Any], models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The parts of the config (plus weight hashes) that change the output bytes, flattened to
    dotted keys so a mismatch can name them."""
    pre = {k: v for k, v in cfg_dict["preprocess"].items() if k not in RESOURCE_KEYS}
    # The student and scheduler do not touch the cache: training another student reuses it.
    models_used = {k: cfg_dict["models"][k] for k in PREPROCESS_MODELS}
    if models_used["teacher"].get("kind", TEACHER_KIND_DEFAULT) == TEACHER_KIND_DEFAULT:  # as before `kind` existed
        models_used["teacher"] = {k: v for k, v in models_used["teacher"].items() if k != "kind"}
    family = cfg_dict["models"].get("family", "cogvideox")
    if family != "cogvideox":  # the family encodes text and normalises latents its own way
        models_used["family"] = family
    # Geometry keys added after format 1 are left out at their old implicit value, so outputs
    # written before they existed keep their fingerprint (and reruns resume them).
    geometry = {k: v for k, v in cfg_dict["geometry"].items() if GEOMETRY_ADDED.get(k, object()) != v}
    parts = {"format_version": FORMAT_VERSION, "geometry": geometry,
             "models": models_used, "preprocess": pre,
             "weights": {name: rec.get("sha256") for name, rec in models.items()}}
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = node

    walk("", parts)
    return flat


def config_fingerprint(cfg_dict: dict[str, Any], models: dict[str, dict[str, Any]]) -> str:
    return _sha(fingerprinted_config(cfg_dict, models))[:16]


def inputs_fingerprint(items: list[tuple]) -> str:
    """Hash of the ordered input list (tuples of JSON values, e.g. key, video, caption)."""
    return _sha(items)[:16]


def build_dataset_info(cfg: Config, *, models: dict[str, dict[str, Any]], num_clips: int,
                       inputs_fp: str, scaling_factor: Optional[float], source: str,
                       latent_norm: Optional[dict[str, list[float]]] = None) -> dict[str, Any]:
    """The `dataset.json` dict. `cfg` has its model refs unresolved (e.g. `tiny`); `models` maps
    a model name to {"source", "sha256"}."""
    g, p = cfg.geometry, cfg.preprocess
    cfg_dict = cfg.to_dict()
    lay = preview_layout(cfg)
    members = {name: {"dtype": dt, "shape": list(shape)} for name, (dt, shape) in member_specs(cfg).items()}
    members["preview.jpg"] = {"dtype": "jpeg", "shape": [lay["rows"] * lay["tile_height"],
                                                          lay["cols"] * lay["tile_width"], 3]}
    members["meta.json"] = {"dtype": "json", "shape": []}
    n_shards = (num_clips + p.samples_per_shard - 1) // p.samples_per_shard
    norm = {} if latent_norm is None else {"latent_norm": latent_norm}  # per-channel families (Wan)
    return {
        "format_version": FORMAT_VERSION,
        "tool_version": tool_version(),
        "source": source,
        "config": cfg_dict,
        "config_fingerprint": config_fingerprint(cfg_dict, models),
        "inputs_fingerprint": inputs_fp,
        "geometry": {
            "num_frames": g.num_frames, "height": g.height, "width": g.width,
            "latent_shape": list(g.latent_shape), "text_shape": list(g.text_shape),
            "teacher_grid": list(g.teacher_grid), "teacher_dim": cfg.models.teacher.dim,
            "teacher_input": list(g.teacher_input), "tubelet": list(g.tubelet),
            "student_grid": list(g.student_grid),
        },
        "frame_rule": FRAME_RULE,
        "preview": lay,
        "latents": p.latents,
        "scaling_factor": scaling_factor,
        **norm,
        "teacher_dtype": p.teacher_dtype,
        "mask_ratio": p.mask_ratio,
        "members": members,
        "models": models,
        "samples_per_shard": p.samples_per_shard,
        "num_clips": num_clips,
        "num_shards": n_shards,
    }


def read_dataset_info(out: Path) -> Optional[dict[str, Any]]:
    path = Path(out) / DATASET_JSON
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OutputMismatch(f"{path}: not valid JSON ({e}); use --overwrite to start over") from None


def _hash_unknown(key: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    # A hub model that was not in the local cache yet has no hash (its actors download it);
    # the rerun after a crash finds it cached and hashes it. The model ids still must match.
    return key.startswith("weights.") and (a.get(key) is None or b.get(key) is None)


def check_same_output(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    """Raise OutputMismatch naming the differing keys when a rerun would mix two outputs."""
    if old.get("format_version") != new["format_version"]:
        raise OutputMismatch(f"{out} was written with format_version {old.get('format_version')}, this "
                             f"tool writes {new['format_version']}; use --overwrite or another --out")
    if not isinstance(old.get("config"), dict):
        raise OutputMismatch(f"{out}/dataset.json has no `config` entry: not a tsa preprocess output; "
                             f"use --overwrite or another --out")
    if old.get("config_fingerprint") != new["config_fingerprint"]:
        a = fingerprinted_config(old["config"], old.get("models", {}))
        b = fingerprinted_config(new["config"], new["models"])
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not _hash_unknown(k, a, b)]
        if diff:  # none left: only a weight hash that one run could not compute (same model ids)
            shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:8])
            raise OutputMismatch(f"{out} holds a preprocess output made with a different config ({shown}); "
                                 f"use --overwrite to start over or choose another --out")
    if old.get("inputs_fingerprint") != new["inputs_fingerprint"]:
        raise OutputMismatch(
            f"{out} holds a preprocess output of a different clip list ({old.get('num_clips')} clips before, "
            f"{new['num_clips']} now: --src, --subset, --limit or a caption changed); use --overwrite or another --out")
