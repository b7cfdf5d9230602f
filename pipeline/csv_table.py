"""Read an OpenVid-style CSV into a pyarrow Table, fast and with stable column types.

OpenVid-1M.csv has a million rows; pandas needs several times longer than pyarrow's
multithreaded reader for all columns (bench/list_clips.py). Every column is read as text
and then cast per column to int64, else float64, else kept as text: pyarrow infers types
from the first block only, so a file whose later rows hold another type (a number column
with `n/a` far down) would otherwise fail half-way. Only empty cells are null; a caption
"NA" stays text. Rows are turned into Python dicts only after selection (`rows`).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

REQUIRED = ("video", "caption")


class CsvError(ValueError):
    """The CSV cannot be read or lacks a required column; the message names the file."""


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CsvError(f"{path}: cannot read CSV ({e})") from None


def _typed(column):
    """A text column as int64, else float64, else unchanged."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for type_ in (pa.int64(), pa.float64()):
        try:
            return pc.cast(column, type_)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return column


def read_csv_table(path: str | Path):
    """The whole CSV as a pyarrow Table: `video` and `caption` as text (surrounding blanks of
    `video` removed), other columns typed (see module docstring). Raises CsvError."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    path = Path(path)
    names = _header(path)
    if not names:
        raise CsvError(f"{path}: empty CSV (no header line)")
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise CsvError(f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(names)})")
    try:
        table = pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(newlines_in_values=True),  # captions may span lines
            convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                strings_can_be_null=True, null_values=[""],
                                                quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as e:
        raise CsvError(f"{path}: cannot read CSV ({e})") from None
    columns = {}
    for name in table.column_names:
        col = table[name]
        if name == "video":
            col = pc.utf8_trim_whitespace(col)
        elif name != "caption":
            col = _typed(col)
        columns[name] = col
    return pa.table(columns)


def _clean(value: Any) -> Any:
    """NaN (a `nan` cell of a float column) -> None, so manifest rows stay JSON-able."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def rows(table, indices: list[int]) -> list[dict[str, Any]]:
    """The rows at `indices` (in that order) as dicts of Python values."""
    import pyarrow as pa

    picked = table.take(pa.array(indices, type=pa.int64()))
    return [{k: _clean(v) for k, v in r.items()} for r in picked.to_pylist()]
