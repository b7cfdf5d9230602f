"""Checkpoints that resume exactly: OUT/checkpoint-{step}/

    transformer/              diffusers format (config.json + safetensors): loads with
                              the family's transformer class (CogVideoXTransformer3DModel,
                              WanTransformer3DModel).from_pretrained, drops into its pipeline
    pytorch_lora_weights.safetensors   instead of transformer/ with train.lora.rank > 0: the adapters,
                              for the pipeline's load_lora_weights (models/lora.py)
    projector.safetensors     the projector's weights
    optimizer.pt              AdamW state keyed by parameter name (torch.save of tensors and numbers),
                              written by rank 0: one worker, or DDP (every rank holds the same state)
    optimizer/                FSDP2 instead: each rank writes its own shard of the AdamW moments
                              (torch.distributed.checkpoint, safetensors files) and rank 0 the param
                              groups (param_groups.json); nothing is gathered, and a resume on another
                              number of workers (or on DDP, or one worker) reshards on load
    lr_scheduler.pt           the LambdaLR state
    rng-rank{r}.pt            torch / CUDA / numpy / python RNG states of each rank (gathered to rank 0,
                              which writes them all)
    trainer_state.json        step, data position, counters, world size

A checkpoint is written into `.tmp-checkpoint-{step}` and renamed when complete, so a
folder named `checkpoint-*` is always whole; only the last `keep_last` are kept. Rank 0
writes everything but the FSDP2 optimizer shards, which each rank writes into a folder it
creates itself. Everything is read back with safetensors, JSON or torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from tsa.train.distributed import Dist, unwrap

PREFIX = "checkpoint-"


class CheckpointMismatch(ValueError):
    """The checkpoint to resume from does not fit the run's (changed) config."""

TRANSFORMER_WEIGHTS = "diffusion_pytorch_model{suffix}.safetensors"
FULL_OPTIMIZER = "optimizer.pt"
SHARDED_OPTIMIZER = "optimizer"
PARAM_GROUPS = "param_groups.json"


def _options(ignore_frozen_params: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=ignore_frozen_params)


def checkpoint_dirs(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `out`, oldest first."""
    found = []
    for p in Path(out).glob(f"{PREFIX}*"):
        m = re.fullmatch(rf"{PREFIX}(\d+)", p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out: Path) -> Optional[Path]:
    found = checkpoint_dirs(out)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(out: Path, step: int, model: nn.Module, optimizer, lr_scheduler, trainer_state: dict[str, Any],
                    dist: Dist, keep_last: int, lora=None) -> Path:
    """Collective: every rank calls it. Returns the final folder. `lora` (the run's
    train.lora when its rank > 0): save the adapters instead of the whole transformer."""
    from huggingface_hub import save_torch_state_dict
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    out = Path(out)
    final = out / f"{PREFIX}{step}"
    tmp = out / f".tmp-{PREFIX}{step}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    # Full tensors on CPU, rank 0 in FSDP; with LoRA only the trainable ones (not the frozen base).
    weights = get_model_state_dict(model, options=_options(ignore_frozen_params=lora is not None))
    sharded = dist.active and dist.strategy == "fsdp2"
    if sharded:
        _save_sharded_optimizer(tmp / SHARDED_OPTIMIZER, model, optimizer, dist)
    else:
        optim = get_optimizer_state_dict(model, optimizer, options=_options())
    rngs = dist.gather(rng_state())
    if dist.is_main:
        student = unwrap(model)
        projector = {k[len("projector."):]: v.contiguous() for k, v in weights.items() if k.startswith("projector.")}
        if lora is not None:  # only the adapters: the base transformer is frozen and unchanged
            from tsa.models.lora import save_lora

            save_lora(tmp, weights, lora, student.family)
        else:
            transformer = {k[len("transformer."):]: v for k, v in weights.items() if k.startswith("transformer.")}
            (tmp / "transformer").mkdir()
            student.transformer.save_config(tmp / "transformer")
            save_torch_state_dict(transformer, tmp / "transformer", filename_pattern=TRANSFORMER_WEIGHTS,
                                  max_shard_size="10GB")
        if projector:
            save_file(projector, str(tmp / "projector.safetensors"))
        if not sharded:
            torch.save(optim, tmp / FULL_OPTIMIZER)
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        for rank, state in enumerate(rngs):
            torch.save(state, tmp / f"rng-rank{rank}.pt")
    dist.barrier()
    if dist.is_main:
        with open(tmp / "trainer_state.json", "w") as f:
            json.dump(trainer_state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same step saved by an earlier, interrupted run
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in checkpoint_dirs(out)[:-max(1, keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "trainer_state.json").read_text())


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer, lr_scheduler, dist: Dist) -> dict[str, Any]:
    """Restore projector, optimizer, schedule and RNG (the transformer was built from
    ckpt/transformer already). Returns trainer_state.json. Collective."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    ckpt = Path(ckpt)
    student = unwrap(model)
    _load_lora(ckpt, model, student)
    path = ckpt / "projector.safetensors"
    if (student.projector is not None) != path.is_file():
        raise CheckpointMismatch(
            f"{ckpt} was saved {'without' if student.projector is not None else 'with'} a projector, but this "
            f"config has align.loss={'none' if student.projector is None else 'an alignment loss'}: resume "
            "with the run's align.loss")
    if student.projector is not None:
        weights = {f"projector.{k}": v for k, v in load_file(str(path)).items()}
        try:
            set_model_state_dict(model, weights, options=_partial_options())
        except RuntimeError as e:
            raise CheckpointMismatch(f"{path} does not fit this config's projector (align.projector_hidden, "
                                     f"models.teacher.dim): {str(e).strip().splitlines()[-1].strip()}") from None
    if (ckpt / FULL_OPTIMIZER).is_file():
        optim = torch.load(ckpt / FULL_OPTIMIZER, map_location="cpu", weights_only=True, mmap=True)
        set_optimizer_state_dict(model, optimizer, optim, options=_options())
    elif (ckpt / SHARDED_OPTIMIZER).is_dir():
        _load_sharded_optimizer(ckpt / SHARDED_OPTIMIZER, model, optimizer, dist)
    else:
        raise CheckpointMismatch(f"{ckpt} has neither {FULL_OPTIMIZER} nor {SHARDED_OPTIMIZER}/: not a complete "
                                 "tsa checkpoint")
    lr_scheduler.load_state_dict(torch.load(ckpt / "lr_scheduler.pt", weights_only=True))
    rng = ckpt / f"rng-rank{dist.rank}.pt"
    if rng.is_file():  # absent when resuming on more ranks than saved
        set_rng_state(torch.load(rng, weights_only=True))
    return read_trainer_state(ckpt)


def _partial_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, strict=False)


