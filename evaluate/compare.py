"""`tsa score DIR_A DIR_B ...`: scored runs side by side, each with its paired difference to the
first run (the same prompt draws for every run, so the interval of B - A is the bootstrap of the
difference on the same prompts and seeds). Runs made from different prompt sets, prompt texts,
videos per prompt or seeds cannot be paired and are refused.

    comparison.md   the Markdown table (also printed)
    comparison.csv  metric, run, value, ci_low, ci_high, diff, diff_ci_low, diff_ci_high, prompts_for_1pt
    comparison.png  bars with their 95 % intervals (evaluate/chart.py)
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Optional

from tsa.evaluate import bootstrap
from tsa.evaluate.score import ScoredRun, load_scored, metric_columns, run_estimates
from tsa.evaluate.score_files import ScoreFileError
from tsa.evaluate.vbench_final import TABLE_A, TABLE_B

CSV_COLUMNS = ["metric", "run", "value", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high",
               "prompts_for_1pt"]


def check_pairable(runs: list[ScoredRun]) -> None:
    a = runs[0]
    for b in runs[1:]:
        if (b.benchmark, b.evaluator) != (a.benchmark, a.evaluator):
            raise ScoreFileError(f"{b.label} is {b.benchmark or 'custom'} ({b.evaluator}), {a.label} is "
                                 f"{a.benchmark or 'custom'} ({a.evaluator}): not comparable")
        seeds_a, seeds_b = sorted({v.seed for v in a.videos}), sorted({v.seed for v in b.videos})
        if seeds_a != seeds_b:
            raise ScoreFileError(f"{b.label} was sampled with --seed {_list(seeds_b)}, {a.label} with "
                                 f"{_list(seeds_a)}: a paired difference needs the same seeds")
        prompts_a, prompts_b = ({(v.index, v.prompt_sha1) for v in r.videos} for r in (a, b))
        if prompts_a != prompts_b:
            only_a, only_b = sorted(prompts_a - prompts_b), sorted(prompts_b - prompts_a)
            first = f"prompt {(only_a or only_b)[0][0]}"
            raise ScoreFileError(f"{a.label} and {b.label} were made from different prompts ({len(only_a)} only in "
                                 f"the first, {len(only_b)} only in the second; first: {first}); a paired "
                                 f"difference needs the same prompt set")
        videos_a, videos_b = ({(v.index, v.seed, v.video_index) for v in r.videos} for r in (a, b))
        if a.evaluator != "vbench" and videos_a != videos_b:
            raise ScoreFileError(f"{a.label} and {b.label} hold different videos of the same prompts "
                                 f"(videos per prompt differ?): {len(videos_a ^ videos_b)} unpaired")


def _list(xs) -> str:
    return ",".join(map(str, xs))


def _order(runs: list[ScoredRun], keys: set[str]) -> list[str]:
    if runs[0].evaluator == "vbench":
        return [k for k in TABLE_A + TABLE_B if k in keys]
    cols = metric_columns(runs[0])
    return [c for c in cols if c in keys]


def comparison_rows(runs: list[ScoredRun], replicates: int = bootstrap.REPLICATES) -> tuple[list[dict], int]:
    """One row per metric: each run's value and interval, and for the others the paired
    difference to the first, its interval and the prompts a +-1-point interval would need."""
    check_pairable(runs)
    values, units = run_estimates(runs, replicates)
    keys = set.intersection(*(set(v) for v in values))
    rows = []
    for key in _order(runs, keys):
        first = values[0][key]
        entries = []
        for i, v in enumerate(values):
            lo, hi = bootstrap.interval(v[key][1:])
            entry = {"label": runs[i].label, "value": float(v[key][0]), "ci95": [lo, hi]}
            if i:
                diff = v[key] - first
                dlo, dhi = bootstrap.interval(diff[1:])
                entry.update(diff=float(diff[0]), diff_ci95=[dlo, dhi],
                             prompts_for_1pt=bootstrap.prompts_for_half_width(dlo, dhi, units))
            entries.append(entry)
        rows.append({"metric": key, "runs": entries})
    return rows, units


def comparison_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        for run in r["runs"]:
            w.writerow([r["metric"], run["label"], _num(run["value"]), _num(run["ci95"][0]), _num(run["ci95"][1]),
                        _num(run.get("diff")), *(_num(x) for x in run.get("diff_ci95", [None, None])),
                        _ceil(run.get("prompts_for_1pt"))])
    return buf.getvalue()


def _num(x: Optional[float], digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _ceil(x: Optional[float]) -> str:
    return "" if x is None or not math.isfinite(x) else str(math.ceil(x))


def load_runs(dirs: list[Path]) -> list[ScoredRun]:
    runs = [load_scored(d) for d in dirs]
    labels = _labels([Path(d) for d in dirs])
    for run, name in zip(runs, labels):
        run.label = name
    return runs


def _labels(dirs: list[Path]) -> list[str]:
    """The shortest distinct names: folder names, else longer path tails."""
    for depth in range(1, 8):
        names = ["/".join(d.resolve().parts[-depth:]) for d in dirs]
        if len(set(names)) == len(names):
            return names
    return [str(d) for d in dirs]


def write_comparison(out: Path, markdown: str, csv_text: str, png: bytes) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in (("comparison.md", markdown.encode()), ("comparison.csv", csv_text.encode()),
                       ("comparison.png", png)):
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)
        written.append(out / name)
    return written
