"""Where the preprocess models come from, and the hashes recorded in `dataset.json`.

A model ref is a local folder (diffusers layout, with the component in a subfolder), a hub
id, or `tiny` (materialised by models.tiny). The hash of a component is the sha256
over its files (relative name and content hash, sorted), so the same weights give the same
hash wherever they live. Hub ids are hashed from the local hub cache when present; otherwise
only the hub's revision is recorded (the actors download the weights themselves).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from tsa.configs.schema import Config
from tsa.models.cache import file_sha256, folder_sha256

COMPONENTS = {"vae": "vae", "text_encoder": "text_encoder", "tokenizer": "tokenizer"}  # name -> subfolder


def _local_component(ref: str, subfolder: str) -> Optional[Path]:
    """The component folder of a local ref, or of a hub id already in the local hub cache."""
    p = Path(ref)
    if p.is_dir():
        sub = p / subfolder
        if not sub.is_dir():
            raise FileNotFoundError(f"{ref}: no `{subfolder}` subfolder (expected a diffusers pipeline folder)")
        return sub
    try:
        from huggingface_hub import snapshot_download

        root = snapshot_download(ref, allow_patterns=[f"{subfolder}/*"], local_files_only=True)
        sub = Path(root) / subfolder
        return sub if sub.is_dir() else None
    except Exception:  # not cached, or not a valid repo id: fall back to the revision
        return None


def _cached_hub_repo(ref: str) -> Optional[Path]:
    """The local hub-cache snapshot of a whole repo (a transformers teacher), or None."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: fall back to the revision
        return None


def _hub_revision(ref: str) -> Optional[str]:
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(ref).sha
    except Exception:  # offline or private: the hash stays unknown
        return None


def model_records(unresolved: Config, resolved: Config) -> dict[str, dict[str, Any]]:
    """{name: {"source", "sha256", "revision"?}} for vae, text_encoder, tokenizer and teacher.

    `unresolved` gives the sources as written (e.g. `tiny`); `resolved` the paths to hash.
    """
    from tsa.models.teacher import weights_sha256

    records: dict[str, dict[str, Any]] = {}
    for name, sub in COMPONENTS.items():
        ref = getattr(resolved.models, name)
        local = _local_component(ref, sub)
        rec: dict[str, Any] = {"source": getattr(unresolved.models, name), "sha256": None}
        if local is not None:
            rec["sha256"] = folder_sha256(local)
        else:
            rec["revision"] = _hub_revision(ref)
        records[name] = rec
    teacher = resolved.models.teacher.checkpoint
    if resolved.models.teacher.kind in ("dinov2", "vjepa2"):  # a transformers folder or hub id, hashed like the others
        local = Path(teacher) if Path(teacher).is_dir() else _cached_hub_repo(teacher)
        rec = {"source": unresolved.models.teacher.checkpoint, "sha256": None}
        if local is not None:
            rec["sha256"] = folder_sha256(local)
        else:
            rec["revision"] = _hub_revision(teacher)
        records["teacher"] = rec
        return records
    if not Path(teacher).is_file():
        raise FileNotFoundError(f"models.teacher.checkpoint={teacher}: file not found")
    records["teacher"] = {"source": unresolved.models.teacher.checkpoint, "sha256": weights_sha256(teacher)}
    return records


def vae_normalization(resolved: Config) -> tuple[Optional[float], Optional[dict[str, list[float]]]]:
    """What dataset.json records of the latent normalisation, from the VAE config (read once,
    without loading weights): (scaling_factor, None) when one scalar does it (1.15258426 for
    CogVideoX-2B), else (None, {"scale": [C], "shift": [C]}) (Wan: 1 / latents_std, latents_mean)."""
    from tsa.models.family import student_family

    family = student_family(resolved)
    vae_config = family.vae_config(resolved.models.vae)
    scaling_factor = family.scaling_factor(vae_config)
    if scaling_factor is not None:
        return scaling_factor, None
    scale, shift = family.latent_norm(vae_config)
    return None, {"scale": scale, "shift": shift}
