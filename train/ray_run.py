"""What a `tsa train` on Ray Train workers shows and decides on the driver:

- `RunConsole` (train/run_console.py), a small actor on the driver's node: rank 0 sends its
  console lines (steps, notices) there and the driver prints each once; every worker says which
  node it runs on, so that an error names it. Nothing else of Ray's (controller logs, worker
  stderr) reaches the console (`log_to_driver=False`); it stays in Ray's session logs.
- `TsaFailurePolicy`, Ray Train's failure decision with one change: an error of the run itself
  (config, data, storage, non-finite loss, out of memory) stops at once instead of being retried
  `train.max_failures` times; a lost worker or node restarts the workers, which continue from
  the run's last checkpoint (train/launch.py), and the console says why and which node.
- `describe_failure`: the one error line when the run stops.

Imported only when workers run on Ray (it imports Ray Train's failure handling).
"""
from __future__ import annotations

import re
from typing import Optional

from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision


def run_errors() -> tuple[type, ...]:
    """Errors of the run itself: restarting cannot fix them (tsa's own checks name the key, file
    or node to change)."""
    import torch

    from tsa.configs.schema import ConfigError
    from tsa.models.family import ModelError
    from tsa.train.checkpoint import CheckpointMismatch
    from tsa.train.dataset_check import DatasetMismatch
    from tsa.train.loop import NonFiniteLoss
    from tsa.train.preflight import StorageError
    from tsa.train.shards import DataError

    return (ConfigError, DatasetMismatch, DataError, ModelError, NonFiniteLoss, CheckpointMismatch, StorageError,
            FileNotFoundError, torch.OutOfMemoryError)


def _cause(exc: BaseException) -> BaseException:
    while getattr(exc, "cause", None) is not None:  # RayTaskError wraps the user exception
        exc = exc.cause
    return exc


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0].strip()


def lost_worker(exc: BaseException) -> Optional[tuple[str, str]]:
    """(node, why) when `exc` is Ray Train's report of a worker that died or stopped answering
    (WorkerHealthCheckFailedError: its message holds the worker's hostname, IP and node id)."""
    if type(exc).__name__ != "WorkerHealthCheckFailedError":
        return None
    text = str(exc)
    found = {k: re.search(rf"{k}='([^']*)'", text) for k in ("hostname", "node_ip", "node_id")}
    host, ip, node_id = (m.group(1) if m else "?" for m in found.values())
    node = f"{host} ({ip}, node {node_id[:8]})"
    failure = str(getattr(exc, "health_check_failure", "") or "")
    why = [re.sub(r"\s*Node Id: [0-9a-f]+", "", line.strip()).rstrip(".")
           for line in failure.splitlines() if re.search(r"died because|terminated|killed|OOM|out of memory", line)]
    return node, "; ".join(why) or _first_line(failure) or "it stopped answering Ray's health checks"


def _rank_line(rank: int, exc: BaseException, nodes: dict[int, str]) -> str:
    lost = lost_worker(exc)
    if lost is not None:
        return f"worker {rank} on node {lost[0]} was lost: {lost[1]}"
    text = str(exc).strip()
    if " on node " in text:  # tsa's storage check names every worker's node itself
        return f"{type(exc).__name__}: {text}"
    return f"worker {rank} on node {nodes.get(rank, '?')}: {type(exc).__name__}: {text}"


def describe_failure(error: BaseException, nodes: dict[int, str], lost_nodes: list[str] = ()) -> str:
    """The cause of a failed run in one line (a tsa message that lists several workers keeps its
    lines): the run's own error first, else a lost worker, else the first worker's error; the
    node of each, and the nodes that left the cluster during the run."""
    failures = {rank: _cause(e) for rank, e in (getattr(error, "worker_failures", None) or {}).items()}
    if failures:
        own = run_errors()
        order = sorted(failures, key=lambda r: (not isinstance(failures[r], own),
                                                lost_worker(failures[r]) is None, r))
        first = order[0]
        line = _rank_line(first, failures[first], nodes)
        if len(order) > 1:
            line += f" (and {len(order) - 1} other worker(s) stopped with it)"
        named_node = lost_worker(failures[first]) is not None
    else:
        cause = _cause(getattr(error, "controller_failure", None) or error)
        if type(cause).__name__ == "WorkerGroupStartupTimeoutError":
            line = (f"the Ray cluster could not place {getattr(cause, 'num_workers', 'the')} workers within "
                    f"{RESOURCE_WAIT_S:.0f} s (Ray Train: {_first_line(str(cause))}); add nodes, or rerun with "
                    "--resume and fewer --workers")
        else:
            line = f"Ray Train: {type(cause).__name__}: {_first_line(str(cause))}"
        named_node = False
    if lost_nodes and not named_node:
        line += f"; node(s) that left the Ray cluster during the run: {', '.join(lost_nodes)}"
    return line


