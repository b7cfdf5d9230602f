"""The `tsa preprocess` command: options, plan, progress bar, summary, exit codes.

Exit 0 when the run finishes, broken clips included (they are `failed` manifest rows);
exit 1 when every clip or more than `preprocess.max_failed_fraction` of the clips in the output
failed (after the reasons table), or when the run stalled (no clip finished for
`preprocess.stall_timeout_s`); exit 2 for errors found before any clip is processed: bad
config, `--src` missing, `--out` holding another config's output, a Ray cluster that cannot be
reached or refuses us, storage a node cannot see.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tsa.pipeline.run import RunResult


class RateColumn(ProgressColumn):
    """Clips per second over the whole run so far (steady enough for a long run). The bar's
    position counts clips through the stages (pipeline/progress.py), so at a steady state this
    is the rate clips are written at."""

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 and task.completed else None
        return Text(f"{rate:.2f} clips/s" if rate else "-- clips/s", style="progress.data.speed")


def _quiet_ray_logs() -> None:
    """Ray Data's console lines (execution started/finished, progress-bar notices) would break
    the rich bar; they still go to Ray's session log files."""
    import ray.data  # noqa: F401  (configures the `ray.data` logger and its console handler)

    for handler in logging.getLogger("ray.data").handlers:
        if not hasattr(handler, "baseFilename"):
            handler.setLevel(logging.ERROR)


# Native log lines of Ray's driver that say nothing about this run (the map stages' constructor
# arguments live in the object store by Ray Data's design; actors restart fine while it runs).
NATIVE_NOISE = (re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the "
                           rb"object store and max_restarts > 0"),)


# Native lines that repeat every second while ray.init retries (a cluster refusing our token):
# the first one says why, the rest are dropped.
NATIVE_ONCE = (re.compile(rb"gcs_client\.cc:\d+: Failed to get cluster ID from GCS server"),)


def filter_native_stderr(patterns=NATIVE_NOISE, once=NATIVE_ONCE) -> int:
    """Route fd 2 (where Ray's C++ core worker logs) through a thread that drops lines matching
    `patterns` and repeats of lines matching `once`; returns a new fd on the original stderr
    for our own console."""
    original = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def pump() -> None:
        buf, seen = b"", set()
        with os.fdopen(r, "rb", buffering=0) as f:
            while chunk := f.read(65536):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if any(p.search(line) for p in patterns):
                        continue
                    hit = [p for p in once if p.search(line)]
                    if hit and hit[0] in seen:
                        continue
                    seen.update(hit)
                    os.write(original, line + b"\n")
        if buf:
            os.write(original, buf)

    threading.Thread(target=pump, name="tsa-stderr", daemon=True).start()
    return os.dup(original)


def _console() -> Console:
    """Our console on the real stderr; Ray's native noise filtered when stderr is fd 2 (not under
    a test runner that captures sys.stderr)."""
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        return Console(stderr=True)
    sys.stderr.flush()
    return Console(file=os.fdopen(filter_native_stderr(), "w", buffering=1))


