"""The output folder of `tsa sample`: what was asked (sample.json), what is finished
(samples.jsonl), and the evaluators' input (eval.csv). Only the driver process writes here.

    OUT/sample.json    the benchmark, prompt source, seed(s) and every video file asked for so far
                       (the union over runs into this folder); `tsa score` checks it is complete
    OUT/samples.jsonl  one line per finished video, appended after its mp4 is renamed into place
    OUT/eval.csv       videopath (absolute), caption: every finished video, for the evaluators
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Optional

SAMPLES_FILE = "samples.jsonl"
EVAL_FILE = "eval.csv"
PLAN_FILE = "sample.json"
# Settings that must agree before new videos are added to an existing OUT folder.
RESUME_KEYS = ("checkpoint", "steps", "guidance", "dynamic_cfg", "frames", "height", "width", "fps",
               "dtype", "scheduler")


class SamplesError(ValueError):
    """The output folder cannot be used as it is; the message names the file and the problem."""


def read_samples(out: Path) -> list[dict]:
    """Finished videos recorded in OUT/samples.jsonl (a torn last line from a crash is ignored)."""
    path = Path(out) / SAMPLES_FILE
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
            _ = rec["index"], rec["prompt"], rec["seed"], rec["video_index"], rec["file"]
        except (ValueError, KeyError) as e:
            if n == len(lines):
                continue  # torn write of the last line; its video is simply made again
            raise SamplesError(f"{path}: line {n} is not a sample record ({e})") from None
        records.append(rec)
    return records


def latest_by_file(out: Path, records: list[dict]) -> dict[str, dict]:
    """file -> its last record, for the files that exist (a lost mp4 made again has two lines)."""
    latest: dict[str, dict] = {}
    for rec in records:
        latest[rec["file"]] = rec
    return {f: r for f, r in latest.items() if (Path(out) / f).is_file()}


def _drop_torn_tail(path: Path) -> None:
    """Cut a crashed write's partial last line so that it cannot end up mid-file (reads only the
    tail: the log of a VBench run holds thousands of lines)."""
    with path.open("r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        pos = end
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            cut = f.read(step).rfind(b"\n")
            if cut >= 0:
                f.truncate(pos + cut + 1)
                return
        f.truncate(0)


def append_record(out: Path, record: dict) -> None:
    path = Path(out) / SAMPLES_FILE
    if path.is_file():
        _drop_torn_tail(path)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def commit_video(out: Path, name: str, data: bytes) -> None:
    """Write mp4 `data` as OUT/name: under a temporary name first, renamed when complete."""
    final = Path(out) / name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp"
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_eval_csv(out: Path, records: list[dict]) -> None:
    """OUT/eval.csv: `videopath,caption` of every finished video (what VideoPhy's prepare_data.py
    and VideoPhy-2-AutoEval's inference.py read)."""
    latest = latest_by_file(out, records)
    tmp = Path(out) / (EVAL_FILE + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["videopath", "caption"])
        for name in sorted(latest):
            w.writerow([str((Path(out) / name).resolve()), latest[name].get("caption", latest[name]["prompt"])])
    os.replace(tmp, Path(out) / EVAL_FILE)


def check_resume(out: Path, records: list[dict], settings: dict, wanted: dict[str, tuple]) -> None:
    """Refuse to add videos made with other settings, or to reuse a file name for another video.

    `wanted`: file -> (prompt index, prompt text, seed, video index) of every video asked for.
    """
    for rec in records:
        old = rec.get("settings", {})
        diffs = [f"{k}: {old.get(k)!r} before, {settings[k]!r} now" for k in RESUME_KEYS
                 if k in old and old[k] != settings[k]]
        if diffs:
            raise SamplesError(f"{Path(out) / SAMPLES_FILE} holds videos made with other settings "
                               f"({'; '.join(diffs)}); use a new --out")
    for rec in records:
        key = wanted.get(rec["file"])
        if key is None:
            continue
        index, text, seed, video_index = key
        if rec["index"] == index and rec["prompt"] != text:
            raise SamplesError(f"{Path(out) / SAMPLES_FILE}: prompt {index} was {rec['prompt']!r} before and is "
                               f"{text!r} now (the prompt file changed); use a new --out")
        if (rec["index"], rec["prompt"], rec["seed"], rec["video_index"]) != key:
            raise SamplesError(f"{Path(out) / SAMPLES_FILE}: {rec['file']} holds prompt {rec['index']} video "
                               f"{rec['video_index']} with --seed {rec['seed']}, and would now be prompt {index} "
                               f"video {video_index} with --seed {seed}; use a new --out")


def done_files(out: Path, records: list[dict], wanted: dict[str, tuple]) -> set[str]:
    """The files of `wanted` already finished: recorded with the same key, and present."""
    return {r["file"] for r in records
            if wanted.get(r["file"]) == (r["index"], r["prompt"], r["seed"], r["video_index"])
            and (Path(out) / r["file"]).is_file()}


def read_plan(out: Path) -> Optional[dict]:
    path = Path(out) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(plan, dict) or not isinstance(plan.get("expected"), list):
            raise ValueError("no 'expected' list")
    except ValueError as e:
        raise SamplesError(f"{path}: not a tsa sample plan ({e})") from None
    return plan


def write_plan(out: Path, plan: dict) -> dict:
    """Record what this run asks for; `expected` becomes the union with earlier runs' files."""
    old = read_plan(out) or {}
    if old.get("benchmark", plan["benchmark"]) != plan["benchmark"]:
        raise SamplesError(f"{Path(out) / PLAN_FILE}: this folder holds {old['benchmark'] or 'custom prompt set'} "
                           f"videos, not {plan['benchmark'] or 'a custom prompt set'}; use a new --out")
    plan = dict(plan)
    plan["expected"] = sorted(set(old.get("expected", [])) | set(plan["expected"]))
    plan["seeds"] = sorted(set(old.get("seeds", [])) | set(plan["seeds"]))
    tmp = Path(out) / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(plan, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, Path(out) / PLAN_FILE)
    return plan


def finished_samples(out: Path) -> tuple[Optional[dict], dict[str, dict]]:
    """(plan, file -> record) of a complete sample folder; SamplesError naming what is missing
    when a video asked for is not finished yet."""
    out = Path(out)
    if not (out / SAMPLES_FILE).is_file():
        raise SamplesError(f"{out}: no {SAMPLES_FILE} (not a `tsa sample` output folder)")
    plan = read_plan(out)
    latest = latest_by_file(out, read_samples(out))
    if plan is not None:
        missing = [f for f in plan["expected"] if f not in latest]
        if missing:
            raise SamplesError(f"{out} is incomplete: {len(missing)} of {len(plan['expected'])} videos are not "
                               f"finished (first: {missing[0]}); rerun the same `tsa sample` command")
    if not latest:
        raise SamplesError(f"{out / SAMPLES_FILE}: no finished videos")
    return plan, latest
