"""The official evaluators' output files, read exactly as they write them.

    VideoCon-Physics (VideoPhy, videocon/training/pipeline_video/entailment_inference.py):
        csv.writer rows appended without a header: videopath, the templated question, score in
        [0, 1]. The question tells SA from PC: SA asks whether the video entails the quoted
        caption, PC whether it follows the physical laws.
    VideoPhy-2-AutoEval (VIDEOPHY2/inference.py): pandas `to_csv` of its input with a `score`
        column: a first, unnamed index column, then the input's columns (videopath, caption),
        then score, an integer 0..5 written as a float (0 when it could not parse the model's
        answer).
    VBench (`VBench.evaluate`, `{name}_eval_results.json`): {dimension: [value, [{video_path,
        video_results, ...}, ...]]}, one file per `vbench evaluate` call.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tsa.evaluate.benchmarks import AUTOEVAL, VBENCH, VIDEOCON
from tsa.evaluate.vbench_final import DIMENSIONS

FORMAT_NAMES = {VIDEOCON: "VideoCon-Physics rows (videopath, question, score in [0, 1]; no header)",
                AUTOEVAL: "a VideoPhy-2-AutoEval CSV (index column, videopath, caption, score 1-5)",
                VBENCH: "VBench evaluation results (JSON)"}
SA_QUESTION = re.compile(r'Does this video entail the description: "(.*)"\?', re.DOTALL)
PC_QUESTION = "Does this video follow the physical laws?"


class ScoreFileError(ValueError):
    """A score file is unreadable, of another evaluator or scale, or does not match the videos;
    the message names the file (and line)."""


@dataclass
class ScoreRow:
    path: str  # the videopath as the evaluator wrote it
    score: float
    line: int  # line of the file where the row ends (1-based)
    caption: Optional[str] = None  # the caption the evaluator judged against, where the file says

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass
class VBenchDimension:
    value: float  # VBench's own aggregate (0-1)
    videos: list[dict] = field(default_factory=list)  # its per-video records
    source: str = ""


def _csv_rows(path: Path):
    try:
        f = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise ScoreFileError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        reader = csv.reader(f)
        try:
            for row in reader:
                yield reader.line_num, row
        except (csv.Error, UnicodeDecodeError) as e:
            raise ScoreFileError(f"{path} line {reader.line_num + 1}: unreadable ({e})") from None


def sniff(path: Path) -> str:
    """Which evaluator wrote `path`: VIDEOCON, AUTOEVAL or VBENCH."""
    path = Path(path)
    if path.is_dir():
        return VBENCH
    try:
        head = path.read_bytes()[:4096].lstrip()
    except OSError as e:
        raise ScoreFileError(f"{path}: cannot read ({e.strerror or e})") from None
    if not head:
        raise ScoreFileError(f"{path}: empty file")
    if head[:1] in (b"{", b"["):
        return VBENCH
    for _, row in _csv_rows(path):
        if not any(cell.strip() for cell in row):
            continue
        if "videopath" in row and "score" in row:
            return AUTOEVAL
        if len(row) == 3 and _float(row[2]) is not None:
            return VIDEOCON
        break
    raise ScoreFileError(f"{path}: neither {FORMAT_NAMES[VIDEOCON]} nor {FORMAT_NAMES[AUTOEVAL]}")


def _float(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_videocon(path: Path, task: str) -> list[ScoreRow]:
    """Rows of a VideoCon-Physics output file; `task` SA or PC (checked against the questions)."""
    path = Path(path)
    rows = []
    for line, row in _csv_rows(path):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 3:
            raise ScoreFileError(f"{path} line {line}: {len(row)} field(s), expected 3 (videopath, question, score)")
        videopath, question, text = row
        score = _float(text)
        if score is None:
            raise ScoreFileError(f"{path} line {line}: score {text!r} is not a number")
        if not 0.0 <= score <= 1.0:
            raise ScoreFileError(f"{path} line {line}: score {score:g} is outside VideoCon-Physics' [0, 1] "
                                 f"(VideoPhy-2-AutoEval scores 1-5; this run's benchmark is VideoPhy)")
        sa = SA_QUESTION.search(question)
        if sa is None and PC_QUESTION not in question:
            raise ScoreFileError(f"{path} line {line}: the question is neither VideoCon-Physics' semantic adherence "
                                 f"(SA) nor its physical commonsense (PC) prompt")
        if task == "SA" and sa is None:
            raise ScoreFileError(f"{path}: physical commonsense (PC) scores (line {line} asks "
                                 f"{PC_QUESTION!r}) given as --sa")
        if task == "PC" and sa is not None:
            raise ScoreFileError(f"{path}: semantic adherence (SA) scores (line {line} asks whether the video "
                                 f"entails its caption) given as --pc")
        if not videopath.strip():
            raise ScoreFileError(f"{path} line {line}: empty videopath")
        rows.append(ScoreRow(videopath, score, line, sa.group(1) if sa else None))
    if not rows:
        raise ScoreFileError(f"{path}: no score rows")
    return rows


def read_autoeval(path: Path) -> list[ScoreRow]:
    """Rows of a VideoPhy-2-AutoEval output CSV (SA or PC: the file does not say which)."""
    path = Path(path)
    rows, header = [], None
    for line, row in _csv_rows(path):
        if header is None:
            header = row
            if "videopath" not in header or "score" not in header:
                raise ScoreFileError(f"{path}: header {row} has no 'videopath' and 'score' columns "
                                     f"(expected {FORMAT_NAMES[AUTOEVAL]})")
            col = {name: header.index(name) for name in ("videopath", "score", "caption") if name in header}
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ScoreFileError(f"{path} line {line}: {len(row)} field(s), the header has {len(header)}")
        text = row[col["score"]].strip()
        if not text:
            raise ScoreFileError(f"{path} line {line}: no score (VideoPhy-2-AutoEval did not reach this row?)")
        score = _float(text)
        if score is None:
            raise ScoreFileError(f"{path} line {line}: score {text!r} is not a number")
        if score != int(score) or not 0 <= score <= 5:
            scale = " (VideoCon-Physics' [0, 1] scale?)" if 0 < score < 1 else ""
            raise ScoreFileError(f"{path} line {line}: score {score:g} is not one of VideoPhy-2-AutoEval's "
                                 f"0..5{scale}")
        rows.append(ScoreRow(row[col["videopath"]], score, line,
                             row[col["caption"]] if "caption" in col else None))
    if not rows:
        raise ScoreFileError(f"{path}: no score rows")
    return rows


def read_vbench(paths: list[Path]) -> dict[str, VBenchDimension]:
    """Dimension -> VBench's value and per-video records, from result JSON files (or folders of
    `*_eval_results.json`); a dimension in two files is refused."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*_eval_results.json"))
            if not found:
                raise ScoreFileError(f"{p}: no *_eval_results.json in this folder")
            files += found
        else:
            files.append(p)
    dims: dict[str, VBenchDimension] = {}
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ScoreFileError(f"{path}: cannot read ({e.strerror or e})") from None
        except ValueError as e:
            raise ScoreFileError(f"{path}: not JSON ({e})") from None
        if not isinstance(data, dict):
            raise ScoreFileError(f"{path}: a JSON {type(data).__name__}, not VBench's evaluation results "
                                 f"({{dimension: [value, per-video results]}}; a *_full_info.json is VBench's input)")
        for dim, entry in data.items():
            if dim not in DIMENSIONS:
                raise ScoreFileError(f"{path}: {dim!r} is not one of VBench's 16 text-to-video dimensions")
            if dim in dims:
                raise ScoreFileError(f"{path}: dimension {dim} is also in {dims[dim].source}")
            if (not isinstance(entry, list) or len(entry) != 2 or _number(entry[0]) is None
                    or not isinstance(entry[1], list)):
                raise ScoreFileError(f"{path}: {dim} is not [value, [per-video results]]")
            for i, video in enumerate(entry[1]):
                if not isinstance(video, dict) or not isinstance(video.get("video_path"), str):
                    raise ScoreFileError(f"{path}: {dim} video {i} has no video_path")
            dims[dim] = VBenchDimension(float(entry[0]), entry[1], str(path))
    if not dims:
        raise ScoreFileError(f"{', '.join(map(str, paths))}: no VBench dimensions")
    return dims


def _number(v) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def vbench_parts(dim: str, video: dict, source: str) -> tuple[float, float]:
    """(num, den) of one video for `dim` such that sum(num) / sum(den) over the videos is VBench's
    own aggregate: frame counts for the frame-level success rates, similarity sums for background
    consistency, per-video means elsewhere (imaging quality: its 0-100 score / 100)."""
    def need(key: str) -> float:
        v = video.get(key)
        v = float(v) if isinstance(v, bool) else _number(v)
        if v is None:
            raise ScoreFileError(f"{source}: {dim} video {video.get('video_path')}: no number {key!r}")
        return v

    if dim == "background_consistency":
        return need("video_sim"), need("cnt_per_video")
    if dim in ("object_class", "multiple_objects", "scene"):
        return need("success_frame_count"), need("frame_count")
    if dim == "imaging_quality":
        return need("video_results") / 100.0, 1.0
    if dim == "human_action":
        return need("cor_num_per_video"), 1.0
    return need("video_results"), 1.0
