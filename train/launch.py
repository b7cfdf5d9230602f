"""Run a TrainJob: in this process for one worker, or on N Ray Train workers (TorchTrainer,
DDP or FSDP2), on the local machine or the cluster at `ray_address`."""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from tsa.train.distributed import Dist
from tsa.train.loop import TrainJob, run_training


class TrainError(RuntimeError):
    """Training stopped; the message is the first worker's error."""


def _local_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def launch(job: TrainJob, workers: int = 1, strategy: str = "ddp", ray_address: Optional[str] = None) -> dict[str, Any]:
    """Train; returns the final trainer state (step, data position, counters)."""
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be >= 1")
    if workers == 1 and ray_address is None:
        return run_training(job, Dist(device=_local_device(), strategy=strategy))
    from tsa.train.dataset_check import check_dataset, open_dataset

    check_dataset(open_dataset(job.shards), job.cfg)  # fail before starting Ray, not in every worker
    return _launch_ray(job, workers, strategy, ray_address)


def _ray_worker(config: dict[str, Any]) -> None:
    import ray.train.torch

    job = TrainJob(**config["job"])
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (all_gather_object) use the current device
    dist = Dist.from_process_group(device, config["strategy"])
    run_training(job, dist)  # no ray.train.report: it is a barrier in Ray Train v2, and the run
    # folder (checkpoints, metrics.jsonl) is the result


def _launch_ray(job: TrainJob, workers: int, strategy: str, ray_address: Optional[str]) -> dict[str, Any]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = False
    if not ray.is_initialized():
        # No --ray-address: RAY_ADDRESS (`ray job submit`) or a new local Ray, as the help says.
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 log_to_driver=True)
        started = True
    try:
        use_gpu = check_workers(workers, ray.cluster_resources())
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"job": asdict(job), "strategy": strategy},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
                                 storage_path=str(Path(job.out).resolve() / "ray")),
        )
        try:
            trainer.fit()
        except ray.train.TrainingFailedError as e:
            raise TrainError(_worker_message(e)) from None
    finally:
        if started:
            ray.shutdown()
    from tsa.train.checkpoint import latest_checkpoint, read_trainer_state

    ckpt = latest_checkpoint(Path(job.out))
    return read_trainer_state(ckpt) if ckpt else {}


def check_workers(workers: int, resources: dict[str, float]) -> bool:
    """Whether the workers get GPUs; a clear error now when the cluster cannot place them all
    (Ray Train would otherwise wait for resources forever)."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if gpus >= 1:
        if workers > gpus:
            raise TrainError(f"--workers {workers} but the Ray cluster has {gpus} GPU(s): one worker per GPU; "
                             f"use --workers {gpus} or fewer, or add nodes")
        return True
    if workers > cpus:
        raise TrainError(f"--workers {workers} but the Ray cluster has no GPU and {cpus} CPU(s) (one CPU per "
                         f"worker): use --workers {cpus} or fewer, or --ray-address a GPU cluster")
    return False


def _worker_message(error: Exception) -> str:
    """The first worker's own exception message, without Ray's wrapping."""
    failures = getattr(error, "worker_failures", None) or {}
    for rank in sorted(failures):
        exc = failures[rank]
        while getattr(exc, "cause", None) is not None:  # RayTaskError wraps the user exception
            exc = exc.cause
        return f"worker {rank}: {type(exc).__name__}: {exc}"
    return str(error)