# How long a run waits for the cluster to place its workers again (after a lost node, Ray Train
# retries the start every RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default) before it stops.
RESOURCE_WAIT_S = 600.0


class TsaFailurePolicy(DefaultFailurePolicy):
    """Ray Train's default decision (retry worker failures up to FailureConfig.max_failures),
    except that an error of the run itself stops at once, and waiting for the cluster to place
    the workers again stops after RESOURCE_WAIT_S (Ray Train would wait forever, silently);
    each restart and each wait is a console line."""

    def __init__(self, failure_config, console=None, nodes_at_start: Optional[dict[str, str]] = None):
        super().__init__(failure_config)
        self.console = console
        self.nodes_at_start = dict(nodes_at_start or {})
        self.waited_s = 0.0

    def _say(self, line: str, restart: bool = False) -> None:
        if self.console is not None:
            (self.console.restarted if restart else self.console.put).remote(line)

    def _nodes(self) -> dict[int, str]:
        try:
            import ray

            return ray.get(self.console.nodes.remote(), timeout=10) if self.console is not None else {}
        except Exception:  # noqa: BLE001 (the line is still worth printing without node names)
            return {}

    def make_decision(self, training_failed_error) -> FailureDecision:
        failures = getattr(training_failed_error, "worker_failures", None) or {}
        if any(isinstance(_cause(e), run_errors()) for e in failures.values()):
            return FailureDecision.RAISE
        startup = getattr(training_failed_error, "controller_failure", None)
        if type(startup).__name__ == "WorkerGroupStartupTimeoutError":
            from ray.train.v2._internal.constants import (DEFAULT_WORKER_GROUP_START_TIMEOUT_S,
                                                          WORKER_GROUP_START_TIMEOUT_S_ENV_VAR)
            import os

            self.waited_s += float(os.environ.get(WORKER_GROUP_START_TIMEOUT_S_ENV_VAR,
                                                  DEFAULT_WORKER_GROUP_START_TIMEOUT_S))
            if self.waited_s >= RESOURCE_WAIT_S:
                return FailureDecision.RAISE
            lost = lost_nodes(self.nodes_at_start)
            self._say(f"waiting for the Ray cluster to place {getattr(startup, 'num_workers', '?')} workers "
                      f"({self.waited_s:.0f} s so far, stopping after {RESOURCE_WAIT_S:.0f} s)"
                      + (f"; node(s) that left the cluster: {', '.join(lost)}" if lost else ""))
        decision = super().make_decision(training_failed_error)
        if decision == FailureDecision.RETRY and failures:
            limit = self.failure_config.max_failures
            self._say(f"{describe_failure(training_failed_error, self._nodes())}; restarting the workers from the "
                      f"run's last checkpoint (restart {getattr(self, '_worker_group_failures', '?')} of "
                      f"{'unlimited' if limit == -1 else limit}, train.max_failures)", restart=True)
        return decision


def lost_nodes(at_start: dict[str, str]) -> list[str]:
    """Names of the nodes alive at the start (node id -> name) that are not alive now."""
    if not at_start:
        return []
    try:
        alive = alive_nodes()
    except Exception:  # noqa: BLE001 (no connection to ask: nothing to name)
        return []
    return [name for node, name in at_start.items() if node not in alive]


def alive_nodes() -> dict[str, str]:
    """node id -> `hostname (ip, node id8)` of the cluster's alive nodes."""
    import ray

    return {n["NodeID"]: f"{n.get('NodeManagerHostname', '?')} ({n.get('NodeManagerAddress', '?')}, "
                         f"node {n['NodeID'][:8]})" for n in ray.nodes() if n.get("Alive")}
