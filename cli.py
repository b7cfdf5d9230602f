"""`tsa`: the command-line interface. Only commands that work are offered."""
from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(
    name="tsa",
    help="Tempered Self-similarity Alignment: cache teacher features once, then fine-tune "
    "CogVideoX toward the teacher's motion correspondences.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from tsa.shards.dataset_info import tool_version

        typer.echo(f"tsa {tool_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version_: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """tsa: preprocess clips into shards, train with M-TSA, inspect the cache."""


from tsa.evaluate.sample import sample_cmd  # noqa: E402

app.command("sample")(sample_cmd)


from tsa.evaluate.score_cli import score_cmd  # noqa: E402

app.command("score")(score_cmd)


from tsa.view.command import view as view_cmd  # noqa: E402

app.command("view")(view_cmd)


from tsa.pipeline.cli import preprocess  # noqa: E402

app.command("preprocess")(preprocess)


from tsa.train.command import train_command  # noqa: E402

app.command("train")(train_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
