"""Which CSV rows to keep: `--subset`, `--where`, `--sample N --seed S` (SPEC section 5).

Applied to the CSV tables before any clip file is looked at, in this order: subset, where
filters (ANDed), sample, then `--limit`. The kept rows stay in input (CSV) order.

`--sample N` keeps the N distinct `video` values with the smallest
`sha256(f"{seed}:{video}")`: a deterministic draw that depends only on the candidate names
and the seed, not on the order of the CSV rows, files or the file system, so a rerun draws
the same clips and another machine too. The chosen list is written to OUT/subset.txt.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tsa.shards.layout import SUBSET_FILE

OPERATORS = (">=", "<=", "==", "!=", ">", "<")
_CONDITION = re.compile(r"^\s*(.+?)\s*(>=|<=|==|!=|>|<)\s*(.*?)\s*$", re.S)


class SelectionError(ValueError):
    """A bad `--subset`, `--where` or `--sample`; the message names the option and value."""


def read_subset(path: str | Path) -> set[str]:
    """Video names to keep: one per line (blank lines and `#` comments ignored), or the
    `video` column of a CSV."""
    path = Path(path)
    if not path.is_file():
        raise SelectionError(f"--subset {path}: file not found")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
            reader = csv.DictReader(f)
            if "video" not in (reader.fieldnames or []):
                raise SelectionError(f"--subset {path}: a CSV subset needs a `video` column")
            return {r["video"].strip() for r in reader if r["video"] and r["video"].strip()}
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return {s.strip() for s in lines if s.strip() and not s.strip().startswith("#")}


def subset_mask(videos, keep: set[str]):
    """Boolean pyarrow array: the `video` value or its file name is in `keep`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    value_set = pa.array(sorted(keep), type=pa.string())
    names = pc.replace_substring_regex(videos, pattern=r"^.*/", replacement="")
    return pc.fill_null(pc.or_(pc.is_in(videos, value_set=value_set), pc.is_in(names, value_set=value_set)), False)


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: Any  # float for a number, else str
    text: str  # as given, for messages

    def __str__(self) -> str:
        return self.text


def parse_condition(text: str) -> Condition:
    """`"motion score >= 2"` -> Condition("motion score", ">=", 2.0). Column names may hold
    spaces; a quoted value ('static' or "static") is text, an unquoted one a number if it
    parses as one."""
    m = _CONDITION.match(text)
    if not m or not m.group(1) or m.group(3) == "":
        raise SelectionError(f"--where {text!r}: expected COLUMN OP VALUE with OP one of {' '.join(OPERATORS)}, "
                             f"e.g. \"motion score >= 2\"")
    column, op, raw = m.group(1), m.group(2), m.group(3)
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        value: Any = raw[1:-1]
    else:
        try:
            value = float(raw)
        except ValueError:
            value = raw
    return Condition(column.strip(), op, value, text.strip())


_FUNCS = {">=": "greater_equal", "<=": "less_equal", "==": "equal", "!=": "not_equal", ">": "greater",
          "<": "less"}


def condition_mask(table, cond: Condition, where: str):
    """Boolean pyarrow array of the rows of `table` (read from `where`) that meet `cond`;
    a null cell never does."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if cond.column not in table.column_names:
        raise SelectionError(f"--where {cond.text!r}: {where} has no column {cond.column!r} "
                             f"(columns: {', '.join(table.column_names)})")
    col = table[cond.column]
    numeric = pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
    if numeric and not isinstance(cond.value, float):
        raise SelectionError(f"--where {cond.text!r}: column {cond.column!r} of {where} holds numbers, "
                             f"{cond.value!r} is not one")
    value = cond.value
    if not numeric:
        if isinstance(value, float):  # text column compared with an unquoted number: compare as written
            value = _CONDITION.match(cond.text).group(3)
        col = pc.cast(col, pa.string())
    return pc.fill_null(getattr(pc, _FUNCS[cond.op])(col, pa.scalar(value)), False)


def sample_videos(videos: list[str], n: int, seed: int) -> set[str]:
    """The `n` distinct names with the smallest sha256(f"{seed}:{name}") (all when fewer);
    a tie of the 64-bit hash prefixes is broken by the name."""
    import numpy as np

    if n < 0:
        raise SelectionError(f"--sample {n}: must be >= 0")
    unique = sorted(set(videos))
    if n >= len(unique):
        return set(unique)
    if n == 0:
        return set()
    prefix = f"{seed}:".encode()
    h = np.fromiter((int.from_bytes(hashlib.sha256(prefix + v.encode()).digest()[:8], "big") for v in unique),
                    dtype=np.uint64, count=len(unique))
    cut = np.partition(h, n - 1)[n - 1]
    below = np.flatnonzero(h < cut)
    at = np.flatnonzero(h == cut)[: n - len(below)]  # `unique` is sorted: ties go to the smaller name
    return {unique[i] for i in np.concatenate([below, at])}


def write_subset_file(out: str | Path, videos: list[str], header: str) -> Path:
    """OUT/subset.txt: `header` as `#` comment lines, then one `video` per line (input order);
    `--subset OUT/subset.txt` gives the same clip list again. Written atomically."""
    path = Path(out) / SUBSET_FILE
    tmp = path.with_name(path.name + ".tmp")
    lines = [f"# {line}" for line in header.splitlines()] + list(videos)
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def describe(where: Optional[list[str]], sample: Optional[int], seed: int) -> str:
    """The selection options as a command-line fragment (the header of subset.txt)."""
    parts = [f"--where {c!r}" for c in where or []]
    if sample is not None:
        parts.append(f"--sample {sample} --seed {seed}")
    return " ".join(parts)
