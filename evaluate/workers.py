"""Deal videos out to workers: in this process (one worker, no Ray address), or one Ray actor per
GPU (per CPU on a cluster without GPUs), each holding its own pipeline.

Each worker has two videos queued (PREFETCH): the one it makes and the next, so it never waits
for the driver; as one returns, the next is queued. Only the driver writes files: a worker
returns mp4 bytes. A worker that dies (its process killed, a node lost) loses only the video it
was making: that video and the one queued behind it go back to the front of the queue and a
fresh worker takes its place. An
exception raised inside a worker (a bad prompt, a CUDA error) stops the run with its message;
the videos already made stay recorded, so rerunning continues.
"""
from __future__ import annotations

import itertools
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from tsa.evaluate.render import Job, timed_render


PREFETCH = 2  # videos queued on a worker at once: the one it makes, and the next
WAIT_NOTICE_S = 120.0  # say which workers are still not ready after this long without any event


class WorkerError(RuntimeError):
    """The workers could not start or a video failed; the message says which and why."""


@dataclass
class PoolEvents:
    """Callbacks of a run: `ready(worker, where)` once a worker's pipeline is built, `done(job,
    data, seconds)` for each video (on the driver, in completion order), `notice(text)`."""

    done: Callable[[Job, bytes, float], None]
    ready: Callable[[int, str], None] = lambda worker, where: None
    notice: Callable[[str], None] = lambda text: None


def run_jobs(jobs: Sequence[Job], factory: Callable[[], Any], workers: int, events: PoolEvents,
             ray_address: Optional[str] = None) -> None:
    """Make every job. `factory()` builds a renderer (an object with `render(job) -> bytes`); it
    must be picklable when Ray runs it in other processes."""
    if workers < 1:
        raise WorkerError(f"--workers {workers}: must be >= 1")
    if not jobs:
        return
    if workers == 1 and ray_address is None:
        renderer = factory()
        events.ready(0, "this process")
        for job in jobs:
            events.done(job, *timed_render(renderer, job))
        return
    import ray

    started = connect_ray(ray_address)
    try:
        _run_pool(list(jobs), factory, min(workers, len(jobs)), workers, events)
    finally:
        if started:
            ray.shutdown()


def connect_ray(address: Optional[str]) -> bool:
    """Join the cluster at `address` (`auto`, host:port, ray://...), else RAY_ADDRESS (set by
    `ray job submit`), else start a local Ray; never a stray `ray start` cluster on this machine.
    A cluster that cannot be reached or refuses us is one line within seconds
    (cluster/connect.py, as for preprocess and train). Returns whether Ray was started here."""
    from tsa.cluster.connect import RayConnectError, connect
    from tsa.models.cache import cache_root

    try:
        # A local Ray's workers see the same $TSA_CACHE (tiny models, hub downloads) as this process.
        return connect(address, log_to_driver=False, local_env={"TSA_CACHE": str(cache_root())})
    except RayConnectError as e:
        raise WorkerError(str(e)) from None


def actor_resources(workers: int, resources: dict) -> tuple[dict, str]:
    """Ray options of one worker and a line saying where the workers run: one GPU each when the
    cluster has GPUs (and no CPU reserved: the pipeline runs on the GPU), else one CPU each."""
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if gpus > 0:
        if gpus < workers:
            raise WorkerError(f"--workers {workers}: the Ray cluster has {gpus} GPU(s)")
        return {"num_gpus": 1, "num_cpus": 0}, f"{workers} worker(s), one GPU each"
    if cpus < workers:
        raise WorkerError(f"--workers {workers}: the Ray cluster has no GPUs and {cpus} CPU(s)")
    return {"num_gpus": 0, "num_cpus": 1}, f"{workers} worker(s) on CPUs (the Ray cluster has no GPUs)"


class _Worker:
    """A Ray actor holding one renderer."""

    def __init__(self, factory):
        self.renderer = factory()

    def where(self) -> str:
        import socket

        import ray

        gpu = ",".join(str(g) for g in ray.get_gpu_ids()) or "-"
        return f"{socket.gethostname()} pid {os.getpid()} gpu {gpu}"

    def render(self, job: Job) -> tuple[bytes, float]:
        return timed_render(self.renderer, job)


