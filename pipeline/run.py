"""`tsa preprocess`: one Ray Data pipeline from the clip list to finished shards.

    items (driver) -> map: decode + motion + preview (CPU tasks)
                   -> map_batches: VAE, teacher, T5 (actor pools; num_gpus/num_cpus/batch_size/actors
                      from cfg.preprocess.<stage>; fractional GPUs let one GPU host all three)
                   -> iter_rows in the driver, in input order (preserve_order) -> ShardWriter

Writing in the driver is the simple, correct choice here: rows arrive in input order, so
each shard is written front to back and published (tar rename, then `.json` marker) as
soon as its last row arrives; memory holds one row at a time. A killed run leaves at most a
`.tmp` tar, removed on restart; shards with a marker are never redone. The VAE runs first
so the big decoded frames leave the object store early.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from configs.schema import Config
from pipeline.dataset_info import (
    build_dataset_info,
    check_same_output,
    inputs_fingerprint,
    read_dataset_info,
)
from pipeline.layout import DATASET_JSON, MANIFEST, MASKS, SHARDS_DIR, TMP_SUFFIX, shard_marker, shard_of
from pipeline.sources import ClipItem, select_inputs
from pipeline.writer import ShardWriter, remove_partial_shards, write_json_atomic


class PreprocessError(RuntimeError):
    """A real error that stops the run (bad config, missing --src, cluster without GPUs, ...)."""


@dataclass
class RunResult:
    out: Path
    total: int  # clips in the input list
    counts: dict[str, int]  # ok / failed / skipped over the whole output (manifest)
    processed: int  # clips processed by this run (0 when every shard was already done)
    shards_written: int
    shards_done_before: int
    reasons: dict[str, int] = field(default_factory=dict)  # failure reason -> count (this run)
    ray_start_s: float = 0.0
    process_s: float = 0.0  # first row requested -> last shard published
    removed_partial: int = 0

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.process_s if self.process_s > 0 else 0.0


def _clear_output(out: Path) -> None:
    """--overwrite: remove what a previous run wrote (only our files, never the whole folder)."""
    for name in (DATASET_JSON, MANIFEST, MASKS, DATASET_JSON + TMP_SUFFIX, MANIFEST + TMP_SUFFIX,
                 MASKS + TMP_SUFFIX):
        (out / name).unlink(missing_ok=True)
    shards = out / SHARDS_DIR
    if shards.is_dir():
        shutil.rmtree(shards)


def prepare_output(out: Path, info: dict[str, Any], overwrite: bool) -> int:
    """Create or check `out`; write dataset.json; drop partial shards. Returns how many partial
    files were removed."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _clear_output(out)
    old = read_dataset_info(out)
    if old is not None:
        check_same_output(old, info, out)
    elif (out / SHARDS_DIR).is_dir() and any((out / SHARDS_DIR).iterdir()):
        raise PreprocessError(f"{out}/{SHARDS_DIR} has files but no {DATASET_JSON}; use --overwrite or another --out")
    write_json_atomic(out / DATASET_JSON, info)
    return len(remove_partial_shards(out))


def _check_gpus(cfg: Config, ray_module) -> None:
    wanted = {n: getattr(cfg.preprocess, n).num_gpus for n in ("teacher", "vae", "text")}
    if any(v > 0 for v in wanted.values()) and ray_module.cluster_resources().get("GPU", 0) == 0:
        asked = ", ".join(f"preprocess.{n}.num_gpus={v}" for n, v in wanted.items() if v > 0)
        raise PreprocessError(f"the Ray cluster has no GPUs but the config asks for them ({asked}); set them to 0 "
                              f"(e.g. -o preprocess.vae.num_gpus=0) to run on CPU, or use --ray-address for a GPU cluster")


def start_ray(address: Optional[str]) -> tuple[bool, float]:
    """Connect to (or start) Ray. Returns (started_here, seconds)."""
    import ray

    t0 = time.perf_counter()
    if ray.is_initialized():
        return False, 0.0
    from configs.tiny_models import cache_root

    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"TSA_CACHE": str(cache_root())}} if address is None else None)
    return True, time.perf_counter() - t0


def configure_ray_data() -> None:
    """Rows in input order (the writer relies on it); no Ray Data progress bars (ours is the bar)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Its advice (reserve `memory=` per actor) is a cluster-sizing choice; the config's resources decide.
    ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1


def prepare_dataset(items: list[ClipItem], cfg: Config):
    """The lazy Ray Dataset of the CPU stage: one row per item (see pipeline/prepare.py)."""
    import ray

    configure_ray_data()
    rows = [{"index": it.index, "key": it.key, "video": it.video, "path": it.path, "caption": it.caption,
             "status": it.status, "error": it.error, "extras_json": _dumps(it.extras)} for it in items]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))  # one clip per task
    return ds.map(_prepare_row, fn_kwargs={"cfg_dict": cfg.to_dict()}, num_cpus=cfg.preprocess.decode.num_cpus)


def build_dataset(items: list[ClipItem], cfg: Config):
    """The lazy Ray Dataset of finished rows for `items` (see the module docstring)."""
    from ray.data import ActorPoolStrategy

    from configs.tiny_models import cache_root
    from pipeline.encoders import TeacherStage, TextStage, VaeStage

    ds = prepare_dataset(items, cfg)
    p = cfg.preprocess
    kwargs = {"cfg_dict": cfg.to_dict(), "cache_dir": str(cache_root())}
    for stage, res in ((VaeStage, p.vae), (TeacherStage, p.teacher), (TextStage, p.text)):
        ds = ds.map_batches(stage, fn_constructor_kwargs=kwargs, batch_format="numpy", batch_size=res.batch_size,
                            compute=ActorPoolStrategy(size=res.actors), num_gpus=res.num_gpus,
                            num_cpus=res.num_cpus, zero_copy_batch=False)
    return ds


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


_PREPARE_CACHE: dict[str, Any] = {}


def _prepare_row(row: dict[str, Any], cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """Dataset.map function: rebuilds the item's extras and runs Prepare (cached per worker)."""
    import json

    from pipeline.prepare import Prepare

    tag = _dumps(cfg_dict)
    prep = _PREPARE_CACHE.get(tag)
    if prep is None:
        prep = _PREPARE_CACHE[tag] = Prepare(cfg_dict)
    item = dict(row, extras=json.loads(row.pop("extras_json")))
    return prep(item)


