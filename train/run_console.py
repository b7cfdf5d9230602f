"""`RunConsole`: the actor that carries a Ray Train run's console lines to the driver
(train/ray_run.py says how it is used). A module of its own, with no import beyond Ray's: the
actor's process imports it to build the class, and importing Ray Train there would add most of a
CPU-second to every run's start."""
from __future__ import annotations

from typing import Any


class RunConsole:
    """Lines from rank 0 and the workers' nodes, for the driver (a Ray actor, num_cpus=0)."""

    def __init__(self):
        self._lines: list[str] = []
        self._nodes: dict[int, str] = {}
        self._restarts = 0

    def put(self, line: str) -> None:
        self._lines.append(line)

    def restarted(self, line: str) -> None:
        self._restarts += 1
        self._lines.append(line)

    def hello(self, rank: int, node: str) -> None:
        self._nodes[int(rank)] = node

    def drain(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines

    def nodes(self) -> dict[int, str]:
        return dict(self._nodes)

    def restarts(self) -> int:
        return self._restarts


def console_actor() -> Any:
    """A RunConsole on this (the driver's) node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ray.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))(
        RunConsole).remote()
