"""The executor interface, and how a worker's death becomes a reason in a record."""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rooflens.results.record import ErrorInfo, Record

if TYPE_CHECKING:
    from rooflens.bench.runner import ExperimentRunner

EXECUTORS = ("inline", "subprocess", "ray")
STDERR_TAIL_BYTES = 2048

Results = Generator[tuple[int, Record], None, None]
"""(cell index, record) pairs, each as soon as its cell ends. Within a group, in cell order; groups that
run at the same time (``ray``, after the baseline's group) interleave, so the index, not the position,
says which cell a record is for."""

Run = tuple["ExperimentRunner", Sequence[Sequence[int]]]
"""One experiment to measure: its runner and its groups (the baseline's first)."""

Outcomes = Generator[tuple[int, "tuple[int, Record] | Exception"], None, None]
"""``(run index, item)``: an item is a ``(cell index, record)`` pair, or the error that stopped that run
(nothing more of that run follows); records of different runs may interleave."""


class ExecutorError(RuntimeError):
    """An executor cannot be used here; the message says what to install or set."""


def run_stopping_errors() -> tuple[type[Exception], ...]:
    """Errors that stop one experiment (the CLI exits 2 for it) but not the others measured beside it."""
    from rooflens.bench.executors.remote import FATAL_ERRORS  # imports torch: not at this module's import

    return (*FATAL_ERRORS.values(), ExecutorError)


class Executor(ABC):
    """Runs groups of cells (each group: the cells of one engine) and yields their records.

    The runner calls :meth:`run` after :meth:`ExperimentRunner.setup`; it writes each record
    and tells its observer. Closing the generator early (an error while writing, Ctrl-C)
    must stop whatever the executor started.
    """

    name: ClassVar[str]

    @abstractmethod
    def run(self, runner: ExperimentRunner, groups: Sequence[Sequence[int]]) -> Results:
        """Measure ``groups`` (indices into the runner's cells), the first (the baseline's) before the others."""

    def run_many(self, runs: Sequence[Run]) -> Outcomes:
        """Measure several experiments with this one executor, setting up each runner before it runs.

        Here one after another, each set up just before its first group: an ``inline`` run's threads and
        environment are the driver process's own, so they must be the current experiment's. An executor
        that can measure experiments at the same time overrides this.
        """
        for k, (runner, groups) in enumerate(runs):
            try:
                runner.setup(self.name)
                results = self.run(runner, groups)
                try:
                    for item in results:
                        yield k, item
                finally:
                    results.close()
            except run_stopping_errors() as err:
                yield k, err


def describe_exit(returncode: int) -> str:
    """``worker killed by signal 6 (SIGABRT)`` or ``worker exited with code 3``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        hint = "; the kernel's out-of-memory killer sends SIGKILL" if -returncode == signal.SIGKILL else ""
        return f"worker killed by signal {-returncode} ({name}){hint}"
    return f"worker exited with code {returncode}"


def stderr_tail(path: Path, limit: int = STDERR_TAIL_BYTES) -> str:
    """The last ``limit`` characters of a worker's log (stderr and stdout), without the list of loaded
    extension modules that Python's faulthandler prints after the stack (kilobytes of it with torch)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 32 * limit))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith("Extension modules:")]
    return "".join(lines)[-limit:]


def worker_died(message: str, tail: str) -> ErrorInfo:
    """The reason recorded for every cell a dead worker had not finished."""
    return ErrorInfo(type="WorkerDied", message=message, traceback=tail or None)