def _save_sharded_optimizer(folder: Path, model: nn.Module, optimizer, dist: Dist) -> None:
    """Collective. Every rank writes the AdamW moments of its own parameter shards (FSDP2
    DTensors) as safetensors; rank 0 writes the param groups as JSON."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=False))
    folder.mkdir(parents=True, exist_ok=True)  # each rank: the folder is there for it on any node
    dcp.save({"state": osd["state"]}, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))
    if dist.is_main:
        (folder / PARAM_GROUPS).write_text(json.dumps(osd["param_groups"], indent=1))


def _load_sharded_optimizer(folder: Path, model: nn.Module, optimizer, dist: Dist) -> None:
    """Collective. Reads the moments into this run's layout (any number of workers, sharded or
    not): torch.distributed.checkpoint reshards from the saved offsets."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=False)
    osd = get_optimizer_state_dict(model, optimizer, options=options)  # the state to fill, in this layout
    state = osd["state"]
    dcp.load({"state": state}, storage_reader=HuggingFaceStorageReader(str(folder)), no_dist=not dist.active)
    for entry in state.values():  # safetensors keeps a 0-d `step` as [1]; AdamW expects 0-d
        if isinstance(entry.get("step"), torch.Tensor) and entry["step"].dim() != 0:
            entry["step"] = entry["step"].reshape(())
    groups = json.loads((folder / PARAM_GROUPS).read_text())
    for group in groups:
        group["betas"] = tuple(group["betas"])
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=options)


def has_lora(ckpt: Path) -> bool:
    from tsa.models.lora import LORA_WEIGHTS

    return (Path(ckpt) / LORA_WEIGHTS).is_file()


def _load_lora(ckpt: Path, model: nn.Module, student: nn.Module) -> None:
    """The adapters of a LoRA checkpoint into the freshly adapted student; a checkpoint whose
    kind (LoRA or full) differs from the config's train.lora.rank is a clear error."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    from tsa.models.lora import LORA_WEIGHTS, from_diffusers, is_lora_key

    adapted = any(is_lora_key(n) for n, _ in student.named_parameters())
    if has_lora(ckpt) != adapted:
        raise CheckpointMismatch(
            f"{ckpt} holds {'LoRA adapters' if has_lora(ckpt) else 'a fully fine-tuned transformer'}, but this config "
            f"has train.lora.rank={'0' if not adapted else '> 0'}: resume with the run's train.lora.rank")
    if not adapted:
        return
    weights = from_diffusers(load_file(str(ckpt / LORA_WEIGHTS)))  # keys as in the Student
    expected = {n for n, _ in student.named_parameters() if is_lora_key(n)}
    if set(weights) != expected:
        raise CheckpointMismatch(f"{ckpt / LORA_WEIGHTS} holds adapters for other layers than this config's "
                                 f"(train.lora.target_modules): {len(set(weights) - expected)} unexpected, "
                                 f"{len(expected - set(weights))} missing")
    try:
        set_model_state_dict(model, weights, options=_partial_options())
    except RuntimeError as e:
        raise CheckpointMismatch(f"{ckpt / LORA_WEIGHTS} does not fit this config's adapters (train.lora.rank, "
                                 f"target_modules): {str(e).strip().splitlines()[-1].strip()}") from None
