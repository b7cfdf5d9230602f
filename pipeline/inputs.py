"""The ordered input list of a run: `select_inputs` checks the options once, then reads a local
source (pipeline/sources.py) or a bucket (pipeline/remote_src.py); both give the same Selection."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from tsa.pipeline.remote_src import select_remote_inputs
from tsa.pipeline.sources import ClipItem, Selection, SourceError, select_local_inputs
from tsa.shards.storage import is_url


def select_inputs(src: Optional[str | Path] = None, subset: Optional[str | Path] = None, limit: Optional[int] = None,
                  *, csvs: Optional[list[str | Path]] = None, videos: Optional[str | Path] = None,
                  where: Optional[list[str]] = None, sample: Optional[int] = None,
                  seed: Optional[int] = None) -> Selection:
    """The ordered input list after --subset, --where, --sample and --limit, with unique keys.
    Raises SourceError for anything that is not a per-clip problem (see pipeline/sources.py)."""
    if limit is not None and limit < 0:
        raise SourceError(f"--limit {limit}: must be >= 0")
    if sample is not None and sample < 1:
        raise SourceError(f"--sample {sample}: must be >= 1")
    if seed is not None and sample is None:
        raise SourceError("--seed only applies to --sample N")
    options = dict(csvs=csvs, videos=videos, where=where, sample=sample, seed=seed)
    if src is not None and is_url(str(src)):
        return select_remote_inputs(str(src), subset, limit, **options)
    return select_local_inputs(src, subset, limit, **options)


def list_clips(src: Optional[str | Path] = None, subset: Optional[str | Path] = None, limit: Optional[int] = None,
               **options: Any) -> list[ClipItem]:
    """`select_inputs(...).items`: the ordered input list (options: csvs, videos, where,
    sample, seed)."""
    return select_inputs(src, subset, limit, **options).items
