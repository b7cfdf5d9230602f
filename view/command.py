"""The `tsa view` command: one clip's PNG (`--key`) or the HTML gallery of all ok clips."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from tsa.view.maps import ViewError, check_ratios, check_taus, parse_numbers

DEFAULT_RATIOS = (0.2,)
DEFAULT_TAUS = (1.0, 0.1, 0.03)


def _fail(message: str) -> None:
    typer.echo(f"tsa view: error: {message}", err=True)
    raise typer.Exit(1)


def view(
    shards: str = typer.Option(..., "--shards", help="Output folder of `tsa preprocess` (holds dataset.json): a "
                               "path, or s3://bucket/prefix, gs://bucket/prefix (docs/storage.md)."),
    out: Path = typer.Option(..., "--out", help="clip.png with --key, or gallery.html for every ok clip."),
    key: Optional[str] = typer.Option(None, "--key", help="The clip to draw (its __key__, see manifest.parquet)."),
    ratio: Optional[list[str]] = typer.Option(
        None, "--ratio", help="Top-k mask ratio k; repeat or comma-separate for several side by side. (default 0.2)", metavar="K"),
    query: Optional[str] = typer.Option(
        None, "--query", help="Query token f,h,w on the teacher grid (default: the most moving token "
        "of the middle time slot).", metavar="F,H,W"),
    taus: Optional[str] = typer.Option(
        None, "--taus", help="Temperatures of the correspondence rows, comma-separated (default 1.0,0.1,0.03).",
        metavar="T1,T2,..."),
    limit: Optional[int] = typer.Option(
        None, "--limit", min=1, help="Gallery only: the first N ok clips in manifest order (default: all).", metavar="N"),
) -> None:
    """Draw a preprocess output's motion maps, masks and teacher correspondences.

    With --key: one clip as a PNG (preview, motion heat map, masks, correspondences; Fig. 1, 3, 4).

    Without --key: an HTML gallery of every ok clip, sortable by mean motion, and the failed clips.
    """
    from tsa.shards.reader import DataError, NotAnOutput, open_output
    from tsa.shards.storage import StorageError

    try:
        ratios = check_ratios(parse_numbers(ratio, "--ratio", DEFAULT_RATIOS))
        tau_list = check_taus(parse_numbers([taus] if taus else None, "--taus", DEFAULT_TAUS))
        is_html = out.suffix.lower() in {".html", ".htm"}
        if key is None and not is_html:
            raise ViewError(f"--out {out}: give --key KEY to draw one clip, or an .html --out for the gallery")
        if key is not None and is_html:
            raise ViewError(f"--out {out}: --key draws one clip as an image (e.g. --out {key}.png); "
                            f"leave out --key for the gallery")
        if limit is not None and key is not None:
            raise ViewError("--limit applies to the gallery only; leave out --key")
        info = open_output(shards)
        out.parent.mkdir(parents=True, exist_ok=True)
        if key is not None:
            _clip(info, key, out, ratios, tau_list, query)
        else:
            _gallery(info, out, ratios, tau_list, query, limit)
    except (ViewError, NotAnOutput, DataError, StorageError) as e:
        _fail(str(e))
    except KeyError as e:
        _fail(str(e.args[0]) if e.args else "unknown key")


def _clip(info, key: str, out: Path, ratios, taus, query: Optional[str]) -> None:
    from tsa.view.atlas import MaskAtlas
    from tsa.view.clip import build_view, load_clip, teacher_grid
    from tsa.view.render import render_view

    grid = teacher_grid(info)
    if query:  # validate before any read
        from tsa.view.maps import parse_query

        parse_query(query, grid)
    atlas = MaskAtlas.open_if_present(info, grid)
    try:
        clip = load_clip(info, key, atlas)
    finally:
        if atlas is not None:
            atlas.close()
    try:
        render_view(build_view(clip, ratios, taus, query)).save(out)
    except (OSError, ValueError) as e:
        raise ViewError(f"--out {out}: cannot write the image ({e})") from None
    typer.echo(f"wrote {out}")


def _gallery(info, out: Path, ratios, taus, query: Optional[str], limit: Optional[int]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tsa.view.clip import teacher_grid
    from tsa.view.gallery import write_gallery
    from tsa.view.maps import parse_query

    if query:
        parse_query(query, teacher_grid(info))
    columns = [TextColumn("drawing clips"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not sys.stderr.isatty(), transient=True) as bar:
        task = bar.add_task("draw", total=None)

        def tick(i: int, n: int, _key: str) -> None:
            bar.update(task, completed=i, total=n)

        result = write_gallery(info, out, ratios, taus, query, limit, progress=tick)
    for k, reason in result.unreadable:
        typer.echo(f"warning: could not draw {k}: {reason}", err=True)
    typer.echo(f"wrote {result.page} ({result.shown} clips, {result.failed} failed or skipped; "
               f"images in {result.files}/)")
    typer.echo(f"open it in a browser: file://{result.page.resolve()}")
