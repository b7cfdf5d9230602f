"""The input list: which clips, in which order, with which captions and keys.

Two layouts (SPEC section 5):
  * OpenVid-1M: one or more `*.csv` in `--src` with at least `video` and `caption` columns;
    clips at `src/videos/<video>` or `src/<video>`; other columns are kept for the manifest.
  * A plain folder of clips (searched recursively) with same-named `.txt` captions.

The order (CSV files by name, then rows; or paths sorted) fixes the shard assignment, so it
must not depend on the file system's listing order. Rows that cannot be processed at all
(file missing, no caption) are listed with an error and become `failed` manifest rows; a
second row for the same video is `skipped`.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.layout import base_key, disambiguated_key, extra_column_name

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"}


class SourceError(ValueError):
    """`--src` or `--subset` cannot be read; the message names the file or column."""


@dataclass
class ClipItem:
    index: int  # position in the input list: shard = index // samples_per_shard
    key: str
    video: str  # as given in the CSV (or the path relative to --src in folder mode)
    path: str  # absolute path that will be decoded
    caption: Optional[str]
    status: str = "ok"  # ok (to process) | failed | skipped (known before decoding)
    error: Optional[str] = None
    extras: dict[str, Any] = field(default_factory=dict)  # other CSV columns, manifest names


def _clean(value: Any) -> Any:
    """CSV cell -> JSON-able value (numbers stay numbers, empty cells become None)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value


def _read_csv_rows(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype={"video": str, "caption": str}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read CSV ({e})") from None
    missing = [c for c in ("video", "caption") if c not in df.columns]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(map(str, df.columns))})")
    return [{k: _clean(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def _resolve_clip(src: Path, video: str) -> tuple[Path, Optional[str]]:
    candidates = [src / "videos" / video, src / video]
    for c in candidates:
        if c.is_file():
            return c.resolve(), None
    return candidates[0], f"file not found: tried {', '.join(str(c) for c in candidates)}"


def _csv_entries(src: Path, csvs: list[Path]) -> list[dict[str, Any]]:
    entries = []
    for path in csvs:
        for row in _read_csv_rows(path):
            video = row.pop("video")
            caption = row.pop("caption")
            if video is None or not str(video).strip():
                entries.append({"video": "", "path": "", "caption": caption, "extras": row,
                                "error": f"{path.name}: empty `video` cell"})
                continue
            video = str(video).strip()
            clip, error = _resolve_clip(src, video)
            if error is None and (caption is None or not str(caption).strip()):
                error = f"{path.name}: empty caption"
            entries.append({"video": video, "path": str(clip), "caption": caption, "extras": row, "error": error})
    return entries


def _folder_entries(src: Path) -> list[dict[str, Any]]:
    entries = []
    for clip in sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS):
        txt = clip.with_suffix(".txt")
        caption, error = None, None
        if txt.is_file():
            caption = txt.read_text(encoding="utf-8-sig", errors="replace").strip()
            if not caption:
                error = f"empty caption file {txt.name}"
        else:
            error = f"no caption file {txt.name}"
        entries.append({"video": clip.relative_to(src).as_posix(), "path": str(clip.resolve()), "caption": caption,
                        "extras": {}, "error": error})
    return entries


def read_subset(path: Path) -> set[str]:
    """Video names to keep: one per line (blank lines and `#` comments ignored), or the
    `video` column of a CSV."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"--subset {path}: file not found")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
            reader = csv.DictReader(f)
            if "video" not in (reader.fieldnames or []):
                raise SourceError(f"--subset {path}: a CSV subset needs a `video` column")
            return {r["video"].strip() for r in reader if r["video"] and r["video"].strip()}
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return {s.strip() for s in lines if s.strip() and not s.strip().startswith("#")}


def list_clips(src: str | Path, subset: Optional[str | Path] = None, limit: Optional[int] = None) -> list[ClipItem]:
    """The ordered input list after `--subset` and `--limit`, with unique keys."""
    src = Path(src)
    if not src.is_dir():
        raise SourceError(f"--src {src}: not a folder")
    csvs = sorted(src.glob("*.csv"))
    entries = _csv_entries(src, csvs) if csvs else _folder_entries(src)
    if subset is not None:
        keep = read_subset(Path(subset))
        entries = [e for e in entries if e["video"] in keep or Path(e["video"]).name in keep]
    if limit is not None:
        if limit < 0:
            raise SourceError(f"--limit {limit}: must be >= 0")
        entries = entries[:limit]

    items: list[ClipItem] = []
    keys: set[str] = set()
    first_row: dict[str, int] = {}
    for i, e in enumerate(entries):
        extras = {extra_column_name(str(k)): v for k, v in e["extras"].items()}
        video = e["video"]
        key = base_key(video) if video else f"row_{i:08d}"
        status, error = ("failed", e["error"]) if e["error"] else ("ok", None)
        if video and e["path"] in first_row:
            status, error = "skipped", f"duplicate of input row {first_row[e['path']]} (same file)"
        elif video:
            first_row[e["path"]] = i
        if key in keys:
            key = disambiguated_key(video or str(i))
            n = 1
            while key in keys:  # same name and same hash prefix: count up
                key = f"{disambiguated_key(video)}_{n}"
                n += 1
        keys.add(key)
        items.append(ClipItem(index=i, key=key, video=video, path=e["path"], caption=e["caption"],
                              status=status, error=error, extras=extras))
    return items
