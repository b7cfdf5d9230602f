"""`tsa preprocess`: one Ray Data pipeline from the clip list to finished shards.

    connect to Ray (clear exit-2 errors) -> plan: actors per stage from the cluster (pipeline/plan.py)
    -> storage check on every node -> write dataset.json
    items (driver) -> map: decode (in a killable child, with a deadline) + motion + preview (CPU tasks)
                   -> map_batches: VAE, teacher, T5 (actor pools; num_gpus/num_cpus/batch_size/actors
                      from cfg.preprocess.<stage>; fractional GPUs let one GPU host all three;
                      or one pool of actors holding all three: preprocess.model_actors=shared)
                   -> iter_rows in the driver, in completion order -> ShardAssembler

Rows arrive in whatever order they finish (no `preserve_order`: one slow or stuck clip holds
back no other). The assembler still writes each shard in input order (early rows spill to a
per-shard temporary file) and publishes it (tar rename, then `.json` marker) when its last row
arrives. A killed run leaves only `.tmp` files, removed on restart; shards with a marker are
never redone, except the failed rows of `--retry-failed`. A watchdog stops the run with a
message naming what waits when no row arrives for `preprocess.stall_timeout_s`.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from tsa.configs.schema import Config
from tsa.shards.dataset_info import (
    build_dataset_info,
    check_same_output,
    inputs_fingerprint,
    read_dataset_info,
)
from tsa.shards.layout import DATASET_JSON, MANIFEST, MASKS, SHARDS_DIR, SUBSET_FILE, TMP_SUFFIX, shard_of
from tsa.pipeline.inputs import select_inputs
from tsa.pipeline.plan import pool_resources
from tsa.pipeline.sources import ClipItem
from tsa.shards.writer import remove_partial_shards, write_json_atomic


class PreprocessError(RuntimeError):
    """A real error that stops the run (bad config, missing --src, cluster without GPUs, ...)."""


class RunStalled(RuntimeError):
    """No clip finished for `preprocess.stall_timeout_s` while clips remained."""


@dataclass
class RunResult:
    out: Path | str  # the folder, or the URL of an output in a bucket
    total: int  # clips in the input list
    counts: dict[str, int]  # ok / failed / skipped over the whole output (manifest)
    processed: int  # clips processed by this run (0 when every shard was already done)
    shards_written: int
    shards_done_before: int
    reasons: dict[str, int] = field(default_factory=dict)  # failure reason -> count (this run)
    ray_start_s: float = 0.0
    process_s: float = 0.0  # first row requested -> last shard published
    removed_partial: int = 0
    retried: int = 0  # failed rows of finished shards re-processed (--retry-failed)
    shards_unchanged: int = 0  # --retry-failed: rebuilt shards whose rows came out as before (not republished)
    finalize_rebuilt: int = 0  # shards whose markers and maps finalize read (0: manifest and masks were current)
    shards_by_node: dict[str, int] = field(default_factory=dict)  # Ray node id -> shards its writers published
    max_failed_fraction: float = 0.5

    @property
    def clips_per_s(self) -> float:
        return self.processed / self.process_s if self.process_s > 0 else 0.0

    @property
    def failed_fraction(self) -> float:
        """Failed clips over the clips that were tried (ok + failed; skipped duplicates aside)."""
        tried = self.counts.get("ok", 0) + self.counts.get("failed", 0)
        return self.counts.get("failed", 0) / tried if tried else 0.0

    @property
    def too_many_failed(self) -> bool:
        """Every clip failed, or more than `preprocess.max_failed_fraction` of them: exit non-zero."""
        failed = self.counts.get("failed", 0)
        return failed > 0 and (failed == self.counts.get("ok", 0) + failed
                               or self.failed_fraction > self.max_failed_fraction)


def _clear_output(out: Path) -> None:
    """--overwrite: remove what a previous run wrote (only our files, never the whole folder)."""
    for name in (DATASET_JSON, MANIFEST, MASKS, SUBSET_FILE, DATASET_JSON + TMP_SUFFIX, MANIFEST + TMP_SUFFIX,
                 MASKS + TMP_SUFFIX):
        (out / name).unlink(missing_ok=True)
    shards = out / SHARDS_DIR
    if shards.is_dir():
        shutil.rmtree(shards)


def check_output(out: Path, info: dict[str, Any], overwrite: bool, shown: Optional[Path | str] = None) -> None:
    """Refuse an `out` that holds another output (read-only: nothing is written yet). `shown`:
    the name in messages (the URL of an output in a bucket; `out` is then its staging folder)."""
    if overwrite:
        return
    old = read_dataset_info(out)
    if old is not None:
        check_same_output(old, info, shown or out)
    elif (out / SHARDS_DIR).is_dir() and any((out / SHARDS_DIR).iterdir()):
        raise PreprocessError(f"{out}/{SHARDS_DIR} has files but no {DATASET_JSON}; use --overwrite or another --out")


def prepare_output(out: Path, info: dict[str, Any], overwrite: bool) -> int:
    """Create or check `out`; write dataset.json; drop partial shards. Returns how many partial
    files were removed."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _clear_output(out)
    check_output(out, info, False)
    write_json_atomic(out / DATASET_JSON, info)
    return len(remove_partial_shards(out))


def _check_gpus(cfg: Config, ray_module) -> None:
    wanted = {n: getattr(cfg.preprocess, n).num_gpus for n in ("teacher", "vae", "text")}
    if any(v > 0 for v in wanted.values()) and ray_module.cluster_resources().get("GPU", 0) == 0:
        asked = ", ".join(f"preprocess.{n}.num_gpus={v}" for n, v in wanted.items() if v > 0)
        raise PreprocessError(f"the Ray cluster has no GPUs but the config asks for them ({asked}); set them to 0 "
                              f"(e.g. -o preprocess.vae.num_gpus=0) to run on CPU, or use --ray-address for a GPU cluster")


def start_ray(address: Optional[str]) -> tuple[bool, float]:
    """Connect to (or start) Ray through cluster/connect.py, as train and sample do. Returns
    (started_here, seconds). A cluster that cannot be reached or refuses us is a PreprocessError
    (one line) within seconds, before anything is written."""
    from tsa.cluster.connect import RayConnectError, connect
    from tsa.models.cache import cache_root

    t0 = time.perf_counter()
    try:
        started = connect(address, log_to_driver=False, local_env={"TSA_CACHE": str(cache_root())})
    except RayConnectError as e:
        raise PreprocessError(str(e)) from None
    return started, (time.perf_counter() - t0) if started else 0.0


