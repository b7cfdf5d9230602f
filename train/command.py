"""`tsa train`: fine-tune the student from preprocessed shards."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import typer
import yaml

from configs.schema import REQUIRED, Config, ConfigError, config_from_dict, load_config
from train.loop import TrainJob

CONFIG_FILE = "config.yaml"
# Training never loads the teacher (its features are in the shards), so its checkpoint may be
# unset; the saved config.yaml gets this value so that any reader can load it as is.
TEACHER_IN_SHARDS = "not-used-by-tsa-train"


def prepare_job(shards: str | Path, out: Path, config: Optional[str], overrides: list[str], *, resume: bool = False,
                max_steps: Optional[int] = None, checkpoint_every: Optional[int] = None,
                skip_bad_samples: bool = False) -> tuple[TrainJob, Config]:
    """The run's config (written to OUT/config.yaml with model refs as given, e.g. `tiny`)
    and the job with model refs resolved to loadable paths."""
    from configs.tiny_models import resolve_tiny
    from pipeline.storage import resolve
    from train.checkpoint import latest_checkpoint

    out = Path(out)
    shards = resolve(shards)  # an absolute path or the URL: Ray Train workers run in another directory
    saved = out / CONFIG_FILE
    if resume:
        if config is not None:
            raise ConfigError(f"--config cannot be combined with --resume: the run's config is {saved}; "
                              "change single keys with -o key=value")
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} not found (is {out} a tsa train output?)")
        base: Optional[str] = str(saved)
    else:
        if latest_checkpoint(out) is not None:
            raise ConfigError(f"{out} already holds checkpoints: pass --resume to continue that run, "
                              "or choose another --out")
        base = config
    extra = list(overrides)
    if max_steps is not None:
        extra.append(f"train.max_steps={max_steps}")
    if checkpoint_every is not None:
        extra.append(f"train.checkpoint_every={checkpoint_every}")
    if skip_bad_samples:
        extra.append("train.skip_bad_samples=true")
    cfg = load_config(base, extra, optional=["models.teacher.checkpoint"])
    if cfg.models.teacher.checkpoint == REQUIRED:
        cfg.models.teacher.checkpoint = TEACHER_IN_SHARDS
    out.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_name(CONFIG_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, saved)
    resolved = resolve_tiny(config_from_dict(cfg.to_dict()))
    # Absolute: Ray Train workers run in another working directory.
    job = TrainJob(config=resolved.to_dict(), shards=shards, out=str(out.resolve()), resume=resume)
    return job, cfg


@contextlib.contextmanager
def _config_restored_on_failure(out: Path, resume: bool):
    """--resume rewrites OUT/config.yaml with the overrides before training; if the run then
    fails before writing a checkpoint, put the old file back, so that config.yaml still
    describes the checkpoints and a plain --resume works again."""
    from train.checkpoint import latest_checkpoint

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
    out: Path = typer.Option(..., "--out", help="Run folder: config.yaml, checkpoint-N/, metrics.jsonl, tensorboard/."),
    config: Optional[str] = typer.Option(None, "--config", help="YAML file or bundled name (tiny, "
                                         "cogvideox2b_mtsa, ablations/...); default: paper defaults."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this optimizer step."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Save every K steps "
                                                   "(and at the end)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    workers: int = typer.Option(1, "--workers", min=1, help="Ray Train workers (one per GPU); 1 runs in this process."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="ddp or fsdp2 (default: train.strategy)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster (`auto` or host:port); "
                                              "default: a local Ray when --workers > 1."),
    skip_bad_samples: bool = typer.Option(False, "--skip-bad-samples", help="Skip and count unreadable "
                                          "samples instead of stopping."),
    override: list[str] = typer.Option([], "-o", "--override", help="Config override key=value (repeatable)."),
) -> None:
    """Fine-tune CogVideoX with diffusion + alignment loss from preprocessed shards."""
    from train.checkpoint import CheckpointMismatch
    from train.dataset_check import DatasetMismatch, probe_dataset
    from train.launch import TrainError, launch
    from train.loop import NonFiniteLoss
    from train.model import ModelError
    from train.shards import DataError

    try:
        with _config_restored_on_failure(out, resume):
            if strategy is not None:
                override = [*override, f"train.strategy={strategy}"]
            probe_dataset(shards)  # a missing bucket, bad credentials, no dataset.json: before anything is written
            job, cfg = prepare_job(shards, out, config, override, resume=resume, max_steps=max_steps,
                                   checkpoint_every=checkpoint_every, skip_bad_samples=skip_bad_samples)
            state = launch(job, workers=workers, strategy=cfg.train.strategy, ray_address=ray_address)
    except (ConfigError, DatasetMismatch, DataError, ModelError, NonFiniteLoss, TrainError, FileNotFoundError,
            CheckpointMismatch) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    data = state.get("data", {})
    typer.echo(f"trained to step {state.get('step')} ({data.get('consumed')} samples, "
               f"{state.get('nonfinite_skipped', 0)} non-finite steps skipped, "
               f"{data.get('bad_samples', 0)} bad samples skipped); checkpoints in {out}")
