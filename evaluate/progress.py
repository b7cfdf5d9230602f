"""The progress bar of `tsa sample`: videos done of this run's total, videos/s and ETA over the
run so far (from the first ready worker: pipeline loading is not rendering), workers ready."""
from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.text import Text


def _rate(task) -> Optional[float]:
    elapsed = task.elapsed or 0.0
    return task.completed / elapsed if elapsed > 0 and task.completed else None


class RateColumn(ProgressColumn):
    """Videos per second since the first worker was ready (steady for videos of minutes each)."""

    def render(self, task) -> Text:
        rate = _rate(task)
        return Text(f"{rate:.3g} videos/s" if rate else "-- videos/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Remaining videos at the run's rate so far."""

    def render(self, task) -> Text:
        rate = _rate(task)
        if not rate or task.total is None:
            return Text("eta --:--", style="progress.remaining")
        seconds = int(round((task.total - task.completed) / rate))
        h, rest = divmod(seconds, 3600)
        return Text(f"eta {h}:{rest // 60:02d}:{rest % 60:02d}", style="progress.remaining")


class SampleBar:
    """`with SampleBar(console, enabled) as bar:` then start(total, workers), ready(), advance()."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console = console
        self.progress = Progress(TextColumn("[bold]sample"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                                 EtaColumn(), TextColumn("{task.fields[status]}"), console=console,
                                 disable=not enabled, transient=False)
        self.task = None
        self.workers = 0
        self.ready_workers = 0

    def __enter__(self) -> "SampleBar":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start(self, total: int, workers: int) -> None:
        self.workers = workers
        self.task = self.progress.add_task("videos", total=total, start=False,
                                           status=f"loading the pipeline (0/{workers} workers ready)")

    def ready(self) -> None:
        self.ready_workers += 1
        if self.task is None:
            return
        if self.ready_workers == 1:
            self.progress.start_task(self.task)
        self.progress.update(self.task, status=f"{self.ready_workers}/{self.workers} workers ready")

    def advance(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, advance=1)

    def print(self, line: str) -> None:
        self.console.print(line, soft_wrap=True, highlight=False, markup=False)