def configure_ray_data() -> None:
    """Rows in completion order (the assembler restores input order); no Ray Data progress bars
    (ours is the bar)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Its advice (reserve `memory=` per actor) is a cluster-sizing choice; the config's resources decide.
    ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1


def prepare_dataset(items: list[ClipItem], cfg: Config, progress=None, clips_per_block: int = 1):
    """The lazy Ray Dataset of the CPU stage: one row per item (see pipeline/prepare.py), in
    blocks of `clips_per_block` clips (a decode task takes a block's clips in turn; plan.blocks).
    `progress`: a pipeline.progress.StageCounter actor each decoded clip is reported to."""
    import ray

    configure_ray_data()
    rows = [{"index": it.index, "key": it.key, "video": it.video, "path": it.path, "caption": it.caption,
             "status": it.status, "error": it.error, "extras_json": _dumps(it.extras)} for it in items]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // max(1, clips_per_block))))
    return ds.map(_prepare_row, fn_kwargs={"cfg_dict": cfg.to_dict(), "progress": progress},
                  num_cpus=cfg.preprocess.decode.num_cpus)


def build_dataset(items: list[ClipItem], cfg: Config, actors: Optional[dict[str, int]] = None, progress=None,
                  clips_per_block: int = 1):
    """The lazy Ray Dataset of finished rows for `items` (see the module docstring). `actors`:
    pool size per model stage (pipeline.plan.make_plan); default: the config's integers, 1 for auto.
    `progress`: a pipeline.progress.StageCounter actor every stage reports its clips to."""
    from ray.data import ActorPoolStrategy

    from tsa.models.cache import cache_root
    from tsa.pipeline.encoders import SharedModelsStage, TeacherStage, TextStage, VaeStage

    ds = prepare_dataset(items, cfg, progress, clips_per_block)
    kwargs = {"cfg_dict": cfg.to_dict(), "cache_dir": str(cache_root()), "progress": progress}
    stages = {"vae": VaeStage, "teacher": TeacherStage, "text": TextStage, "models": SharedModelsStage}
    for name, res in pool_resources(cfg).items():
        size = (actors or {}).get(name) or (res.actors if isinstance(res.actors, int) else 1)
        ds = ds.map_batches(stages[name], fn_constructor_kwargs=kwargs, batch_format="numpy",
                            batch_size=res.batch_size, compute=ActorPoolStrategy(size=size), num_gpus=res.num_gpus,
                            num_cpus=res.num_cpus, zero_copy_batch=False)
    return ds


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


_PREPARE_CACHE: dict[str, Any] = {}


def _prepare_row(row: dict[str, Any], cfg_dict: dict[str, Any], progress=None) -> dict[str, Any]:
    """Dataset.map function: rebuilds the item's extras and runs Prepare (cached per worker)."""
    import json

    from tsa.pipeline.prepare import Prepare
    from tsa.pipeline.progress import report

    tag = _dumps(cfg_dict)
    prep = _PREPARE_CACHE.get(tag)
    if prep is None:
        prep = _PREPARE_CACHE[tag] = Prepare(cfg_dict)
    item = dict(row, extras=json.loads(row.pop("extras_json")))
    done = prep(item)
    report(progress, "decode", 1)
    return done


def shard_slots(items: list[ClipItem], sps: int, total: int) -> dict[int, list[int]]:
    """Every input position of each shard that `items` touch."""
    shards = sorted({shard_of(it.index, sps) for it in items})
    return {s: list(range(s * sps, min(total, (s + 1) * sps))) for s in shards}


def write_rows(out: Path, rows, items: list[ClipItem], cfg: Config,
               on_row: Optional[Callable[[dict[str, Any]], None]] = None,
               keep: Optional[dict[int, dict[str, Any]]] = None,
               total: Optional[int] = None,
               on_shard: Optional[Callable[[dict[str, Any]], None]] = None,
               tars: Optional[str] = None) -> tuple[int, dict[str, int]]:
    """Write the rows (any order) into their shards; returns (shards written, failure reasons).

    `items` are the clips of this run. `keep` (--retry-failed) maps a finished shard to its
    marker: its positions that are not in `items` keep their stored rows and bytes. `total` is
    the length of the whole input list (default: the last item's position + 1). `on_shard(marker)`
    runs after each shard is published (an output in a bucket uploads it there); `tars`: where
    the kept shards' tars are read (a bucket's shards/ URL; default `out/shards`).
    """
    import json

    import numpy as np

    from tsa.shards.encode import encode_sample
    from tsa.shards.layout import member_specs
    from tsa.shards.writer import ShardAssembler

    sps = cfg.preprocess.samples_per_shard
    total = total if total is not None else (max(it.index for it in items) + 1 if items else 0)
    slots = shard_slots(items, sps, total)
    arrays_wanted = [n[:-len(".npy")] for n in member_specs(cfg) if n != "teacher_scale.npy"]
    assembler = ShardAssembler(out, slots, tars)
    written = 0
    reasons: dict[str, int] = {}
    try:
        redo = {it.index for it in items}
        for shard, marker in (keep or {}).items():
            assembler.keep(shard, marker, redo)  # a kept shard always has rows to redo: never completes here
        for row in rows:
            index = int(row["index"])
            manifest = json.loads(row["row_json"])
            members = None
            if bool(row["ok"]):
                try:
                    arrays = {n: np.asarray(row[n]) for n in arrays_wanted}
                    members = encode_sample(arrays, bytes(row["preview"]), json.loads(row["meta_json"]), cfg)
                except (ValueError, KeyError) as e:
                    manifest.update(status="failed", error=f"encoding: {e}")
            marker = assembler.add(index, manifest, members)
            if marker is not None:
                written += 1
                if on_shard is not None:
                    on_shard(marker)
            if manifest["status"] == "failed":
                reason = _reason(manifest["error"])
                reasons[reason] = reasons.get(reason, 0) + 1
            if on_row is not None:
                on_row(manifest)
    except BaseException:
        assembler.abort()
        raise
    missing = assembler.pending()
    if missing:
        assembler.abort()
        raise PreprocessError(f"the pipeline ended with {sum(missing.values())} row(s) missing in shard(s) "
                              f"{sorted(missing)[:10]}")
    return written, reasons


_END = object()


def iter_with_watchdog(rows, stall_s: float, describe: Callable[[float], str],
                       poll: Optional[Callable[[], None]] = None, poll_s: float = 15.0,
                       tick: Optional[Callable[[], None]] = None, tick_s: float = 0.5):
    """Yield from `rows` (iterated in a helper thread); raise RunStalled(describe(stall_s)) when
    no row arrives for `stall_s` seconds. `poll()` runs every `poll_s` seconds and `tick()`
    (the progress probe) every `tick_s` seconds, whether rows come or not."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=2)

    def pump() -> None:
        try:
            for row in rows:
                q.put(row)
            q.put(_END)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    threading.Thread(target=pump, name="tsa-rows", daemon=True).start()
    last = time.monotonic()
    timers = [[fn, every, last + every] for fn, every in ((poll, poll_s), (tick, tick_s)) if fn is not None]
    while True:
        now = time.monotonic()
        for timer in timers:
            if now >= timer[2]:
                timer[0]()
                timer[2] = time.monotonic() + timer[1]
        left = stall_s - (time.monotonic() - last)
        if left <= 0:
            raise RunStalled(describe(stall_s))
        wait = min([left] + [t[2] - time.monotonic() for t in timers])
        try:
            item = q.get(timeout=max(wait, 0.001))
        except queue.Empty:
            continue
        last = time.monotonic()
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


class NodeWatch:
    """Reports nodes that leave the cluster during the run (`notice(line)`), once each."""

    def __init__(self, ray_module, notice: Optional[Callable[[str], None]]):
        self.ray, self.notice = ray_module, notice
        self.alive = self._alive()

    def _alive(self) -> dict[str, str]:
        try:
            return {n["NodeID"]: f"{n.get('NodeManagerAddress', '?')} (id {n['NodeID'][:8]})"
                    for n in self.ray.nodes() if n.get("Alive")}
        except Exception:  # a cluster that does not answer shows up in the stall message
            return {}

    def __call__(self) -> None:
        now = self._alive()
        if not now:
            return
        for node, addr in self.alive.items():
            if node not in now and self.notice is not None:
                self.notice(f"node {addr} left the Ray cluster; the run goes on with {len(now)} node(s) (Ray "
                            f"restarts its actors elsewhere; if no clip finishes for preprocess.stall_timeout_s "
                            f"the run stops, and the same command resumes)")
        self.alive = now


def describe_stall(ray_module, cfg: Config, remaining: int, total: int, stall_s: float) -> str:
    """What the run is waiting for: alive/dead nodes, free vs total resources, per-stage needs."""
    p = cfg.preprocess
    try:
        nodes = ray_module.nodes()
        alive = [n for n in nodes if n.get("Alive")]
        free = ray_module.available_resources()
        tot = ray_module.cluster_resources()
    except Exception as e:  # the cluster itself is gone
        return (f"no clip finished for {stall_s:g} s with {remaining} of {total} clips left, and the Ray "
                f"cluster does not answer ({type(e).__name__}: {e})")
    lines = [f"no clip finished for {stall_s:g} s (preprocess.stall_timeout_s) with {remaining} of {total} clips "
             f"left; the run stops (rerun the same command to resume)",
             f"cluster now: {len(alive)} alive node(s), {len(nodes) - len(alive)} dead; CPU {free.get('CPU', 0):g} "
             f"free of {tot.get('CPU', 0):g}, GPU {free.get('GPU', 0):g} free of {tot.get('GPU', 0):g}"]
    waiting = []
    if free.get("CPU", 0) < p.decode.num_cpus:
        waiting.append(f"decode tasks need {p.decode.num_cpus:g} CPU each and {free.get('CPU', 0):g} are free "
                       f"(the actor pools may hold every CPU left, e.g. after a node was lost)")
    for s, r in pool_resources(cfg).items():
        if free.get("GPU", 0) < r.num_gpus or free.get("CPU", 0) < r.num_cpus:
            waiting.append(f"a {s} actor that is (re)starting needs {r.num_gpus:g} GPU + {r.num_cpus:g} CPU")
    if waiting:
        lines.append("waiting for resources: " + "; ".join(waiting))
    else:
        lines.append("every stage has resources: a clip or a model call is taking longer than the timeout "
                     "(raise preprocess.stall_timeout_s for a first model download)")
    return "\n".join(lines)


def _running_executors() -> set:
    """Ray Data's streaming executors running in this process (each is a thread)."""
    import threading

    try:
        from ray.data._internal.execution.streaming_executor import StreamingExecutor
    except ImportError:
        return set()
    return {t for t in threading.enumerate() if isinstance(t, StreamingExecutor)}


def _stop_executors(before: set) -> None:
    """Shut down the executors started since `before`: a run that stops early (stalled, Ctrl-C)
    must not leave its actors and tasks running in a Ray that outlives it (a caller's Ray, or
    until ray.shutdown). Ray Data records the executor on the Dataset only after its first row,
    so a stalled run's executor is found among the threads."""
    for ex in _running_executors() - before:
        try:
            ex.shutdown(force=True)
        except Exception:  # noqa: BLE001 (best effort on the way out)
            pass


def _first_error_line(e: BaseException) -> str:
    """The innermost error of a Ray exception's text (its last `SomethingError: ...` line)."""
    import re

    lines = [ln.strip() for ln in str(e).splitlines() if re.match(r"\s*[\w.]+(Error|Exception): ", ln)]
    return (lines[-1] if lines else f"{type(e).__name__}: {str(e).strip()[:300]}")[:500]


def _reason(error: Optional[str]) -> str:
    """Group failures for the summary: the error without paths and numbers."""
    import re

    text = re.sub(r"(/[^\s,:]+)+", "<path>", error or "unknown")
    return text[:120]


def clip_list_fingerprint(items: list[ClipItem]) -> str:
    """The ordered (key, video, caption) list: shard assignment follows the order, and a
    changed caption would leave old text embeddings in the finished shards."""
    return inputs_fingerprint([(it.key, it.video, it.caption) for it in items])


def _listing(folder: Path) -> dict[str, int]:
    from tsa.shards.storage import open_store

    return open_store(folder).list_sizes(str(folder))


def complete_shards(listing: dict[str, int], n_shards: int) -> set[int]:
    """Shards whose tar and marker are both in the listing of shards/ (one listing, no stat each)."""
    from tsa.shards.layout import shard_name

    return {s for s in range(n_shards) if f"{shard_name(s)}.json" in listing and f"{shard_name(s)}.tar" in listing}


def collect_rows(rows, on_row: Optional[Callable[[dict[str, Any]], None]] = None,
                 by_node: Optional[dict[str, int]] = None) -> tuple[list[int], dict[str, int], int]:
    """The driver's part of writing: the small rows of the route stage (pipeline/writers.py).
    Returns (shards published, failure reasons, how many shards were left unchanged);
    `by_node` counts the shards each node's writers published."""
    import json

    written: list[int] = []
    unchanged = 0
    reasons: dict[str, int] = {}
    for row in rows:
        manifest = json.loads(row["row_json"])
        events = json.loads(row["events"])
        written += [int(m["shard"]) for m in events["published"]]
        unchanged += len(events["unchanged"])
        if by_node is not None:
            for m in events["published"]:
                by_node[m.get("node", "?")] = by_node.get(m.get("node", "?"), 0) + 1
        if manifest["status"] == "failed":
            reason = _reason(manifest["error"])
            reasons[reason] = reasons.get(reason, 0) + 1
        if on_row is not None:
            on_row(manifest)
    return written, reasons, unchanged


def _abort_writers(ray_module, writers: list) -> None:
    """Drop the writers' unfinished shards (their .tmp files) before the actors go."""
    try:
        ray_module.get([w.abort.remote() for w in writers], timeout=60)
    except Exception:  # noqa: BLE001 (best effort: the next run removes .tmp files anyway)
        pass


def _retry_rows(shards_dir: str, items: list[ClipItem], done: set[int], sps: int
                ) -> tuple[list[ClipItem], list[int]]:
    """--retry-failed: the failed items of finished shards, and those shards (to be rebuilt).
    The markers are read from `shards_dir` (the output's shards/ folder or URL) a chunk at a time (a
    bucket's concurrently) and dropped: the writers read their kept shards' markers themselves."""
    from tsa.shards.reader import read_markers
    from tsa.shards.storage import open_store

    by_index = {it.index: it for it in items}
    redo: list[ClipItem] = []
    keep: list[int] = []
    store = open_store(shards_dir)
    try:
        for s, marker in read_markers(store, shards_dir, sorted(done)):
            failed = [s * sps + i for i, r in enumerate(marker["rows"]) if r["status"] == "failed"]
            if failed:
                keep.append(s)
                redo += [by_index[i] for i in failed]
    finally:
        store.close()
    return redo, keep


def run_preprocess(src: str | Path, out: str | Path, cfg: Config, *, subset: Optional[str | Path] = None,
                   limit: Optional[int] = None, ray_address: Optional[str] = None, overwrite: bool = False,
                   retry_failed: bool = False, staging: Optional[str | Path] = None,
                   on_start: Optional[Callable[[int, int], None]] = None,
                   on_row: Optional[Callable[[dict[str, Any]], None]] = None,
                   on_plan: Optional[Callable[[list[str]], None]] = None,
                   on_notice: Optional[Callable[[str], None]] = None,
                   on_progress: Optional[Callable[[dict[str, int]], None]] = None, **inputs: Any) -> RunResult:
    """Preprocess the clips in `src` into `out`. `cfg` is used with its model refs as written
    (e.g. `tiny`); they are resolved for hashing here and inside each actor. `inputs`: the other
    input options of `pipeline.inputs.select_inputs` (csvs, videos, where, sample, seed).

    `on_start(todo_clips, total_clips)`, `on_row(manifest_row)`, `on_plan(lines)`,
    `on_notice(line)` (a node left the cluster) and `on_progress(counts)` (clips finished per
    stage, pipeline/progress.py; about twice a second; without it no counter actor is started)
    drive the display. `retry_failed` also re-processes the failed rows of finished shards, in place.

    `out` may be a URL (`s3://bucket/prefix`, `gs://...`): the run works in a local staging folder
    (`staging`, default under $TMPDIR) and commits each shard to the bucket by uploading its tar,
    then its marker (shards/remote_out.py).
    """
    from tsa.shards.remote_out import RemoteOutput, RemoteOutputError
    from tsa.shards.storage import StorageError, is_url

    if retry_failed and overwrite:
        raise PreprocessError("--retry-failed and --overwrite exclude each other")
    remote: Optional[RemoteOutput] = None
    if is_url(str(out)):
        try:
            remote = RemoteOutput(str(out), staging)
        except RemoteOutputError as e:
            raise PreprocessError(str(e)) from None
    selection = select_inputs(src, subset=subset, limit=limit, **inputs)
    try:
        return _run(selection, remote, Path(out) if remote is None else remote.staging, cfg,
                    ray_address=ray_address, overwrite=overwrite, retry_failed=retry_failed, on_start=on_start,
                    on_row=on_row, on_plan=on_plan, on_notice=on_notice, on_progress=on_progress)
    except (RemoteOutputError, StorageError) as e:  # a bucket request that failed mid-run: committed shards
        raise PreprocessError(str(e)) from None      # are kept, the same command resumes
    finally:
        if remote is not None:
            remote.cleanup()


def _run(selection, remote, out: Path, cfg: Config, *, ray_address, overwrite, retry_failed, on_start, on_row,
         on_plan, on_notice, on_progress=None) -> RunResult:
    """run_preprocess after the inputs are selected; `out` is the local folder (the staging
    folder of `remote`, an output in a bucket)."""
    import copy

    import ray

    from tsa.models.tiny import resolve_tiny
    from tsa.shards.finalize import finalize
    from tsa.models.refs import model_records, vae_normalization
    from tsa.pipeline.plan import check_storage, cluster_totals, make_plan, readable_sample
    from tsa.pipeline.progress import ProgressProbe, start_counter
    from tsa.pipeline.writers import add_route_stage, plan_line, slots_for, start_writers, writer_count
    from tsa.shards.remote_out import RemoteOutputError

    if remote is not None:
        try:
            remote.check()  # before anything is written: missing bucket, bad credentials
            remote.pull()
        except RemoteOutputError as e:
            raise PreprocessError(str(e)) from None
        if not overwrite and remote.has_stray_files():
            raise PreprocessError(f"{remote.url}/{SHARDS_DIR} has files but no {DATASET_JSON}; use --overwrite or "
                                  f"another --out")
    shown = remote.url if remote is not None else out
    items = selection.items
    resolved = resolve_tiny(copy.deepcopy(cfg))
    models = model_records(cfg, resolved)
    scaling_factor, latent_norm = vae_normalization(resolved)
    info = build_dataset_info(cfg, models=models, num_clips=len(items),
                              inputs_fp=clip_list_fingerprint(items),
                              scaling_factor=scaling_factor, source=selection.source, latent_norm=latent_norm)
    check_output(out, info, overwrite, shown)
    if retry_failed and read_dataset_info(out) is None:
        raise PreprocessError(f"--retry-failed: {shown} holds no tsa preprocess output yet")
    sps = cfg.preprocess.samples_per_shard
    n_shards = info["num_shards"]
    shards_dir = remote.where(SHARDS_DIR) if remote is not None else str(out / SHARDS_DIR)
    done = set() if overwrite else complete_shards(remote.listing if remote is not None else
                                                   _listing(out / SHARDS_DIR), n_shards)
    todo = [it for it in items if shard_of(it.index, sps) not in done]
    keep: list[int] = []
    published: list[int] = []
    retried = 0
    if retry_failed:
        redo, keep = _retry_rows(shards_dir, items, done, sps)
        retried = len(redo)
        todo = sorted(todo + redo, key=lambda it: it.index)
    result = RunResult(out=shown, total=len(items), counts={}, processed=len(todo), shards_written=0,
                       shards_done_before=len(done) - len(keep), retried=retried,
                       max_failed_fraction=cfg.preprocess.max_failed_fraction)
    if not todo:
        if on_start is not None:
            on_start(0, len(items))
        result.removed_partial = prepare_output(out, info, overwrite)
        selection.write_subset(out)
        if remote is not None:
            result.removed_partial += _prepare_remote(remote, overwrite)
    else:
        started, result.ray_start_s = start_ray(ray_address)
        counter, writers = None, []
        try:
            _check_gpus(cfg, ray)
            plan = make_plan(cfg, *cluster_totals(ray), num_clips=len(todo))
            if on_plan is not None:
                on_plan(plan.lines(cfg))
            problems = check_storage(ray, selection.source,
                                     readable_sample([it.path for it in todo if it.status == "ok"]),
                                     "" if remote is not None else str(out.resolve()))
            if problems:
                raise PreprocessError("storage that every node must see is missing on some node(s):\n  "
                                      + "\n  ".join(problems))
            result.removed_partial = prepare_output(out, info, overwrite)
            selection.write_subset(out)
            if remote is not None:
                result.removed_partial += _prepare_remote(remote, overwrite)
            if on_start is not None:
                on_start(len(todo), len(items))
            t0 = time.perf_counter()
            before = _running_executors()
            # the counter actor only where someone watches (the CLI's bar): one process fewer a run
            counter = start_counter(ray) if on_progress is not None else None
            probe = ProgressProbe(ray, counter, on_progress)
            slots = slots_for([it.index for it in todo], sps, len(items))
            writers = start_writers(ray, writer_count(plan.nodes, len(slots)), str(out.resolve()), slots, keep,
                                    [it.index for it in todo], shards_dir if remote is not None else None,
                                    remote.url if remote is not None else None,
                                    remote.staging_parent if remote is not None else None)
            if on_plan is not None:
                on_plan([plan_line(len(writers))])
            ds = add_route_stage(build_dataset(todo, cfg, plan.actors, progress=counter,
                                               clips_per_block=plan.clips_per_block), cfg, writers)
            state = {"rows": 0}
            rows = iter_with_watchdog(
                ds.iter_rows(), cfg.preprocess.stall_timeout_s,
                lambda s: describe_stall(ray, cfg, len(todo) - state["rows"], len(todo), s),
                poll=NodeWatch(ray, on_notice), tick=probe)

            def counted(row: dict[str, Any]) -> None:
                state["rows"] += 1
                if on_row is not None:
                    on_row(row)

            try:
                published, result.reasons, result.shards_unchanged = collect_rows(rows, counted,
                                                                                  result.shards_by_node)
                result.shards_written = len(published)
                pending: dict[int, int] = {}
                for part in ray.get([w.close.remote() for w in writers]):
                    pending.update(part)
                if pending:
                    raise PreprocessError(f"the pipeline ended with {sum(pending.values())} row(s) missing in "
                                          f"shard(s) {sorted(pending)[:10]}")
            except ray.exceptions.RayError as e:  # e.g. an actor whose model cannot load: not one clip's fault
                _stop_executors(before)
                _abort_writers(ray, writers)
                died = any(n in f"{type(e).__name__} {e}" for n in ("ActorDiedError", "RayActorError",
                                                                     "ActorUnavailableError"))
                why = " (an actor died: a shard writer's or model stage's node may have left the cluster; " \
                      "its unfinished shards are redone)" if died else ""
                raise PreprocessError(f"the Ray pipeline failed{why} (finished shards are kept; the same command "
                                      f"resumes): {_first_error_line(e)}") from None
            except BaseException:  # stalled, interrupted: stop this run's Ray Data execution too
                _stop_executors(before)
                _abort_writers(ray, writers)
                raise
            probe.final()
            result.process_s = time.perf_counter() - t0
        finally:
            if not started:  # a caller's Ray outlives this run: its actors go now
                for actor in ([counter] if counter is not None else []) + writers:
                    ray.kill(actor)
            if started:
                ray.shutdown()
    report: dict[str, Any] = {}
    result.counts = finalize(out, n_shards, tuple(cfg.geometry.teacher_grid),
                             tars=None if remote is None else shards_dir,
                             root=None if remote is None else remote.url, report=report, published=published)
    result.finalize_rebuilt = report.get("rebuilt", 0)
    if remote is not None:
        # whole files, after every shard; masks.h5 before the manifest, whose recorded state is
        # what the next run compares (shards/finalize.py)
        for name in (SUBSET_FILE, MASKS, MANIFEST):
            if (out / name).exists():
                remote.put_file(name)
    return result


def _prepare_remote(remote, overwrite: bool) -> int:
    """The bucket side of prepare_output: --overwrite clears the prefix, tars without a marker are
    deleted, dataset.json goes up before any shard. Returns how many partial files were removed."""
    if overwrite:
        remote.clear()
    removed = remote.remove_partial()
    remote.put_file(DATASET_JSON)
    return removed
