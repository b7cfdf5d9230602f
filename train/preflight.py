"""Before any model loads, every worker checks the storage it will use: it can read the
shards and the local model folders, and it can write `--out` in a place that every other
worker sees too (checkpoints are one folder written by all ranks). A failure names the
worker's node and the path, instead of a FileNotFoundError deep inside a checkpoint save
hours later."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from tsa.configs.schema import Config
from tsa.shards.storage import is_url
from tsa.train.distributed import Dist

PROBE = ".tsa-storage-probe-rank{rank}"


class StorageError(RuntimeError):
    """A worker cannot read or write a path the run needs; the message names node and path."""


def node_name() -> str:
    """`hostname (ip, node id)` of this process's machine as Ray names it when Ray runs it (the
    first 8 hex digits of the Ray node id tell apart nodes that share a host), else the host name."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{host} ({ray.util.get_node_ip_address()}, node {ray.get_runtime_context().get_node_id()[:8]})"
    except Exception:  # Ray absent or not connected: the host name is enough
        pass
    return host


def _local_model_paths(cfg: Config) -> list[tuple[str, Path]]:
    """(config key, path) of the model refs `tsa train` loads that are local paths (absolute
    after train.command.absolute_model_refs); hub ids and URLs are left to their loaders."""
    refs = [("models.student", cfg.models.student), ("models.scheduler", cfg.models.scheduler)]
    return [(k, Path(v)) for k, v in refs if not is_url(v) and Path(v).is_absolute()]


def _read_errors(shards: str, cfg: Config) -> list[str]:
    errors = []
    if is_url(shards):  # the bucket as this worker sees it (its credentials, its network)
        from tsa.train.dataset_check import probe_dataset

        try:
            probe_dataset(shards)
        except Exception as e:  # noqa: BLE001 (any failure to read is this worker's storage problem)
            first = (str(e).strip().splitlines() or [""])[0]
            errors.append(f"cannot read --shards {shards} ({type(e).__name__}: {first})")
    else:
        root = Path(shards)
        info = root / "dataset.json" if (root / "dataset.json").exists() else root.parent / "dataset.json"
        try:
            with open(info, "rb") as f:
                f.read(1)
        except OSError as e:
            errors.append(f"cannot read --shards {shards} ({info.name}: {e.strerror or e})")
    for key, path in _local_model_paths(cfg):
        if not path.exists():
            errors.append(f"{key}={path}: not found")
        elif not os.access(path, os.R_OK):
            errors.append(f"{key}={path}: not readable")
    return errors


def check_storage(shards: str, out: str, cfg: Config, dist: Dist) -> None:
    """Collective: every rank calls it. Raises StorageError on every rank if any rank fails."""
    where = f"worker {dist.rank} on node {node_name()}"
    out_dir = Path(out)
    probe = out_dir / PROBE.format(rank=dist.rank)
    errors = [f"{where}: {e}" for e in _read_errors(shards, cfg)]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "w") as f:
            f.write(where)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        errors.append(f"{where}: cannot write --out {out} ({e.strerror or e})")
    _raise_if_any(dist, errors)
    dist.barrier()
    # Every probe must be visible to every rank: otherwise --out is not shared storage.
    missing = [r for r in range(dist.world) if not (out_dir / PROBE.format(rank=r)).is_file()]
    errors = [f"{where}: --out {out} is not shared storage: it does not see the files that worker(s) "
              f"{', '.join(map(str, missing))} wrote there"] if missing else []
    dist.barrier()
    probe.unlink(missing_ok=True)
    _raise_if_any(dist, errors)


def _raise_if_any(dist: Dist, errors: list[str]) -> None:
    every = [e for part in dist.gather(errors) for e in part]
    if every:
        raise StorageError("storage check failed before loading any model:\n  " + "\n  ".join(every))

