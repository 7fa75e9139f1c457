"""The progress bar of the long commands (run, train) and the run observer that drives it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rooflens.cli.common import console


def progress_bar(quiet: bool = False) -> Progress:
    """What the command does now, how far, for how long; gone when it is done."""
    return Progress(
        TextColumn("{task.description}", markup=False),  # labels are user text, not markup
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )


class ProgressObserver:
    """One progress row per experiment. It counts finished cells, not cell indices: under ray, groups run
    side by side and their records arrive interleaved."""

    def __init__(self, progress: Progress, name: str = ""):
        self.progress = progress
        self.prefix = f"{name}: " if name else ""
        self.finished = 0
        self.task = progress.add_task(f"{self.prefix}loading", total=None)

    def _say(self, text: str, **fields: Any) -> None:
        self.progress.update(self.task, description=f"{self.prefix}{text}", **fields)

    def model_loading(self, label: str) -> None:
        self._say(f"loading model {label}")

    def note(self, text: str) -> None:
        """Something the run does besides measuring cells (a first probe of the machine): shown and kept."""
        self._say(text)
        self.progress.console.print(f"[dim]{escape(self.prefix + text)}[/]")

    def cell_started(self, index: int, total: int, cell: Any) -> None:
        # a compiled engine compiles for the cell's shape before its warm-up (tens of seconds on a CPU, once per shape)
        first = "compiling, then warm-up" if cell.engine.options.get("compile") else "warm-up"
        self._say(f"{cell.engine.display} {cell.workload.display} b{cell.batch_size}: {first}", total=total)

    def repetition_done(self, cell: Any, measured: int, warmup: bool) -> None:
        phase = "warm-up" if warmup else "rep"
        self._say(f"{cell.engine.display} {cell.workload.display} b{cell.batch_size}: {phase} {measured}")

    def cell_finished(self, index: int, total: int, record: Any, path: Path) -> None:
        self.finished += 1
        cell = record.cell
        self._say(f"{cell.engine_label} {cell.workload} b{cell.batch_size} done", total=total, completed=self.finished)
        if record.status != "ok":
            self.progress.console.print(
                f"[yellow]{escape(f'{self.prefix}{cell.engine_label} b{cell.batch_size}')}: {record.status}[/] - "
                f"{escape((record.reason.message.splitlines() or [record.reason.type])[0])}"
            )
