"""`tsa score DIR`: join the official evaluators' output files to the videos of a `tsa sample`
folder and compute the paper's numbers with 95 % bootstrap intervals over prompts.

    VideoPhy  (VideoCon-Physics, --sa and --pc): SA, PC = % of videos with score >= 0.5, overall
              and per states_of_matter (solid_solid, solid_fluid, fluid_fluid)
    VideoPhy2 (VideoPhy-2-AutoEval, --sa and --pc): SA, PC = % with score >= 4; Joint = % with
              SA >= 4 and PC >= 4 on the same video
    VBench    (--vbench results JSON): each dimension x 100, and Quality, Semantic, Total as
              VBench's final-score script computes them (evaluate/vbench_final.py)

Every video of the folder must have exactly one score in each file, joined by the file name of
`videopath` (the folder may have moved since the evaluator ran; a videopath that exists on this
machine outside DIR is refused). Nothing is written unless everything checks out.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from tsa.evaluate import bootstrap
from tsa.evaluate.benchmarks import AUTOEVAL, BENCHMARKS, VBENCH, VIDEOCON
from tsa.evaluate.samples_log import finished_samples
from tsa.evaluate.score_files import (ScoreFileError, ScoreRow, read_autoeval, read_vbench, read_videocon, sniff,
                                      vbench_parts)
from tsa.evaluate.vbench_final import DIMENSIONS, VBENCH_VERSION, final_scores

SCORES_FILE = "scores.json"
THRESHOLDS = {b.evaluator: b.threshold for b in BENCHMARKS.values() if b.threshold is not None}
CATEGORY_ORDER = ("solid_solid", "solid_fluid", "fluid_fluid")  # VideoPhy's Table 1 order
# VBench drops these videos itself (color: no object of the prompt detected; temporal
# flickering: a video its frame check rejects), so a missing video is not an error there.
VBENCH_MAY_DROP = ("color", "temporal_flickering")


@dataclass
class ScoredVideo:
    file: str  # relative to the sample folder
    index: int  # prompt index: the bootstrap unit
    seed: int
    video_index: int
    prompt_sha1: str  # of the prompt text and caption: runs are paired only on the same prompts
    category: Optional[str]
    scores: dict[str, float]  # the evaluators' raw scores (VBench: video_results per dimension)
    parts: dict[str, list[float]]  # metric -> [num, den]: the video's share of each ratio


@dataclass
class ScoredRun:
    benchmark: Optional[str]
    evaluator: str
    videos: list[ScoredVideo]
    offsets: dict[str, float] = field(default_factory=dict)  # VBench: reported - recomputed (0-1)
    label: str = ""


def prompt_sha1(prompt: str, caption: str) -> str:
    return hashlib.sha1(f"{prompt}\0{caption}".encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- joining

def _join(rows: list[ScoreRow], records: dict[str, dict], out: Path, source: Path) -> dict[str, ScoreRow]:
    """file (relative to OUT) -> its row; refuses duplicates, videos not in OUT and missing ones."""
    by_name = {Path(f).name: f for f in records}
    got: dict[str, ScoreRow] = {}
    for r in rows:
        f = by_name.get(r.name)
        if f is None:
            continue
        if f in got:
            raise ScoreFileError(f"{source}: {r.name} is scored twice (lines {got[f].line} and {r.line})")
        p = Path(r.path)
        if p.is_absolute() and p.exists() and p.resolve() != (out / f).resolve():
            raise ScoreFileError(f"{source} line {r.line}: {r.path} is a video of another folder, not of {out}")
        caption = records[f].get("caption", records[f]["prompt"])
        if r.caption is not None and r.caption.strip() != caption.strip():
            raise ScoreFileError(f"{source} line {r.line}: {r.name} was judged against {r.caption!r}, but {out} "
                                 f"made it for the caption {caption!r}")
        got[f] = r
    extra = [r.name for r in rows if r.name not in by_name]
    if extra:
        raise ScoreFileError(f"{source}: {len(extra)} video(s) that are not in {out} (first: {extra[0]})")
    missing = sorted(f for f in records if f not in got)
    if missing:
        raise ScoreFileError(f"{source}: no score for {len(missing)} of the {len(records)} videos of {out} "
                             f"(first: {missing[0]})")
    return got


def _video(rec: dict, scores: dict, parts: dict) -> ScoredVideo:
    caption = rec.get("caption", rec["prompt"])
    return ScoredVideo(rec["file"], int(rec["index"]), int(rec["seed"]), int(rec["video_index"]),
                       prompt_sha1(rec["prompt"], caption), rec.get("category"), scores, parts)


def score_physics(out: Path, records: dict[str, dict], benchmark: Optional[str], sa: Path, pc: Path) -> ScoredRun:
    """VideoPhy (VideoCon-Physics) or VideoPhy2 (VideoPhy-2-AutoEval) SA and PC files."""
    if Path(sa).resolve() == Path(pc).resolve():
        raise ScoreFileError(f"--sa and --pc are the same file: {sa}")
    kinds = {name: sniff(path) for name, path in (("--sa", sa), ("--pc", pc))}
    expected = BENCHMARKS[benchmark].evaluator if benchmark is not None else kinds["--sa"]
    for (name, kind), path in zip(kinds.items(), (sa, pc)):
        if kind != expected:
            bench = f"the {benchmark} benchmark is scored by {expected}" if benchmark else f"--sa is {expected}"
            raise ScoreFileError(f"{name} {path}: {_kind_name(kind)}, but {bench}")
    if expected not in THRESHOLDS:
        raise ScoreFileError(f"--sa/--pc: {_kind_name(expected)}; give VBench results with --vbench")
    if expected == VIDEOCON:
        sa_rows, pc_rows = read_videocon(sa, "SA"), read_videocon(pc, "PC")
    else:
        sa_rows, pc_rows = read_autoeval(sa), read_autoeval(pc)
    sa_by, pc_by = _join(sa_rows, records, out, sa), _join(pc_rows, records, out, pc)
    t = THRESHOLDS[expected]
    videos = []
    for f, rec in sorted(records.items()):
        s, p = sa_by[f].score, pc_by[f].score
        parts = {"SA": [float(s >= t), 1.0], "PC": [float(p >= t), 1.0]}
        if expected == AUTOEVAL:
            parts["Joint"] = [float(s >= t and p >= t), 1.0]
        videos.append(_video(rec, {"SA": s, "PC": p}, parts))
    return ScoredRun(benchmark, expected, videos)


def _kind_name(kind: str) -> str:
    return {VIDEOCON: "VideoCon-Physics rows (scores in [0, 1])",
            AUTOEVAL: "a VideoPhy-2-AutoEval CSV (scores 1-5)", VBENCH: "VBench results"}[kind]


def score_vbench(out: Path, records: dict[str, dict], benchmark: Optional[str], paths: list[Path],
                 notes: list[str]) -> ScoredRun:
    if benchmark != "vbench":
        raise ScoreFileError(f"--vbench: {out} was not sampled with --benchmark vbench (VBench's standard mode "
                             f"finds videos by VBench's prompt names)")
    for p in paths:
        if Path(p).is_file() and sniff(p) != VBENCH:
            raise ScoreFileError(f"--vbench {p}: {_kind_name(sniff(p))}, not VBench results")
    dims = read_vbench(paths)
    by_name = {Path(f).name: f for f in records}
    serves = {f: set((rec.get("category") or "").split()) for f, rec in records.items()}
    scores: dict[str, dict] = {f: {} for f in records}
    parts: dict[str, dict] = {f: {} for f in records}
    offsets = {}
    for dim, d in sorted(dims.items()):
        seen: dict[str, int] = {}
        for i, video in enumerate(d.videos):
            name = Path(video["video_path"]).name
            f = by_name.get(name)
            if f is None or dim not in serves[f]:
                where = f"not a video of {out}" if f is None else f"its prompt does not serve {dim}"
                raise ScoreFileError(f"{d.source}: {dim} scores {name}, {where}")
            if f in seen:
                raise ScoreFileError(f"{d.source}: {dim} scores {name} twice (videos {seen[f]} and {i})")
            seen[f] = i
            parts[f][dim] = list(vbench_parts(dim, video, d.source))
            raw = video.get("video_results")
            scores[f][dim] = float(raw) if isinstance(raw, (int, float)) else None
        wanted = sorted(f for f in records if dim in serves[f])
        if not seen:
            raise ScoreFileError(f"{d.source}: {dim} has no per-video results (of the {len(wanted)} videos "
                                 f"of {out} for it)")
        missing = [f for f in wanted if f not in seen]
        if missing and dim not in VBENCH_MAY_DROP:
            raise ScoreFileError(f"{d.source}: {dim} has no result for {len(missing)} of its {len(wanted)} videos "
                                 f"(first: {Path(missing[0]).name})")
        if missing:
            notes.append(f"{dim}: VBench kept {len(seen)} of {len(wanted)} videos (it drops videos itself there)")
        num = sum(parts[f][dim][0] for f in seen)
        den = sum(parts[f][dim][1] for f in seen)
        if den <= 0:
            raise ScoreFileError(f"{d.source}: {dim}: the per-video results add up to no frames / videos")
        recomputed = num / den
        offsets[dim] = d.value - recomputed
        if abs(offsets[dim]) > 5e-4:
            notes.append(f"{dim}: VBench reports {100 * d.value:.2f}, its per-video results give "
                         f"{100 * recomputed:.2f}; the reported value is used, the interval shifted to it")
    videos = [_video(rec, scores[f], parts[f]) for f, rec in sorted(records.items()) if parts[f]]
    return ScoredRun(benchmark, VBENCH, videos, offsets)


# ----------------------------------------------------------------------------- numbers

def metric_columns(run: ScoredRun) -> list[str]:
    """The ratio columns of a run: metrics overall, then `category/metric` per category."""
    base = sorted({m for v in run.videos for m in v.parts}, key=_metric_order)
    cols = list(base)
    if run.evaluator != VBENCH:
        for c in categories(run):
            cols += [f"{c}/{m}" for m in base]
    return cols


def _metric_order(m: str):
    order = ["Joint", "SA", "PC", *DIMENSIONS]
    return (order.index(m) if m in order else len(order), m)


def categories(run: ScoredRun) -> list[str]:
    found = {v.category for v in run.videos if v.category}
    return [c for c in CATEGORY_ORDER if c in found] + sorted(found - set(CATEGORY_ORDER))


def run_estimates(runs: list[ScoredRun], replicates: int = bootstrap.REPLICATES) -> tuple[list[dict], int]:
    """Per run {metric key: [1 + B] values in % (row 0: the point estimate)} with the same prompt
    draws for every run (paired), and the number of prompts."""
    units = sorted({v.index for run in runs for v in run.videos})
    unit_pos = {u: i for i, u in enumerate(units)}
    weights = bootstrap.replicate_weights(len(units), replicates)
    out = []
    for run in runs:
        cols = metric_columns(run)
        parts = np.zeros((len(run.videos), len(cols), 2))
        for i, v in enumerate(run.videos):
            for j, col in enumerate(cols):
                cat, _, metric = col.rpartition("/")
                if metric in v.parts and (not cat or v.category == cat):
                    parts[i, j] = v.parts[metric]
        sums = bootstrap.unit_sums(np.array([unit_pos[v.index] for v in run.videos], int), parts, len(units))
        est = bootstrap.estimates(weights, sums)
        values = {col: est[:, j] for j, col in enumerate(cols)}
        if run.evaluator == VBENCH:
            values = {d: values[d] + run.offsets.get(d, 0.0) for d in values}
            values.update(final_scores(values))
        out.append({k: 100.0 * v for k, v in values.items()})
    return out, len(units)


def _estimate(values: np.ndarray) -> dict:
    """{"value", "ci95"} in %, rounded to 4 decimals (None where undefined: strict JSON)."""
    lo, hi = bootstrap.interval(values[1:])
    return {"value": _round(values[0]), "ci95": [_round(lo), _round(hi)]}


def _round(x) -> Optional[float]:
    x = float(x)
    return round(x, 4) if np.isfinite(x) else None


def summary(run: ScoredRun, values: dict[str, np.ndarray], units: int, replicates: int) -> dict:
    """scores.json's numbers: metrics, categories (VideoPhy), counts, the bootstrap's settings."""
    result = {"benchmark": run.benchmark or "custom", "evaluator": run.evaluator,
              "videos": len(run.videos), "prompts": units,
              "metrics": {k: _estimate(v) for k, v in values.items() if "/" not in k}}
    cats = categories(run) if run.evaluator != VBENCH else []
    if cats:
        result["categories"] = {}
        for c in cats:
            entry = {"videos": sum(v.category == c for v in run.videos),
                     "prompts": len({v.index for v in run.videos if v.category == c})}
            entry.update({k.split("/", 1)[1]: _estimate(v) for k, v in values.items() if k.startswith(c + "/")})
            result["categories"][c] = entry
    result["bootstrap"] = {"replicates": replicates, "seed": bootstrap.SEED, "unit": "prompt",
                           "interval": "percentile, 2.5 % - 97.5 %"}
    if run.evaluator == VBENCH:
        result["vbench"] = {"version": VBENCH_VERSION, "offsets": run.offsets,
                            "videos_per_dimension": {d: sum(d in v.parts for v in run.videos)
                                                     for d in sorted(run.offsets)}}
    return result


# ----------------------------------------------------------------------------- one folder

@dataclass
class ScoreInputs:
    sa: Optional[Path] = None
    pc: Optional[Path] = None
    vbench: list[Path] = field(default_factory=list)


def score_folder(out: Path, inputs: ScoreInputs, replicates: int = bootstrap.REPLICATES) -> tuple[dict, list[str]]:
    """(scores.json content, notes) of a sample folder; raises before anything is written."""
    out = Path(out)
    plan, records = finished_samples(out)
    benchmarks = {r.get("benchmark") for r in records.values()}
    if plan is not None:
        benchmarks.add(plan.get("benchmark"))
    if len(benchmarks) > 1:
        raise ScoreFileError(f"{out}: holds videos of several prompt sets ({', '.join(map(str, benchmarks))})")
    benchmark = benchmarks.pop()
    notes: list[str] = []
    if inputs.vbench:
        if inputs.sa or inputs.pc:
            raise ScoreFileError("give --sa and --pc (VideoPhy, VideoPhy2) or --vbench, not both")
        run = score_vbench(out, records, benchmark, inputs.vbench, notes)
    else:
        if inputs.sa is None or inputs.pc is None:
            raise ScoreFileError("give both --sa FILE and --pc FILE (or --vbench FILE for VBench)")
        run = score_physics(out, records, benchmark, inputs.sa, inputs.pc)
    values, units = run_estimates([run], replicates)
    result = summary(run, values[0], units, replicates)
    zeros = sum(v.scores.get(m) == 0 for v in run.videos for m in ("SA", "PC")) if run.evaluator == AUTOEVAL else 0
    if zeros:
        notes.append(f"{zeros} score(s) of 0: VideoPhy-2-AutoEval writes 0 when it cannot parse its model's answer")
    seeds = sorted({v.seed for v in run.videos})
    settings = next(iter(records.values())).get("settings", {})
    result["samples"] = {"folder": str(out.resolve()), "seeds": seeds, "checkpoint": settings.get("checkpoint"),
                         "steps": settings.get("steps"), "guidance": settings.get("guidance")}
    result["sources"] = {k: [str(Path(p).resolve()) for p in v] if isinstance(v, list) else str(Path(v).resolve())
                         for k, v in asdict(inputs).items() if v}
    result["notes"] = notes
    result["per_video"] = [asdict(v) for v in run.videos]
    return result, notes


def write_scores(out: Path, result: dict) -> Path:
    path = Path(out) / SCORES_FILE
    tmp = path.with_name(SCORES_FILE + ".tmp")
    tmp.write_text(json.dumps(result, ensure_ascii=False, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_scored(path: Path) -> ScoredRun:
    """A run from DIR/scores.json (or the file itself), for side-by-side comparison."""
    path = Path(path)
    file = path / SCORES_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        videos = [ScoredVideo(**v) for v in data["per_video"]]
        offsets = data.get("vbench", {}).get("offsets", {})
        return ScoredRun(None if data["benchmark"] == "custom" else data["benchmark"], data["evaluator"], videos,
                         offsets, label=str(path))
    except FileNotFoundError:
        raise ScoreFileError(f"{file}: not found (score the run first: tsa score {path} --sa ... --pc ...)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ScoreFileError(f"{file}: not a tsa scores.json ({type(e).__name__}: {e})") from None
