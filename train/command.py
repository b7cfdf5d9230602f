"""`tsa train`: fine-tune the student from preprocessed shards."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Optional

import typer
import yaml

from tsa.configs.schema import REQUIRED, Config, ConfigError, load_config
from tsa.shards.storage import is_url, resolve
from tsa.train.loop import TrainJob

CONFIG_FILE = "config.yaml"
# Training never loads the teacher (its features are in the shards), so its checkpoint may be
# unset; the saved config.yaml gets this value so that any reader can load it as is.
TEACHER_IN_SHARDS = "not-used-by-tsa-train"


MODEL_REFS = ("student", "vae", "text_encoder", "tokenizer", "scheduler")


def absolute_model_refs(cfg: Config) -> Config:
    """Model refs that name an existing local file or folder become absolute paths (in place);
    hub ids, `tiny` and URLs stay as written."""
    m = cfg.models
    for name in MODEL_REFS:
        ref = getattr(m, name)
        if not is_url(ref) and Path(ref).expanduser().exists():
            setattr(m, name, resolve(ref))
    ckpt = m.teacher.checkpoint
    if not is_url(ckpt) and Path(ckpt).expanduser().exists():
        m.teacher.checkpoint = resolve(ckpt)
    return cfg


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ, as `key: a_value != b_value`."""
    fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
    return [f"{k}: {fa.get(k)!r} != {fb.get(k)!r}" for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)]


class RunFolderError(ValueError):
    """--out names a place tsa train cannot write its run folder to (a bucket URL)."""


def check_run_folder(out: str | Path) -> None:
    """The run folder is a filesystem path: checkpoints are folders renamed into place, every
    rank writes into them, and metrics.jsonl is appended to; object storage does none of that.
    A URL is refused here, before anything is written, never made into a local folder named
    `s3:/bucket/run`."""
    if is_url(out) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/[^/]", str(out)):
        raise RunFolderError(
            f"--out {out}: tsa train writes its run folder (checkpoints, metrics.jsonl, validation videos) to a "
            "filesystem path that every worker sees (local disk, NFS, Lustre), not to object storage (only "
            "--shards may be s3:// or gs://); train into such a folder and copy it to the bucket afterwards, "
            "e.g. `aws s3 sync RUN s3://bucket/run` (docs/storage.md)")


def _load_train_config(base: Optional[str], overrides: list[str]) -> Config:
    cfg = load_config(base, overrides, optional=["models.teacher.checkpoint"])
    if cfg.models.teacher.checkpoint == REQUIRED:
        cfg.models.teacher.checkpoint = TEACHER_IN_SHARDS
    return absolute_model_refs(cfg)


def _check_same_config(config: str, saved: Path, overrides: list[str]) -> None:
    """`--config X --resume` (a requeued job reruns its command): X must be the run's config,
    apart from the keys the command's own -o options set."""
    given = _load_train_config(config, overrides)
    run = _load_train_config(str(saved), overrides)
    changed = {o.split("=", 1)[0].strip() for o in overrides}
    diff = [d for d in config_differences(given, run) if d.split(":", 1)[0] not in changed]
    if diff:
        raise ConfigError(f"--config {config} differs from the run's {saved} in {len(diff)} key(s): "
                          + "; ".join(diff[:12]) + (" ..." if len(diff) > 12 else "")
                          + ". Resume without --config (the run's config is used), or change keys with -o key=value")


def _keys_added_since(saved: Path, overrides: list[str]) -> list[str]:
    """Overrides that keep a run saved before a key existed training as it did: a LoRA run's
    config.yaml without `train.lora.lr` trained its adapters at `train.lr`."""
    data = yaml.safe_load(saved.read_text()) or {}
    train = data.get("train") or {}
    lora = train.get("lora") or {}
    given = {o.split("=", 1)[0].strip() for o in overrides}
    if lora.get("rank", 0) > 0 and "lr" not in lora and "train.lora.lr" not in given and "lr" in train:
        return [*overrides, f"train.lora.lr={train['lr']}"]
    return overrides