def _cause(e: BaseException) -> str:
    text = str(getattr(e, "cause", None) or e).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:500]


def _run_pool(queue_jobs: list[Job], factory, n: int, asked: int, events: PoolEvents) -> None:
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    options, where = actor_resources(asked, ray.cluster_resources())
    events.notice(where)
    actor_cls = ray.remote(_Worker)
    queue = deque(queue_jobs)
    actors: dict[int, Any] = {}
    pending: dict[Any, tuple[str, int, Optional[Job]]] = {}  # ref -> (kind, worker, job)
    deaths, max_deaths = 0, 2 * n + 2
    order: dict[Any, int] = {}  # render ref -> when it was queued
    counter = itertools.count()

    def spawn(worker: int) -> None:
        # max_restarts=0: a dead worker is replaced here, where its lost video is requeued.
        actors[worker] = actor_cls.options(max_restarts=0, max_task_retries=0, **options).remote(factory)
        pending[actors[worker].where.remote()] = ("ready", worker, None)

    def in_flight(worker: int) -> list:
        """The worker's queued render refs."""
        return [ref for ref, (kind, w, _) in pending.items() if w == worker and kind == "render"]

    def give(worker: int) -> None:
        """Top the worker up to PREFETCH videos (it starts the next one while the driver
        writes the last); a worker with nothing left is let go, freeing its GPU."""
        queued = len(in_flight(worker))
        while queue and queued < PREFETCH:
            job = queue.popleft()
            ref = actors[worker].render.remote(job)
            pending[ref] = ("render", worker, job)
            order[ref] = next(counter)
            queued += 1
        if not queued:
            ray.kill(actors.pop(worker))

    try:
        for worker in range(n):
            spawn(worker)
        start, ready = time.monotonic(), set()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_NOTICE_S)
            if not done:
                loading = [w for w in actors if w not in ready]
                if loading:
                    free = ray.available_resources()
                    events.notice(f"{len(loading)} of {n} workers not ready after {time.monotonic() - start:.0f} s "
                                  f"(loading the pipeline, or waiting for a free GPU: the cluster has "
                                  f"{free.get('GPU', 0):g} GPU(s) and {free.get('CPU', 0):g} CPU(s) free)")
                continue
            (ref,) = done
            kind, worker, job = pending.pop(ref)
            try:
                result = ray.get(ref)
            except RayTaskError as e:  # raised inside the worker: the same input would raise again
                if kind == "ready":
                    raise WorkerError(f"worker {worker} could not build the pipeline: {_cause(e)}") from None
                raise WorkerError(f"{job.file} (prompt {job.index}): {_cause(e)}") from None
            except RayActorError as e:
                if kind == "ready" and "__init__" in str(e):
                    raise WorkerError(f"worker {worker} could not build the pipeline: {_cause(e)}") from None
                deaths += 1
                # Every queued video of the worker fails with it, in any order: the first queued
                # one was being made (lost), the others had not started.
                if job is not None:
                    pending[ref] = (kind, worker, job)
                refs = sorted(in_flight(worker), key=order.__getitem__)
                back = [pending.pop(r)[2] for r in refs]
                for r in refs:
                    del order[r]
                current = back[0] if back else None
                lost = f"; {current.file} goes back in the queue" if current is not None else ""
                events.notice(f"worker {worker} died ({_cause(e)}){lost}")
                if deaths > max_deaths:
                    making = f" while making {current.file}" if current is not None else " while loading"
                    raise WorkerError(f"{deaths} workers died (the last{making}: {_cause(e)}); stopping") from None
                queue.extendleft(reversed(back))
                ready.discard(worker)
                try:
                    ray.kill(actors.pop(worker))
                except Exception:  # noqa: BLE001 (already gone)
                    pass
                if queue:
                    spawn(worker)
                continue
            order.pop(ref, None)
            give(worker)  # before the driver writes this video, so that the worker never waits
            if kind == "ready":
                ready.add(worker)
                events.ready(worker, result)
            else:
                events.done(job, *result)
    finally:
        for actor in actors.values():
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass
