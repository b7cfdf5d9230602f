"""Run a TrainJob: in this process for one worker, or on N Ray Train workers (TorchTrainer,
DDP or FSDP2), on the local machine or the cluster at `ray_address`."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from tsa.train.distributed import Dist
from tsa.train.loop import TrainJob, run_training


class TrainError(RuntimeError):
    """Training stopped; the message is the first worker's error."""


# The CUDA caching allocator's settings for training (unless PYTORCH_CUDA_ALLOC_CONF is set):
# expandable segments, so memory freed by one micro-batch's activations is reused by the next
# whatever the block sizes. On an H200, CogVideoX-2B at micro-batch 24 failed with 116.8 GiB
# allocated and 17.1 GiB reserved but unallocated (docs/train.md, "Memory per GPU").
ALLOCATOR_SETTINGS = "expandable_segments:True"


def set_allocator_defaults() -> None:
    """Call before this process allocates its first CUDA tensor (the allocator reads the
    variable once); a user's own PYTORCH_CUDA_ALLOC_CONF is kept."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOCATOR_SETTINGS)


def _local_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def launch(job: TrainJob, workers: int = 1, strategy: str = "ddp", ray_address: Optional[str] = None) -> dict[str, Any]:
    """Train; returns the final trainer state (step, data position, counters)."""
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be >= 1")
    set_allocator_defaults()
    if workers == 1 and ray_address is None:
        return run_training(job, Dist(device=_local_device(), strategy=strategy))
    from tsa.train.dataset_check import check_dataset, open_dataset

    check_dataset(open_dataset(job.shards), job.cfg)  # fail before starting Ray, not in every worker
    return _launch_ray(job, workers, strategy, ray_address)


def _ray_worker(config: dict[str, Any]) -> None:
    # The job's runtime_env (connect_ray) already carries the setting; under `ray job submit`
    # this is the fallback, and it works only if nothing has allocated on the GPU yet.
    set_allocator_defaults()
    import ray.train.torch

    from tsa.train.checkpoint import latest_checkpoint
    from tsa.train.metrics import set_console
    from tsa.train.preflight import node_name

    job = TrainJob(**config["job"])
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (all_gather_object) use the current device
    dist = Dist.from_process_group(device, config["strategy"])
    console = config.get("console")
    if console is not None:
        console.hello.remote(dist.rank, node_name())
        if dist.is_main:  # rank 0's lines go to the driver, which prints each once
            set_console(console.put.remote)
    # Ray Train runs this function again after a lost worker or node (train.max_failures): the
    # run then continues from its own last checkpoint, exactly as `--resume` would.
    if not job.resume:
        job.resume = bool(dist.broadcast(latest_checkpoint(Path(job.out)) is not None))
    run_training(job, dist)  # no ray.train.report: it is a barrier in Ray Train v2, and the run
    # folder (checkpoints, metrics.jsonl) is the result


def connect_ray(ray_address: Optional[str]) -> bool:
    """Connect to the cluster at `ray_address` (or RAY_ADDRESS, or start a local Ray); True when
    started here. Wrong address or a refused token: RayConnectError (one line) within seconds.
    Ray's own console output (controller and worker logs) stays in its session log files."""
    from tsa.cluster.connect import connect
    from tsa.models.cache import cache_root

    env = {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ALLOCATOR_SETTINGS)}
    return connect(ray_address, runtime_env={"env_vars": env}, local_env={"TSA_CACHE": str(cache_root())},
                   log_to_driver=False)


@contextlib.contextmanager
def _failure_policy(console, nodes: dict[str, str]):
    """Ray Train's trainer with tsa's failure decision (train/ray_run.py): run errors stop at once,
    restarts are console lines. Ray Train takes its policy from a factory inside fit(); where
    that factory is not there (another Ray version), its default policy stays."""
    try:
        from ray.train.v2.api import data_parallel_trainer as trainer_module

        from tsa.train.ray_run import TsaFailurePolicy
    except ImportError:
        yield False
        return
    original = getattr(trainer_module, "create_failure_policy", None)
    if original is None:
        yield False
        return
    trainer_module.create_failure_policy = lambda failure_config: TsaFailurePolicy(failure_config, console, nodes)
    try:
        yield True
    finally:
        trainer_module.create_failure_policy = original


def _pump(console, stop: threading.Event) -> None:
    """Print the run's console lines (from rank 0 and from restarts) as they come, until `stop`."""
    import ray

    def drain() -> None:
        try:
            lines = ray.get(console.drain.remote(), timeout=30)
        except Exception:  # noqa: BLE001 (the console is on this node; if it went, nothing to print)
            return
        for line in lines:
            print(line, file=sys.stderr, flush=True)

    while not stop.wait(0.25):
        drain()
    drain()


def _launch_ray(job: TrainJob, workers: int, strategy: str, ray_address: Optional[str]) -> dict[str, Any]:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tsa.train.ray_run import alive_nodes, describe_failure, lost_nodes
    from tsa.train.run_console import console_actor

    started = connect_ray(ray_address)
    try:
        use_gpu = check_workers(workers, ray.cluster_resources())
        nodes_at_start = alive_nodes()
        console = console_actor()
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"job": asdict(job), "strategy": strategy, "console": console},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
                                 storage_path=str(Path(job.out).resolve() / "ray"),
                                 failure_config=FailureConfig(max_failures=job.cfg.train.max_failures)),
        )
        stop = threading.Event()
        printer = threading.Thread(target=_pump, args=(console, stop), name="tsa-console", daemon=True)
        printer.start()
        try:
            with _failure_policy(console, nodes_at_start):
                trainer.fit()
        except ray.train.TrainingFailedError as e:
            stop.set()
            printer.join()
            message = describe_failure(e, ray.get(console.nodes.remote()), lost_nodes(nodes_at_start))
            restarts = ray.get(console.restarts.remote())
            if restarts:
                message += f" (after {restarts} restart(s); train.max_failures={job.cfg.train.max_failures})"
            raise TrainError(message) from None
        finally:
            stop.set()
            printer.join()
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