def prepare_job(shards: Path | str, out: Path | str, config: Optional[str], overrides: list[str], *,
                resume: bool = False, max_steps: Optional[int] = None, checkpoint_every: Optional[int] = None,
                skip_bad_samples: bool = False) -> tuple[TrainJob, Config]:
    """The run's config (written to OUT/config.yaml with model refs as given, e.g. `tiny`, and
    local model paths made absolute) and the job, whose paths are absolute so that every worker
    sees the same places whatever its working folder."""
    from tsa.train.checkpoint import latest_checkpoint

    check_run_folder(out)
    out = Path(resolve(out))
    saved = out / CONFIG_FILE
    extra = list(overrides)
    if max_steps is not None:
        extra.append(f"train.max_steps={max_steps}")
    if checkpoint_every is not None:
        extra.append(f"train.checkpoint_every={checkpoint_every}")
    if skip_bad_samples:
        extra.append("train.skip_bad_samples=true")
    if resume:
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} not found (is {out} a tsa train output?)")
        extra = _keys_added_since(saved, extra)
        if config is not None:
            _check_same_config(config, saved, extra)
        base: Optional[str] = str(saved)
    else:
        if latest_checkpoint(out) is not None:
            raise ConfigError(f"{out} already holds checkpoints: pass --resume to continue that run, "
                              "or choose another --out")
        base = config
    cfg = _load_train_config(base, extra)
    out.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_name(CONFIG_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, saved)
    # `tiny` refs stay unresolved: each worker builds the (bit-identical) tiny models in its own
    # cache, so no worker depends on a path that exists only on the driver's machine.
    job = TrainJob(config=cfg.to_dict(), shards=resolve(shards), out=str(out), resume=resume)
    return job, cfg


@contextlib.contextmanager
def _config_restored_on_failure(out: Path, resume: bool):
    """--resume rewrites OUT/config.yaml with the overrides before training; if the run then
    fails before writing a checkpoint, put the old file back, so that config.yaml still
    describes the checkpoints and a plain --resume works again."""
    from tsa.train.checkpoint import latest_checkpoint

    saved = Path(out) / CONFIG_FILE
    previous = saved.read_text() if resume and saved.is_file() else None
    start = latest_checkpoint(Path(out)) if previous is not None else None
    try:
        yield
    except BaseException:
        if previous is not None and latest_checkpoint(Path(out)) == start:
            saved.write_text(previous)
        raise


def train_command(
    shards: str = typer.Option(..., "--shards", help="Output folder of `tsa preprocess` (holds dataset.json): a "
                               "path, or s3://bucket/prefix, gs://bucket/prefix (docs/storage.md)."),
    out: str = typer.Option(..., "--out", help="Run folder: config.yaml, checkpoint-N/, metrics.jsonl, tensorboard/; "
                            "a filesystem path every worker sees (not a bucket URL)."),
    config: Optional[str] = typer.Option(None, "--config", help="YAML file or bundled name (tiny, "
                                         "cogvideox2b_mtsa, ablations/...); default: paper defaults."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this optimizer step."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Save every K steps "
                                                   "(and at the end)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    workers: int = typer.Option(1, "--workers", min=1, help="Ray Train workers (one per GPU); 1 runs in this process."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="ddp or fsdp2 (default: train.strategy)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray to run on: `local` (a new Ray "
                                              "started by this command), `auto` (the `ray start` cluster of this machine) "
                                              "or HOST:PORT. Without it, one worker trains in this "
                                              "process and more use $RAY_ADDRESS when set, else a local Ray."),
    skip_bad_samples: bool = typer.Option(False, "--skip-bad-samples", help="Skip and count unreadable "
                                          "samples instead of stopping."),
    override: list[str] = typer.Option([], "-o", "--override", help="Config override key=value (repeatable)."),
) -> None:
    """Fine-tune CogVideoX with diffusion + alignment loss from preprocessed shards."""
    from tsa.cluster.connect import RayConnectError
    from tsa.train.checkpoint import CheckpointMismatch
    from tsa.train.dataset_check import DatasetMismatch, probe_dataset
    from tsa.train.launch import TrainError, connect_ray, launch
    from tsa.train.loop import NonFiniteLoss
    from tsa.models.family import ModelError
    from tsa.train.preflight import StorageError
    from tsa.train.shards import DataError

    started = False
    try:
        check_run_folder(out)
        with _config_restored_on_failure(out, resume):
            if strategy is not None:
                override = [*override, f"train.strategy={strategy}"]
            probe_dataset(shards)  # a missing bucket, bad credentials, no dataset.json: before anything is written
            if workers > 1 or ray_address is not None:
                started = connect_ray(ray_address)  # a wrong address or token: before anything is written
            job, cfg = prepare_job(shards, out, config, override, resume=resume, max_steps=max_steps,
                                   checkpoint_every=checkpoint_every, skip_bad_samples=skip_bad_samples)
            state = launch(job, workers=workers, strategy=cfg.train.strategy, ray_address=ray_address)
    except (RunFolderError, RayConnectError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    except (ConfigError, DatasetMismatch, DataError, ModelError, NonFiniteLoss, TrainError, FileNotFoundError,
            CheckpointMismatch, StorageError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    finally:
        if started:
            import ray

            ray.shutdown()
    data = state.get("data", {})
    typer.echo(f"trained to step {state.get('step')} ({data.get('consumed')} samples, "
               f"{state.get('nonfinite_skipped', 0)} non-finite steps skipped, "
               f"{data.get('bad_samples', 0)} bad samples skipped); checkpoints in {out}")