def print_summary(console: Console, r: RunResult) -> None:
    c = r.counts
    console.print(f"[bold]{r.out}[/]: {c.get('ok', 0)} ok, {c.get('failed', 0)} failed, {c.get('skipped', 0)} "
                  f"skipped of {r.total} clips; {r.shards_written} shard(s) written now, "
                  f"{r.shards_done_before} were already done")
    if r.processed:
        console.print(f"this run: {r.processed} clips in {r.process_s:.1f} s ({r.clips_per_s:.2f} clips/s), "
                      f"Ray start {r.ray_start_s:.1f} s")
    if r.removed_partial:
        console.print(f"removed {r.removed_partial} partial file(s) left by an interrupted run")
    if r.reasons:
        table = Table("failed (this run)", "reason", show_edge=False)
        for reason, n in sorted(r.reasons.items(), key=lambda kv: -kv[1]):
            table.add_row(str(n), reason)
        console.print(table)
    failed = c.get("failed", 0)
    if r.retried:
        same = (f"; {r.shards_unchanged} shard(s) came out as before (their clips failed again the same way) and "
                f"were left as they were") if r.shards_unchanged else ""
        console.print(f"retried {r.retried} failed clip(s) of finished shards{same}")
    if len(r.shards_by_node) > 1:
        console.print(f"shards written by the writers of {len(r.shards_by_node)} nodes: "
                      + ", ".join(f"{n[:8]} {k}" for n, k in sorted(r.shards_by_node.items())))
    if r.too_many_failed:
        tried = c.get("ok", 0) + failed
        why = "every clip" if failed == tried else f"{100 * r.failed_fraction:.0f}%, more than"
        console.print(f"[red]error:[/] {failed} of {tried} clips failed ({why} preprocess.max_failed_fraction="
                      f"{r.max_failed_fraction:g}); fix the inputs, then rerun with --retry-failed", soft_wrap=True,
                      highlight=False)
    elif failed:
        console.print(f"{failed} failed clip(s): rerun with --retry-failed to process them again")


