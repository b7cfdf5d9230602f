"""VideoMAEv2 checkpoint files: read, check against a model's keys, write, hash.

The official checkpoints (OpenGVLab/VideoMAEv2 model zoo, e.g. `vit_b_k710_dl_from_giant.pth`)
are `torch.save`d dicts whose `module` (or `model`) entry holds the ViT state dict with keys
like `blocks.0.attn.qkv.weight`; the same keys may also come from a `.safetensors` file.
"""
from __future__ import annotations

import argparse
import contextlib
import pickle
from pathlib import Path

import torch

WRAPPER_KEYS = ("module", "model")  # the order the official fine-tuning script tries
STRIPPED_PREFIXES = ("module.", "encoder.", "backbone.")
# Classifier head, pooling norm and a stored position table: the project always uses the
# fixed sinusoid table resized to its own grid and the output of the last block.
IGNORED_PREFIXES = ("head.", "fc_norm.", "norm.")
IGNORED_KEYS = ("pos_embed",)
SUFFIXES = (".pth", ".pt", ".safetensors")


class TeacherCheckpointError(ValueError):
    """A teacher checkpoint is missing, unreadable or does not fit the configured ViT."""


def _strip_prefix(key: str) -> str:
    for prefix in STRIPPED_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise TeacherCheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    for wrapper in WRAPPER_KEYS:
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TeacherCheckpointError(
            f"{path}: entry {bad[0]!r} is not a tensor (expected a state dict, or a dict with a "
            f"'module' or 'model' state dict)")
    return obj


def _unpickler_reason(e: Exception) -> str:
    # torch's message wraps the reason in advice to retry with weights_only=False; keep the reason.
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split()).rstrip(". ") or type(e).__name__


def _torch_load_weights_only(path: Path) -> object:
    # The official training script saves {"model": ..., "args": argparse.Namespace, ...};
    # a Namespace only holds attributes, so allowing it keeps the load weights-only.
    allow = getattr(torch.serialization, "safe_globals", None)
    ctx = allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext()
    with ctx:
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ViT tensors of a checkpoint file, prefixes stripped and ignored keys dropped."""
    path = Path(path)
    if not path.is_file():
        raise TeacherCheckpointError(f"teacher checkpoint not found: {path} (models.teacher.checkpoint)")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TeacherCheckpointError(f"{path}: unsupported teacher checkpoint type {suffix!r}; "
                                     f"expected one of {', '.join(SUFFIXES)}")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = _torch_load_weights_only(path)
    except pickle.UnpicklingError as e:  # corrupt, or holds objects weights_only refuses
        raise TeacherCheckpointError(
            f"{path}: cannot read teacher checkpoint with torch.load(weights_only=True): {_unpickler_reason(e)}. "
            f"If the file holds Python objects besides tensors, convert its state dict to .safetensors "
            f"where you trust the file") from e
    except Exception as e:  # corrupt file, bad header
        raise TeacherCheckpointError(f"{path}: cannot read teacher checkpoint: {e}") from e
    state = {}
    for key, tensor in _unwrap(raw, path).items():
        key = _strip_prefix(key)
        if not _is_ignored(key):
            state[key] = tensor
    return state


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], path: str | Path) -> None:
    """Stop with the first missing, unexpected or misshapen key, naming the file and key."""
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TeacherCheckpointError(f"{path}: missing key {missing[0]!r}{more}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise TeacherCheckpointError(f"{path}: unexpected key {unexpected[0]!r}{more}")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise TeacherCheckpointError(
                f"{path}: key {key!r} has shape {list(state[key].shape)}, the configured teacher "
                f"expects {list(shape)} (check models.teacher dim/depth/heads/mlp_ratio and geometry.tubelet)")


def write_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """`.safetensors`, or `.pth`/`.pt` as {"module": state} like the official files."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise TeacherCheckpointError(f"{path}: unsupported teacher checkpoint type {suffix!r}; "
                                     f"expected one of {', '.join(SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"module": state}, path)
    return path


def weights_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes (recorded in dataset.json); the one streaming hash of
    models.cache, which remembers it for big files so a resumed run does not re-hash."""
    from tsa.models.cache import file_sha256

    return file_sha256(Path(path))


def read_hf_config(config_cls, ref: str, kind: str, label: str):
    """transformers config of a `models.teacher.kind` teacher (folder or hub id); errors name the
    config key and the model_type that `kind` needs (e.g. dinov2_with_registers is not dinov2)."""
    try:
        config = config_cls.from_pretrained(ref)
    except Exception as e:  # no config.json, not on the hub, offline
        raise TeacherCheckpointError(f"models.teacher.checkpoint={ref}: cannot read a {label} config "
                                     f"({type(e).__name__}: {e})") from None
    if config.model_type != kind:
        raise TeacherCheckpointError(f"models.teacher.checkpoint={ref}: config.json says model_type "
                                     f"{config.model_type!r}, models.teacher.kind={kind} needs {kind!r}")
    return config


def save_random_hf(model_cls, config, folder, seed: int = 0):
    """Write a random-weight transformers model (fixed seed, transformers' init, then small random
    LayerNorm and bias values so every tensor matters) with save_pretrained. Global RNG unchanged."""
    from pathlib import Path

    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    p.add_(torch.randn_like(p) * 0.02)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
