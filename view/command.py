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
    sample: Optional[int] = typer.Option(
        None, "--sample", min=1, help="Gallery only: N ok clips drawn at random (the same N for the same --seed).",
        metavar="N"),
    seed: int = typer.Option(0, "--seed", help="Seed of --sample."),
    top: Optional[int] = typer.Option(
        None, "--top", min=1, help="Gallery only: the N ok clips with the highest mean motion.", metavar="N"),
    bottom: Optional[int] = typer.Option(
        None, "--bottom", min=1, help="Gallery only: the N ok clips with the lowest mean motion (with --top: both).",
        metavar="N"),
    page_size: int = typer.Option(200, "--page-size", min=1, help="Gallery only: clips a page.", metavar="N"),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Gallery only: processes drawing clips (default: the CPUs this process may use, one per 16 "
        "clips at most; 1 draws in this process).",
        metavar="N"),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Gallery only: draw clips as Ray tasks on this cluster (`auto`, HOST:PORT or "
        "`local`) instead of local processes; --shards must be readable from every node."),
) -> None:
    """Draw a preprocess output's motion maps, masks and teacher correspondences.

    With --key: one clip as a PNG (preview, motion heat map, masks, correspondences; Fig. 1, 3, 4).

    Without --key: an HTML gallery of every ok clip (or --limit, --sample, --top/--bottom of
    them), in pages sorted by manifest order or mean motion, and the failed clips.
    """
    from tsa.shards.reader import DataError, NotAnOutput, NotUsable, open_output
    from tsa.shards.storage import StorageError
    from tsa.view.gallery import Selection

    try:
        ratios = check_ratios(parse_numbers(ratio, "--ratio", DEFAULT_RATIOS))
        tau_list = check_taus(parse_numbers([taus] if taus else None, "--taus", DEFAULT_TAUS))
        is_html = out.suffix.lower() in {".html", ".htm"}
        if key is None and not is_html:
            raise ViewError(f"--out {out}: give --key KEY to draw one clip, or an .html --out for the gallery")
        if key is not None and is_html:
            raise ViewError(f"--out {out}: --key draws one clip as an image (e.g. --out {key}.png); "
                            f"leave out --key for the gallery")
        gallery_only = {"--limit": limit, "--sample": sample, "--top": top, "--bottom": bottom,
                        "--workers": workers, "--ray-address": ray_address}
        given = [name for name, v in gallery_only.items() if v is not None]
        if given and key is not None:
            raise ViewError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to the gallery only; "
                            f"leave out --key")
        selection = Selection(limit=limit, sample=sample, seed=seed, top=top, bottom=bottom)
        selection.check()
        info = open_output(shards)
        info.check_usable()  # the trainer's up-front check: dataset.json, and no truncated shard
        out.parent.mkdir(parents=True, exist_ok=True)
        if key is not None:
            _clip(info, key, out, ratios, tau_list, query)
        else:
            _gallery(info, out, ratios, tau_list, query, selection, page_size,
                     workers or 0, ray_address)
    except (ViewError, NotAnOutput, NotUsable, DataError, StorageError) as e:
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


def _gallery(info, out: Path, ratios, taus, query: Optional[str], selection, page_size: int, workers: int,
             ray_address: Optional[str]) -> None:
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

        result = write_gallery(info, out, ratios, taus, query, progress=tick, selection=selection,
                               page_size=page_size, workers=workers, ray_address=ray_address)
    for k, reason in result.unreadable[:20]:
        typer.echo(f"warning: could not draw {k}: {reason}", err=True)
    if len(result.unreadable) > 20:
        typer.echo(f"warning: {len(result.unreadable) - 20} more clips could not be drawn (listed on the page)",
                   err=True)
    pages = f", {result.pages} pages of up to {page_size} in each order" if result.pages > 1 else ""
    of = f" of {result.candidates} ok" if result.shown != result.candidates else ""
    typer.echo(f"wrote {result.page} ({result.shown} clips{of}{pages}, {result.failed} failed or skipped; "
               f"images in {result.files}/)")
    typer.echo(f"open it in a browser: file://{result.page.resolve()}")
