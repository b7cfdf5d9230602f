"""Per-clip progress of a running preprocess, out of band of the rows.

Finished rows reach the driver only at the end of the last model stage, in that stage's
batches (T5's batch of 16 held a small run's bar at 0/15 until the very end). So every stage
reports its own count to one small actor as it finishes clips (decode tasks per clip, model
stages per batch; fire-and-forget calls, a few a clip), and the driver asks it for the counts
twice a second without waiting on the answer (`ProgressProbe`). The bar then moves per clip:
its position is the mean over the stages and the writer of the clips each has finished.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

STAGES = ("decode", "vae", "teacher", "text")


class StageCounter:
    """Ray actor (0 CPUs): clips finished per stage."""

    def __init__(self) -> None:
        self.n: dict[str, int] = {}

    def add(self, stage: str, n: int = 1) -> None:
        self.n[stage] = self.n.get(stage, 0) + int(n)

    def counts(self) -> dict[str, int]:
        return dict(self.n)


def start_counter(ray_module):
    return ray_module.remote(num_cpus=0, max_restarts=-1)(StageCounter).remote()


def report(counter, stage: str, n: int) -> None:
    """From a stage: `n` more clips done (never raises: progress must not fail a clip)."""
    if counter is None or n <= 0:
        return
    try:
        counter.add.remote(stage, n)
    except Exception:  # noqa: BLE001 (the counter is gone, e.g. the driver is stopping)
        pass


class ProgressProbe:
    """Driver side: call it often; it hands the counts to `on_progress` when an earlier request
    has answered, then asks again. Never blocks on the actor."""

    def __init__(self, ray_module, counter, on_progress: Optional[Callable[[dict[str, int]], None]]):
        self.ray, self.counter, self.on_progress = ray_module, counter, on_progress
        self.pending = None

    def __call__(self) -> None:
        if self.on_progress is None:
            return
        if self.pending is not None:
            ready, _ = self.ray.wait([self.pending], timeout=0)
            if not ready:
                return
            try:
                self.on_progress(self.ray.get(self.pending))
            except Exception:  # noqa: BLE001 (a counter that died: the rows still count)
                pass
        self.pending = self.counter.counts.remote()

    def final(self, timeout_s: float = 5.0) -> None:
        """The last counts (after the last row), waiting a little for them."""
        if self.on_progress is None:
            return
        try:
            self.on_progress(self.ray.get(self.counter.counts.remote(), timeout=timeout_s))
        except Exception:  # noqa: BLE001
            pass


def position(counts: dict[str, Any], written: int, todo: int) -> float:
    """Clips of progress: the mean over the stages and the writer of the clips each finished."""
    parts = [min(todo, int(counts.get(s, 0))) for s in STAGES] + [min(todo, written)]
    return sum(parts) / len(parts)
