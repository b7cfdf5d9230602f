"""The training loop, the same on one process and on every Ray Train worker."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from tsa.configs.schema import Config, config_from_dict
from tsa.models.family import student_family
from tsa.models.student import build_student
from tsa.train.checkpoint import latest_checkpoint, load_checkpoint, read_trainer_state, save_checkpoint
from tsa.train.data import DataPosition, RankLoader, microbatches_per_step
from tsa.train.dataset_check import check_dataset, open_dataset
from tsa.train.distributed import Dist, clip_gradients, fsdp_param_dtype, no_grad_sync, unwrap, wrap
from tsa.train.memory_plan import plan_memory
from tsa.train.metrics import MetricsLog, emit
from tsa.train.preflight import check_storage
from tsa.train.optim import apply_train_config, build_lr_scheduler, build_optimizer
from tsa.train.step import StepContext, micro_batch_losses


class NonFiniteLoss(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


@dataclass
class TrainJob:
    """Everything a worker needs (plain data, so Ray can ship it)."""

    config: dict[str, Any]  # the run's config: local model paths absolute, `tiny` refs as written
    shards: str
    out: str
    resume: bool = False
    progress: Optional[bool] = None  # None: a bar when stderr is a terminal
    tensorboard: bool = True

    @property
    def cfg(self) -> Config:
        return config_from_dict(self.config)


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def run_training(job: TrainJob, dist: Dist) -> dict[str, Any]:
    """Train until `train.max_steps`; returns the final trainer state (all ranks)."""
    from tsa.models.tiny import resolve_tiny

    cfg = job.cfg
    out = Path(job.out)
    check_storage(job.shards, job.out, cfg, dist)  # first: a path one worker cannot use names its node
    info = open_dataset(job.shards)
    check_dataset(info, cfg)  # cheap checks before any weights are loaded
    resolve_tiny(cfg)  # `tiny` refs: built (bit-identical) in this machine's own cache

    # Rank 0 chooses, every rank loads the same one (a listing on shared storage may lag on a node).
    ckpt = dist.broadcast(latest_checkpoint(out) if job.resume else None)
    if job.resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}")
    if ckpt is not None and (ckpt / "transformer").is_dir():  # a LoRA checkpoint keeps the base
        cfg.models.student = str(ckpt / "transformer")
    validator = None
    if cfg.train.validate_every > 0:  # T5 runs (and is freed) before the student loads
        from tsa.train.validate import Validator, embed_prompts

        validator = Validator(cfg, out, dist, embed_prompts(cfg, out, dist))
    torch.manual_seed(cfg.seed)  # the same projector init on every rank and for every world size
    # Several workers: every rank builds an empty twin (parameters on the meta device) and `wrap`
    # fills its shards or replicas from the one copy rank 0 loads.
    student = build_student(cfg, empty=dist.active)
    if student.projector is not None:
        check_dataset(info, cfg, projector_grid=student.projector.output_grid(cfg.geometry.student_grid),
                      projector_dim=student.projector.out_dim)
    if dist.is_main and dist.device.type == "cuda":
        emit(plan_memory(student.transformer, student.projector, cfg, dist.strategy, dist.world).table())
    model = wrap(student, dist, load=lambda: build_student(cfg), param_dtype=fsdp_param_dtype(cfg, dist))
    optimizer = build_optimizer(model, cfg.train, dist.device)
    lr_scheduler = build_lr_scheduler(optimizer, cfg.train)

    state: dict[str, Any] = {"step": 0, "nonfinite_skipped": 0, "nonfinite_in_row": 0}
    position: Optional[DataPosition] = None
    if ckpt is not None:
        saved = load_checkpoint(ckpt, model, optimizer, lr_scheduler, dist)
        apply_train_config(optimizer, lr_scheduler, cfg.train)
        state.update({k: saved[k] for k in state})
        position = DataPosition.from_dict(saved["data"])
        if dist.is_main:
            emit(f"resuming {out} from {ckpt.name} (step {saved['step']}, {position.consumed} samples consumed)")
    loader = RankLoader(info, cfg, dist.rank, dist.world, start=position, pin_memory=dist.device.type == "cuda")
    start_bad = position.bad_samples if position is not None else 0
    start_consumed = position.consumed if position is not None else 0

    family = student_family(cfg)
    ctx = StepContext(cfg, family.objective(cfg.models.scheduler), dist.device,
                      info.latent_norm() if info.latents == "moments" else None,
                      family.conditioning(unwrap(model).transformer, cfg, dist.device),
                      param_dtype=fsdp_param_dtype(cfg, dist))
    accum = microbatches_per_step(cfg, dist.world)
    global_batch = cfg.train.global_batch
    max_steps = cfg.train.max_steps
    metrics = MetricsLog(out, state["step"], max_steps, tensorboard=job.tensorboard, progress=job.progress,
                         log_every=cfg.train.log_every) if dist.is_main else None
    attempts = 0  # global batches drawn by this run (a resumed run may use another global_batch)

    def trainer_state() -> dict[str, Any]:
        parts = dist.gather((loader.position(), loader.bad_samples))
        consumed = start_consumed + attempts * global_batch
        pos = DataPosition.merged([p for p, _ in parts], consumed, start_bad + sum(b for _, b in parts))
        return {**state, "data": pos.to_dict(), "world_size": dist.world, "global_batch": global_batch}

    try:
        while state["step"] < max_steps:
            t_start = time.perf_counter()
            wait = 0.0
            optimizer.zero_grad(set_to_none=True)
            sums = torch.zeros(3, dtype=torch.float64, device=dist.device)  # no host sync per micro-batch
            bad: list[str] = []
            for m in range(accum):
                t_wait = time.perf_counter()
                batch = loader.next_microbatch()
                wait += time.perf_counter() - t_wait
                bad += batch["bad"]
                with no_grad_sync(model, dist, sync=m == accum - 1):
                    losses = micro_batch_losses(model, batch, ctx)
                    (losses["loss"] / accum).backward()
                sums += torch.stack([losses[k].detach().double()
                                     for k in ("loss", "loss_diffusion", "loss_align")]) / accum
            attempts += 1
            loss, l_diff, l_align = dist.mean(sums).tolist()
            clip = cfg.train.grad_clip if cfg.train.grad_clip > 0 else math.inf
            grad_norm = clip_gradients(model, clip)
            reasons = sum(dist.gather(bad), []) if cfg.train.skip_bad_samples else []  # collective
            if metrics is not None:
                for reason in reasons:
                    metrics.message(f"skipped bad sample: {reason}")
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                state["nonfinite_skipped"] += 1
                state["nonfinite_in_row"] += 1
                if metrics is not None:
                    metrics.message(f"step {state['step'] + 1}: non-finite loss={loss} grad_norm={grad_norm}; "
                                    f"step skipped ({state['nonfinite_in_row']} in a row)")
                if state["nonfinite_in_row"] >= cfg.train.max_nonfinite_in_row:
                    raise NonFiniteLoss(
                        f"{state['nonfinite_in_row']} optimizer steps in a row had a non-finite loss or gradient "
                        f"(last: loss={loss}, loss_diffusion={l_diff}, loss_align={l_align}, grad_norm={grad_norm}) "
                        f"at step {state['step'] + 1}; stopping (lower train.lr, check the shards, or raise "
                        f"train.max_nonfinite_in_row)")
                continue
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            lr_scheduler.step()
            state["step"] += 1
            state["nonfinite_in_row"] = 0
            if dist.device.type == "cuda":
                torch.cuda.synchronize(dist.device)
            elapsed = time.perf_counter() - t_start
            wait_frac = float(dist.mean(torch.tensor([wait / elapsed], device=dist.device))[0])
            if metrics is not None:
                record = {"step": state["step"], "loss": loss, "loss_diffusion": l_diff, "loss_align": l_align,
                          "lr": lr, "grad_norm": grad_norm, "samples_per_s": global_batch / elapsed,
                          "data_wait_frac": wait_frac, "step_time_s": elapsed,
                          "nonfinite_skipped": state["nonfinite_skipped"]}
                if dist.device.type == "cuda":  # rank 0's peak since start, to hold against the plan
                    record["peak_memory_gib"] = torch.cuda.max_memory_allocated(dist.device) / 2 ** 30
                metrics.log(record)
            every = cfg.train.checkpoint_every
            if (every > 0 and state["step"] % every == 0) or state["step"] == max_steps:
                save_checkpoint(out, state["step"], model, optimizer, lr_scheduler, trainer_state(), dist,
                                cfg.train.keep_last, lora=cfg.train.lora if cfg.train.lora.rank > 0 else None)
            if validator is not None and validator.due(state["step"]):
                folder = validator(state["step"], model, unwrap(model).transformer,
                                   metrics.tb if metrics is not None else None)
                if metrics is not None:
                    metrics.message(f"step {state['step']}: validation videos in {folder}")
        final = trainer_state()
    finally:
        loader.close()
        if metrics is not None:
            metrics.close()
    return final


def saved_config_path(out: Path) -> Path:
    return Path(out) / "config.yaml"


def resumed_step(out: Path) -> int:
    ckpt = latest_checkpoint(out)
    return read_trainer_state(ckpt)["step"] if ckpt else 0
