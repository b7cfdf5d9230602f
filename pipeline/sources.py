"""The input list: which clips, in which order, with which captions and keys.

Layouts (SPEC section 5, docs/preprocess.md "Inputs"):
  * CSV files with at least `video` and `caption` columns: `--csv FILE` (repeatable), else
    every `*.csv` directly in `--src`, else OpenVid's download layout `--src/data/train/*.csv`.
    When OpenVid-1M.csv and OpenVidHD.csv are both found, only OpenVid-1M.csv is read
    (OpenVidHD is a subset of it). Clips are looked for in `--videos DIR`, else in
    `src/videos/`, `src/video/` (OpenVid's download script) and `src/` (in that order; for
    the data/train layout in `video/` or `videos/` only). Other columns are kept for the manifest.
  * A plain folder of clips (searched recursively) with same-named `.txt` captions.
  * A bucket prefix (`s3://`, `gs://`) with CSV files: pipeline/remote_src.py (CSVs read through
    fsspec, each clip fetched by its decode worker).

Rows are selected (`--subset`, `--where`, `--sample`, `--limit`: pipeline/selection.py)
before any clip file is looked at, so a 64K subset of a 1M-row CSV costs 64K `lstat` calls.
The order (CSV files as named or sorted by name, then rows; or paths sorted) fixes the shard
assignment, so it must not depend on the file system's listing order. Rows that cannot be
processed at all (file missing, outside the source folder, no caption) are listed with an
error and become `failed` manifest rows; a second row for the same file is `skipped`. When
not one listed clip exists, the layout is wrong: SourceError, before anything is written.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tsa.pipeline.csv_table import CsvError, read_csv_table, rows as table_rows
from tsa.shards.layout import base_key, disambiguated_key, extra_column_name
from tsa.pipeline.selection import (
    SelectionError,
    condition_mask,
    describe,
    parse_condition,
    read_subset as _read_subset,
    sample_videos,
    subset_mask,
    write_subset_file,
)

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"}
OPENVID_CSV, OPENVID_HD_CSV = "OpenVid-1M.csv", "OpenVidHD.csv"
OUTSIDE = "outside the source folder"

log = logging.getLogger(__name__)


class SourceError(ValueError):
    """`--src`, `--csv`, `--videos`, `--subset`, `--where` or `--sample` cannot be used; the
    message names the file, folder or column."""


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


@dataclass
class Layout:
    """Where the inputs are: CSV files + clip folders, or (no CSV) a folder of clips."""
    csvs: list[Path]
    video_dirs: list[Path]  # resolved; a CSV row's clip is the first dir/<video> that exists
    folder: Optional[Path] = None  # folder-of-clips mode
    note: str = ""


@dataclass
class Selection:
    """The ordered input list and what to record about how it was chosen."""
    items: list[ClipItem]
    source: str  # dataset.json `source`
    subset_header: Optional[str] = None  # set when --where/--sample chose the rows

    def write_subset(self, out: str | Path) -> Optional[Path]:
        """OUT/subset.txt (one `video` per line, input order) when --where/--sample chose the
        list, so that `--subset OUT/subset.txt` repeats it anywhere; else nothing."""
        if self.subset_header is None:
            return None
        videos = [it.video for it in self.items if it.video]
        return write_subset_file(out, videos, f"{self.subset_header}\n{len(videos)} clips, in input order")


def read_subset(path: str | Path) -> set[str]:
    try:
        return _read_subset(path)
    except SelectionError as e:
        raise SourceError(str(e)) from None


def _openvid_pair(csvs: list[Path]) -> tuple[list[Path], str]:
    """Drop OpenVidHD.csv when OpenVid-1M.csv is there too: its rows are a subset."""
    names = {p.name for p in csvs}
    if OPENVID_CSV in names and OPENVID_HD_CSV in names:
        return ([p for p in csvs if p.name != OPENVID_HD_CSV],
                f"{OPENVID_HD_CSV} not read: its clips are a subset of {OPENVID_CSV} "
                f"(pass --csv .../{OPENVID_HD_CSV} for the HD clips only)")
    return csvs, ""


def find_layout(src: Optional[Path], csvs: Optional[list[Path]] = None, videos: Optional[Path] = None) -> Layout:
    """Detect the layout from `--src`, or take `--csv`/`--videos` as given. Raises SourceError."""
    if src is not None and not src.is_dir():
        raise SourceError(f"--src {src}: not a folder")
    if videos is not None and not videos.is_dir():
        raise SourceError(f"--videos {videos}: not a folder")
    dirs = [videos.resolve()] if videos is not None else None
    if csvs:
        for c in csvs:
            if not c.is_file():
                raise SourceError(f"--csv {c}: file not found")
        if dirs is None:
            if src is None:
                raise SourceError("--csv needs --videos DIR (the folder of the clips) or --src")
            dirs = _src_video_dirs(src)
        return Layout(list(csvs), dirs)
    if src is None:
        raise SourceError("give --src (a folder) or --csv FILE with --videos DIR")
    top = sorted(src.glob("*.csv"))
    if top:
        found, note = _openvid_pair(top)
        return Layout(found, dirs or _src_video_dirs(src), note=note)
    train = src / "data" / "train"
    nested = sorted(train.glob("*.csv"))
    if nested:  # OpenVid's download script: data/train/*.csv, clips unzipped into video/
        found, note = _openvid_pair(nested)
        if dirs is None:
            dirs = [d.resolve() for d in (src / "video", src / "videos") if d.is_dir()]
            if not dirs:
                raise SourceError(f"--src {src}: found {', '.join(p.name for p in nested)} in {train} but no "
                                  f"{src / 'video'} folder (where OpenVid's download script unzips the clips); "
                                  f"name the clips' folder with --videos DIR")
        return Layout(found, dirs, note=note)
    if videos is not None:
        raise SourceError(f"--videos {videos}: needs CSV input, but --src {src} has no *.csv (nor data/train/*.csv); "
                          f"name it with --csv FILE")
    return Layout([], [], folder=src)


def _src_video_dirs(src: Path) -> list[Path]:
    return [d.resolve() for d in (src / "videos", src / "video") if d.is_dir()] + [src.resolve()]


def _inside(path: str, folder: Path) -> bool:
    return os.path.commonpath([path, str(folder)]) == str(folder)


def _escapes(video: str) -> bool:
    """Absolute, or climbs out with `..`: never joined to a folder, never opened."""
    return os.path.isabs(video) or ".." in video.split("/")


def resolve_clip(dirs: list[Path], video: str) -> tuple[str, Optional[str]]:
    """(path to decode, error): the first dirs[i]/video that is a file. One `lstat` a folder
    tried; a symlink (or a path with sub-folders) is resolved and must stay inside its folder."""
    if _escapes(video):
        return "", f"{OUTSIDE}: {video}"
    tried = []
    for d in dirs:
        p = os.path.join(d, video)
        try:
            st = os.lstat(p)
        except OSError:  # FileNotFoundError, NotADirectoryError, ...
            tried.append(p)
            continue
        if stat.S_ISLNK(st.st_mode) or os.sep in video:
            real = os.path.realpath(p)
            if not _inside(real, d):
                return p, f"{OUTSIDE}: {video} leads to {real}"
            if os.path.isfile(real):
                return real, None
        elif stat.S_ISREG(st.st_mode):
            return p, None
        tried.append(p)  # a folder named like the clip
    return tried[0] if tried else "", f"file not found: tried {', '.join(tried)}"


def _csv_entries(layout: Layout, subset: Optional[set[str]], where: list[str], sample: Optional[int],
                 seed: int, limit: Optional[int], resolver=None) -> list[dict[str, Any]]:
    """Select rows over all CSVs (subset, where, sample, limit), then look their clips up
    (`resolver(dirs, video)`, default resolve_clip; pipeline/remote_src.py for a bucket)."""
    resolver = resolver or resolve_clip
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    conditions = [parse_condition(w) for w in where]
    tables = [read_csv_table(path) for path in layout.csvs]
    keep = []  # per CSV: row numbers that pass, ascending (input order)
    for path, table in zip(layout.csvs, tables):
        mask = pa.chunked_array([pa.array(np.ones(table.num_rows, dtype=bool))])
        if subset is not None:
            mask = pc.and_(mask, subset_mask(table["video"], subset))
        for cond in conditions:
            mask = pc.and_(mask, condition_mask(table, cond, str(path)))
        keep.append(np.flatnonzero(mask.to_numpy()))
    total_rows = sum(t.num_rows for t in tables)
    if total_rows and not any(len(k) for k in keep) and (subset is not None or conditions):
        used = (["--subset"] if subset is not None else []) + [f"--where {c.text!r}" for c in conditions]
        raise SourceError(f"no row of {', '.join(str(p) for p in layout.csvs)} ({total_rows} rows) passes "
                          f"{' and '.join(used)}")
    if sample is not None:
        videos = [t["video"].take(k) for t, k in zip(tables, keep)]
        names = [v for col in videos for v in col.to_pylist() if v]
        chosen = sample_videos(names, sample, seed)
        if len(chosen) < sample:
            log.warning("--sample %d: only %d distinct clips pass the filters; taking all of them", sample, len(chosen))
        chosen_set = pa.array(sorted(chosen), type=pa.string())
        keep = [k[pc.fill_null(pc.is_in(v, value_set=chosen_set), False).to_numpy(zero_copy_only=False)]
                for k, v in zip(keep, videos)]
    if limit is not None:
        left = limit
        for i, k in enumerate(keep):
            keep[i], left = k[:left], max(0, left - len(k))

    entries = []
    for path, table, k in zip(layout.csvs, tables, keep):
        table = table.rename_columns([c if c in ("video", "caption") else extra_column_name(c)
                                      for c in table.column_names])  # manifest names, once a column
        for row in table_rows(table, k.tolist()):
            video, caption = row.pop("video"), row.pop("caption")
            if not video:
                entries.append({"video": "", "path": "", "caption": caption, "extras": row,
                                "error": f"{path.name}: empty `video` cell"})
                continue
            clip, error = resolver(layout.video_dirs, video)
            if error is None and (caption is None or not caption.strip()):
                error = f"{path.name}: empty caption"
            entries.append({"video": video, "path": clip, "caption": caption, "extras": row, "error": error})
    return entries


def _check_found(entries: list[dict[str, Any]], layout: Layout) -> None:
    """Not one listed clip exists: a wrong layout, not a run of broken clips."""
    missing = [e for e in entries if e["error"] and e["error"].startswith("file not found")]
    found = [e for e in entries if e["path"] and not (e["error"] or "").startswith(("file not found", OUTSIDE))]
    if missing and not found:
        raise SourceError(
            f"none of the {len(missing)} listed clips was found (e.g. {missing[0]['video']!r}); looked in "
            f"{', '.join(str(d) for d in layout.video_dirs)} for the `video` names of "
            f"{', '.join(str(p) for p in layout.csvs)}. For OpenVid's download layout pass its root as --src "
            f"(data/train/*.csv, clips in video/); otherwise name the clips' folder with --videos DIR")


def _folder_entries(src: Path) -> list[dict[str, Any]]:
    entries = []
    root = src.resolve()
    for clip in sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()):
        rel = clip.relative_to(src).as_posix()
        real = os.path.realpath(clip)
        if not _inside(real, root):  # a symlink that leaves --src
            entries.append({"video": rel, "path": str(clip), "caption": None, "extras": {},
                            "error": f"{OUTSIDE}: {rel} leads to {real}"})
            continue
        txt = clip.with_suffix(".txt")
        caption, error = None, None
        if txt.is_file():
            caption = txt.read_text(encoding="utf-8-sig", errors="replace").strip()
            if not caption:
                error = f"empty caption file {txt.name}"
        else:
            error = f"no caption file {txt.name}"
        entries.append({"video": rel, "path": real, "caption": caption, "extras": {}, "error": error})
    return entries


def _folder_select(entries: list[dict[str, Any]], subset: Optional[set[str]], sample: Optional[int], seed: int,
                   limit: Optional[int]) -> list[dict[str, Any]]:
    if subset is not None:
        entries = [e for e in entries if e["video"] in subset or Path(e["video"]).name in subset]
    if sample is not None:
        chosen = sample_videos([e["video"] for e in entries], sample, seed)
        entries = [e for e in entries if e["video"] in chosen]
    return entries if limit is None else entries[:limit]


def select_local_inputs(src: Optional[str | Path], subset: Optional[str | Path], limit: Optional[int], *,
                        csvs: Optional[list[str | Path]], videos: Optional[str | Path], where: Optional[list[str]],
                        sample: Optional[int], seed: Optional[int]) -> Selection:
    """`pipeline.inputs.select_inputs` for a local `--src` (or `--csv`/`--videos`), arguments already checked."""
    seed = 0 if seed is None else seed
    where = list(where or [])
    try:
        layout = find_layout(Path(src) if src is not None else None, [Path(c) for c in csvs or []],
                             Path(videos) if videos is not None else None)
        if layout.note:
            log.info("%s", layout.note)
        keep = _read_subset(subset) if subset is not None else None
        if layout.folder is not None:
            if where:
                raise SourceError(f"--where needs CSV input; --src {layout.folder} is a folder of clips "
                                  f"with .txt captions")
            entries = _folder_select(_folder_entries(layout.folder), keep, sample, seed, limit)
        else:
            entries = _csv_entries(layout, keep, where, sample, seed, limit)
            _check_found(entries, layout)
    except (CsvError, SelectionError) as e:
        raise SourceError(str(e)) from None
    source = str(layout.folder.resolve()) if layout.folder is not None else (
        str(Path(src).resolve()) if src is not None else str(layout.video_dirs[0]))
    chosen_by = describe(where, sample, seed) if (where or sample is not None) else None
    return Selection(_items(entries), source, chosen_by)


def _items(entries: list[dict[str, Any]]) -> list[ClipItem]:
    items: list[ClipItem] = []
    keys: set[str] = set()
    first_row: dict[str, int] = {}
    for i, e in enumerate(entries):
        extras = e["extras"]  # already under their manifest names
        video = e["video"]
        key = base_key(video) if video else f"row_{i:08d}"
        status, error = ("failed", e["error"]) if e["error"] else ("ok", None)
        if video and e["path"] in first_row:
            status, error = "skipped", f"duplicate of input row {first_row[e['path']]} (same file)"
        elif video and e["path"]:
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
