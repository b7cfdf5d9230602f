"""Run metrics: OUT/metrics.jsonl (one line per optimizer step), TensorBoard, progress bar.

On resume, lines and events after the resumed step are dropped first: those steps are
trained again from the checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"

_console: Optional[Callable[[str], None]] = None  # where rank 0's lines go; None: this process's stderr


def set_console(sink: Optional[Callable[[str], None]]) -> None:
    """Send the run's console lines (steps, notices) to `sink` instead of stderr: on Ray Train
    workers, to the driver, which prints each line once (train/launch.py)."""
    global _console
    _console = sink


def emit(text: str) -> None:
    """One console line of the run (rank 0 only calls it)."""
    if _console is not None:
        _console(text)
    else:
        print(text, file=sys.stderr, flush=True)


def read_metrics(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _readable_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of a metrics file that parse; a line torn by a crash mid-write is dropped
    (its step is trained again after the resume)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf: write them as strings so every line stays valid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    def __init__(self, out: Path, start_step: int, total_steps: int, tensorboard: bool = True,
                 progress: Optional[bool] = None, log_every: int = 1):
        self.out = Path(out)
        self.total, self.log_every = total_steps, max(1, log_every)
        self.path = self.out / METRICS
        kept = [r for r in _readable_lines(self.path) if int(r.get("step", 0)) <= start_step] if start_step else []
        tmp = self.path.with_name(METRICS + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        self._file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / TENSORBOARD), purge_step=start_step + 1 if start_step else None)
        self.bar = _Progress(start_step, total_steps) if (sys.stderr.isatty() if progress is None else progress) \
            else None

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        step = int(record["step"])
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"train/{k}", v, step)
        if self.bar is not None:
            self.bar.update(step, record)
        elif step % self.log_every == 0 or step == self.total:
            self.message(f"step {step}/{self.total}  {_summary(record)}")

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.print(text)
        else:
            emit(text)

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.stop()


def _summary(r: dict[str, Any]) -> str:
    return (f"loss {r['loss']:.4g} (diffusion {r['loss_diffusion']:.4g}, align {r['loss_align']:.4g})  "
            f"{r['samples_per_s']:.2f} samples/s  data wait {100 * r['data_wait_frac']:.0f}%")


class _Progress:
    def __init__(self, start: int, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), console=Console(stderr=True))
        self.task = self.progress.add_task("train", total=total, completed=start, info="")
        self.progress.start()

    def update(self, step: int, r: dict[str, Any]) -> None:
        self.progress.update(self.task, completed=step, info=_summary(r))

    def print(self, text: str) -> None:
        self.progress.console.print(text)

    def stop(self) -> None:
        self.progress.stop()
