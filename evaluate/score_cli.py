"""The `tsa score` command.

    tsa score DIR --sa SA.csv --pc PC.csv      VideoPhy / VideoPhy2: print the table, write DIR/scores.json
    tsa score DIR --vbench RESULTS.json ...    VBench (files, or folders of *_eval_results.json)
    tsa score DIR                              print the table of an already scored DIR
    tsa score DIR_A DIR_B ... [--out CMP]      scored runs side by side with paired differences to
                                               DIR_A; --out writes comparison.md/.csv/.png

Exit 2 with one line on stderr for any bad input; nothing is written then.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tsa.evaluate import bootstrap
from tsa.evaluate.samples_log import SamplesError
from tsa.evaluate.score import SCORES_FILE, ScoreInputs, score_folder, write_scores
from tsa.evaluate.score_files import ScoreFileError
from tsa.evaluate.tables import comparison_table, label, paper_table

ERRORS = (ScoreFileError, SamplesError)


def score_cmd(
    dirs: list[Path] = typer.Argument(..., help="A `tsa sample` output folder to score, or several scored ones "
                                      "to compare (the first is the reference)."),
    sa: Optional[Path] = typer.Option(None, "--sa", help="Semantic adherence scores: VideoCon-Physics' output "
                                      "(VideoPhy) or VideoPhy-2-AutoEval's with --task sa (VideoPhy2)."),
    pc: Optional[Path] = typer.Option(None, "--pc", help="Physical commonsense scores, as --sa."),
    vbench: Optional[list[Path]] = typer.Option(None, "--vbench", help="VBench evaluation results JSON (repeatable; "
                                                "or a folder of *_eval_results.json)."),
    out: Optional[Path] = typer.Option(None, "--out", help="With several DIRs: write comparison.md, comparison.csv "
                                       "and comparison.png here."),
    replicates: int = typer.Option(bootstrap.REPLICATES, "--replicates", help="Bootstrap replicates."),
) -> None:
    """Score a sample folder from the official evaluators' files, or compare scored folders."""
    try:
        if replicates < 100:
            raise ScoreFileError(f"--replicates {replicates}: use at least 100 (10000 by default)")
        if len(dirs) == 1:
            _one(dirs[0], ScoreInputs(sa, pc, list(vbench or [])), replicates)
        else:
            if sa or pc or vbench:
                raise ScoreFileError("--sa/--pc/--vbench score one folder; score each run on its own, then compare "
                                     "them: tsa score DIR_A DIR_B ...")
            _compare(dirs, out, replicates)
    except ERRORS as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _one(folder: Path, inputs: ScoreInputs, replicates: int) -> None:
    if inputs.sa is None and inputs.pc is None and not inputs.vbench:
        path = folder / SCORES_FILE
        if not path.is_file():
            raise ScoreFileError(f"{path}: not scored yet; give --sa and --pc (VideoPhy, VideoPhy2) or --vbench")
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            typer.echo(paper_table(result))
        except (ValueError, KeyError, TypeError) as e:
            raise ScoreFileError(f"{path}: not a tsa scores.json ({type(e).__name__}: {e})") from None
        return
    result, notes = score_folder(folder, inputs, replicates)
    written = write_scores(folder, result)
    typer.echo(paper_table(result))
    for note in notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote {written}")


def _compare(dirs: list[Path], out: Optional[Path], replicates: int) -> None:
    from tsa.evaluate.chart import bar_chart
    from tsa.evaluate.compare import comparison_csv, comparison_rows, load_runs, write_comparison

    runs = load_runs(dirs)
    rows, units = comparison_rows(runs, replicates)
    labels = [r.label for r in runs]
    markdown = comparison_table(rows, labels) + (
        f"\n\n95 % bootstrap intervals over {units} prompts ({replicates} replicates, the same draws for every run); "
        f"differences to {labels[0]} are paired on the same prompts and seeds; \"prompts for ±1\": prompts a "
        f"95 % interval of ±1 point on that difference would need.\n")
    typer.echo(markdown, nl=False)
    if out is not None:
        png = bar_chart(rows, labels, label)
        for path in write_comparison(out, markdown, comparison_csv(rows), png):
            typer.echo(f"wrote {path}")