def write_rows(out: Path, rows, items: list[ClipItem], cfg: Config,
               on_row: Optional[Callable[[dict[str, Any]], None]] = None) -> tuple[int, dict[str, int]]:
    """Write the rows (in input order) into their shards; returns (shards written, failure reasons)."""
    import json

    import numpy as np

    from pipeline.encode import encode_sample
    from pipeline.layout import member_specs

    sps = cfg.preprocess.samples_per_shard
    expected: dict[int, int] = {}
    for it in items:
        expected[shard_of(it.index, sps)] = expected.get(shard_of(it.index, sps), 0) + 1
    arrays_wanted = [n[:-len(".npy")] for n in member_specs(cfg) if n != "teacher_scale.npy"]
    writer: Optional[ShardWriter] = None
    seen = 0
    written = 0
    reasons: dict[str, int] = {}
    try:
        for row in rows:
            index = int(row["index"])
            shard = shard_of(index, sps)
            if writer is None or writer.shard != shard:
                if writer is not None:
                    raise PreprocessError(f"shard {writer.shard} ended after {seen} of {expected[writer.shard]} rows")
                writer, seen = ShardWriter(out, shard), 0
            manifest = json.loads(row["row_json"])
            if bool(row["ok"]):
                try:
                    arrays = {n: np.asarray(row[n]) for n in arrays_wanted}
                    members = encode_sample(arrays, bytes(row["preview"]), json.loads(row["meta_json"]), cfg)
                except (ValueError, KeyError) as e:
                    manifest.update(status="failed", error=f"encoding: {e}")
                    writer.add(manifest)
                else:
                    writer.add(manifest, members)
            else:
                writer.add(manifest)
            if manifest["status"] == "failed":
                reason = _reason(manifest["error"])
                reasons[reason] = reasons.get(reason, 0) + 1
            seen += 1
            if on_row is not None:
                on_row(manifest)
            if seen == expected[shard]:
                writer.close()
                writer = None
                written += 1
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.abort()
        raise PreprocessError(f"the pipeline ended inside shard {writer.shard} ({seen} of {expected[writer.shard]} rows)")
    return written, reasons


def _reason(error: Optional[str]) -> str:
    """Group failures for the summary: the error without paths and numbers."""
    import re

    text = re.sub(r"(/[^\s,:]+)+", "<path>", error or "unknown")
    return text[:120]


def clip_list_fingerprint(items: list[ClipItem]) -> str:
    """The ordered (key, video, caption) list: shard assignment follows the order, and a
    changed caption would leave old text embeddings in the finished shards."""
    return inputs_fingerprint([(it.key, it.video, it.caption) for it in items])


def run_preprocess(src: str | Path, out: str | Path, cfg: Config, *, subset: Optional[str | Path] = None,
                   limit: Optional[int] = None, ray_address: Optional[str] = None, overwrite: bool = False,
                   on_start: Optional[Callable[[int, int], None]] = None,
                   on_row: Optional[Callable[[dict[str, Any]], None]] = None, **inputs: Any) -> RunResult:
    """Preprocess the clips in `src` into `out`. `cfg` is used with its model refs as written
    (e.g. `tiny`); they are resolved for hashing here and inside each actor. `inputs`: the other
    input options of `pipeline.sources.select_inputs` (csvs, videos, where, sample, seed).

    `on_start(todo_clips, total_clips)` and `on_row(manifest_row)` drive a progress display.
    """
    import copy

    from configs.tiny_models import resolve_tiny
    from pipeline.finalize import finalize
    from pipeline.model_refs import model_records, vae_scaling_factor

    out = Path(out)
    selection = select_inputs(src, subset=subset, limit=limit, **inputs)
    items = selection.items
    resolved = resolve_tiny(copy.deepcopy(cfg))
    models = model_records(cfg, resolved)
    info = build_dataset_info(cfg, models=models, num_clips=len(items),
                              inputs_fp=clip_list_fingerprint(items),
                              scaling_factor=vae_scaling_factor(resolved), source=selection.source)
    removed = prepare_output(out, info, overwrite)
    selection.write_subset(out)
    sps = cfg.preprocess.samples_per_shard
    n_shards = info["num_shards"]
    done = {s for s in range(n_shards) if shard_marker(out, s).exists()}
    todo = [it for it in items if shard_of(it.index, sps) not in done]
    if on_start is not None:
        on_start(len(todo), len(items))

    result = RunResult(out=out, total=len(items), counts={}, processed=len(todo), shards_written=0,
                       shards_done_before=len(done), removed_partial=removed)
    if todo:
        started, result.ray_start_s = start_ray(ray_address)
        try:
            import ray

            _check_gpus(cfg, ray)
            t0 = time.perf_counter()
            ds = build_dataset(todo, cfg)
            result.shards_written, result.reasons = write_rows(out, ds.iter_rows(), todo, cfg, on_row)
            result.process_s = time.perf_counter() - t0
        finally:
            if started:
                import ray

                ray.shutdown()
    result.counts = finalize(out, n_shards, tuple(cfg.geometry.teacher_grid))
    return result