def preprocess(
    src: Optional[str] = typer.Option(None, "--src", help="OpenVid root (data/train/*.csv + video/, as its download "
                                                           "script writes it), a folder with CSV files + videos/, "
                                                           "or a folder of clips with same-named .txt captions; "
                                                           "or a bucket prefix with CSV files (s3://..., gs://...)."),
    out: str = typer.Option(..., "--out", help="Output folder (dataset.json, manifest.parquet, masks.h5, shards/), or "
                                               "a bucket prefix: s3://bucket/prefix, gs://... (docs/storage.md)."),
    staging: Optional[Path] = typer.Option(None, "--staging", help="With a bucket --out: the local folder where each "
                                                                    "shard is built before its upload (default under "
                                                                    "$TMPDIR; emptied at start, removed at the end)."),
    config: str = typer.Option("cogvideox2b_mtsa", "--config", "-c",
                               help="Config YAML or bundled name (cogvideox2b_mtsa, tiny)."),
    subset: Optional[Path] = typer.Option(None, "--subset", help="Keep only these `video` names (one per line, or a CSV "
                                                                  "with a video column)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Process only the first N clips (after --subset, "
                                                              "--where, --sample)."),
    csv: Optional[list[Path]] = typer.Option(None, "--csv", help="CSV file with video and caption columns "
                                                                 "(repeatable); instead of the CSVs found in --src."),
    videos: Optional[Path] = typer.Option(None, "--videos", help="Folder of the clips named by the CSV `video` column."),
    where: Optional[list[str]] = typer.Option(None, "--where", help='Keep CSV rows meeting COLUMN OP VALUE, e.g. '
                                                                    '"motion score >= 2" (repeatable, ANDed; '
                                                                    'OP: >= <= > < == !=).'),
    sample: Optional[int] = typer.Option(None, "--sample", help="Draw N clips at random (deterministic, see --seed) "
                                                                "after --subset/--where; writes OUT/subset.txt."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of --sample (default 0)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="Ray to run on: `local` (a new Ray started by this command), "
                                                   "`auto` (the `ray start` cluster of this machine) or HOST:PORT. "
                                                   "Default: $RAY_ADDRESS when set (as under `ray job submit`), else "
                                                   "local; never a `ray start` cluster unless asked."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete a previous output in --out and start over."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Process the failed clips of an existing output "
                                                                    "again, in place (and any unfinished shard)."),
    samples_per_shard: Optional[int] = typer.Option(None, "--samples-per-shard",
                                                    help="Clips per shard (config preprocess.samples_per_shard)."),
    latents: Optional[str] = typer.Option(None, "--latents", help="sample (one posterior sample x scaling factor) or "
                                                                  "moments (mean and logvar)."),
    teacher_dtype: Optional[str] = typer.Option(None, "--teacher-dtype", help="float16 or int8 (per-token scale)."),
    override: Optional[list[str]] = typer.Option(None, "--override", "-o", help="Config override key=value "
                                                                                "(repeatable)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Decode clips once and cache VAE latents, T5 embeddings, teacher features and motion maps as shards."""
    from tsa.configs import ConfigError, load_config
    from tsa.shards.dataset_info import OutputMismatch
    from tsa.pipeline.run import PreprocessError, RunStalled, run_preprocess
    from tsa.pipeline.sources import SourceError

    console = _console()
    overrides = list(override or [])
    for key, value in (("samples_per_shard", samples_per_shard), ("latents", latents),
                       ("teacher_dtype", teacher_dtype)):
        if value is not None:
            overrides.append(f"preprocess.{key}={value}")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        console.print(f"[red]config error:[/] {e}", soft_wrap=True)
        raise typer.Exit(2)
    if src is None and not csv:
        console.print("[red]error:[/] give --src FOLDER, or --csv FILE with --videos DIR", soft_wrap=True)
        raise typer.Exit(2)
    if src is not None and "://" not in src and not Path(src).is_dir():
        console.print(f"[red]error:[/] --src {src}: not a folder", soft_wrap=True)
        raise typer.Exit(2)
    _quiet_ray_logs()

    bar = Progress(TextColumn("[bold]preprocess"), BarColumn(),
                   TextColumn("{task.fields[written]}/{task.total:.0f} written"), RateColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                   console=console, disable=not progress, transient=False)
    state: dict[str, Any] = {"task": None, "todo": 0, "ok": 0, "failed": 0, "skipped": 0, "stages": {}}

    def redraw() -> None:
        from tsa.pipeline.progress import STAGES, position

        written = state["ok"] + state["failed"] + state["skipped"]
        stages = " ".join(f"{s} {state['stages'].get(s, 0)}" for s in STAGES)
        bar.update(state["task"], completed=position(state["stages"], written, state["todo"]), written=written,
                   status=f"{stages} | ok {state['ok']} failed {state['failed']} skipped {state['skipped']}")

    def on_start(todo: int, total: int) -> None:
        if retry_failed:
            console.print(f"--retry-failed: {todo} clip(s) to process (the failed ones of finished shards, and "
                          f"those of unfinished shards)")
        elif todo < total:
            console.print(f"resuming: {total - todo} of {total} clips are in finished shards")
        state["todo"] = todo
        state["task"] = bar.add_task("clips", total=todo, status="", written=0)

    def on_row(row: dict[str, Any]) -> None:
        state[row["status"]] = state.get(row["status"], 0) + 1
        redraw()

    def on_progress(counts: dict[str, int]) -> None:
        state["stages"] = counts
        if state["task"] is not None:
            redraw()

    def on_plan(lines: list[str]) -> None:
        for line in lines:
            console.print(line, soft_wrap=True, highlight=False)

    try:
        with bar:
            result = run_preprocess(src, out, cfg, subset=subset, limit=limit, ray_address=ray_address,
                                    overwrite=overwrite, retry_failed=retry_failed, staging=staging,
                                    on_start=on_start,
                                    on_row=on_row, on_plan=on_plan, on_progress=on_progress if progress else None,
                                    on_notice=lambda line: console.print(f"[yellow]warning:[/] {line}",
                                                                         soft_wrap=True, highlight=False),
                                    csvs=csv, videos=videos, where=where, sample=sample, seed=seed)
    except (OutputMismatch, PreprocessError, SourceError, ConfigError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}", soft_wrap=True, highlight=False)
        raise typer.Exit(2)
    except RunStalled as e:
        console.print(f"[red]stalled:[/] {e}", soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    print_summary(console, result)
    if result.too_many_failed:
        raise typer.Exit(1)
