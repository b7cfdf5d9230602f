"""Prompt sets for `tsa sample`: a `.txt` (one prompt a line) or a CSV with a text column.

VideoPhy and VideoPhy2 publish their prompts as CSV files (`caption`, and for VideoPhy2 the
official `upsampled_caption`). The model may be prompted with one column (the upsampled text)
while the evaluators judge semantic adherence against the short `caption`, so each prompt
keeps both.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DEFAULT_COLUMNS = ("caption", "prompt")  # tried in this order when --column is not given


class PromptError(ValueError):
    """A prompt file is missing, empty or lacks the asked-for column; the message names it."""


@dataclass(frozen=True)
class Prompt:
    index: int  # 0-based position in the file (data row for a CSV, non-empty line for a .txt)
    text: str  # what the model is prompted with
    caption: str  # what an evaluator compares the video with (the short caption where known)
    category: Optional[str] = None  # a benchmark's split of its prompts (VideoPhy's states_of_matter,
    # VBench's space-separated dimensions), None for other prompt sets


def _pick_column(path: Path, header: list[str], wanted: Optional[str], role: str) -> Optional[str]:
    if wanted is not None:
        if wanted not in header:
            raise PromptError(f"{path}: no column {wanted!r} for the {role} (columns: {', '.join(header)})")
        return wanted
    return next((c for c in DEFAULT_COLUMNS if c in header), None)


def _read_csv(path: Path, column: Optional[str], caption_column: Optional[str],
              category_column: Optional[str] = None) -> list[Prompt]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h for h in (reader.fieldnames or []) if h is not None]
        if not header:
            raise PromptError(f"{path}: empty CSV (no header row)")
        text_col = _pick_column(path, header, column, "prompt text")
        if text_col is None:
            raise PromptError(f"{path}: no 'caption' or 'prompt' column (columns: {', '.join(header)}); "
                              f"choose one with --column")
        cap_col = _pick_column(path, header, caption_column, "caption") or text_col
        if category_column is not None and category_column not in header:
            raise PromptError(f"{path}: no column {category_column!r} for the category "
                              f"(columns: {', '.join(header)})")
        prompts = []
        for i, row in enumerate(reader):
            text = (row.get(text_col) or "").strip()
            if not text:
                # Row i is line i + 2 of the file (1-based, after the header) unless fields span lines.
                raise PromptError(f"{path}: data row {i} has an empty {text_col!r}")
            caption = (row.get(cap_col) or "").strip() or text
            category = ((row.get(category_column) or "").strip() or None) if category_column else None
            prompts.append(Prompt(i, text, caption, category))
    return prompts


def _read_txt(path: Path) -> list[Prompt]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    return [Prompt(i, text, text) for i, text in enumerate(line for line in lines if line)]


def read_prompts(path: str | Path, column: Optional[str] = None, caption_column: Optional[str] = None,
                 limit: Optional[int] = None, category_column: Optional[str] = None) -> list[Prompt]:
    """Read prompts from `path` (.txt or .csv), the first `limit` of them if given.

    CSV: the prompt text comes from `column` (default: `caption`, else `prompt`), the caption
    from `caption_column` (default: `caption`, else `prompt`, else the prompt text), the
    category from `category_column` if given.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        prompts = _read_csv(path, column, caption_column, category_column)
    elif suffix == ".txt":
        if column is not None or caption_column is not None or category_column is not None:
            raise PromptError(f"{path}: --column/--caption-column apply to CSV files only")
        prompts = _read_txt(path)
    else:
        raise PromptError(f"{path}: expected a .txt (one prompt a line) or a .csv file")
    if not prompts:
        raise PromptError(f"{path}: holds no prompts")
    if limit is not None:
        if limit < 1:
            raise PromptError(f"--limit {limit}: must be >= 1")
        prompts = prompts[:limit]
    return prompts
