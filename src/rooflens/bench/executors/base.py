"""The executor interface, and how a worker's death becomes a reason in a record."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Protocol

from rooflens.bench.job import Event, GroupJob, Loading, MeasureFn, Rep, Started
from rooflens.results.record import ErrorInfo

EXECUTORS = ("inline", "subprocess", "ray")
STDERR_TAIL_BYTES = 2048

Relay = Callable[[GroupJob, Event], None]
"""The driver's end: every event of a job, with the job it is about."""


class ExecutorError(RuntimeError):
    """An executor cannot be used here; the message says what to install or set."""


class RunJobs(Protocol):
    """One experiment's jobs, as the driver hands them to an executor."""

    def stages(self) -> Iterator[list[GroupJob]]:
        """The jobs, stage by stage; ask for the next stage only once every job of this one has ended (the
        baseline's group comes first: the later groups carry its greedy tokens). None once the run stopped."""
        ...

    @property
    def stopped(self) -> bool:
        """The run has stopped (an error that stops it, see :meth:`stop`): start none of its jobs, end those running."""
        ...

    def stop(self, error: Exception) -> None:
        """Stop the run for ``error`` (a request this executor cannot meet); the driver reports it for this run."""
        ...


def one_by_one(run: RunJobs) -> Iterator[GroupJob]:
    """A run's jobs in order, for an executor that measures one job at a time; none after the run stopped."""
    for stage in run.stages():
        for job in stage:
            if run.stopped:
                return
            yield job


class Executor(ABC):
    """Measures jobs with the function it is handed, where its name says; the driver writes the records."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, runs: Sequence[RunJobs], measure: MeasureFn, emit: Relay) -> None:
        """Measure every job of ``runs`` with ``measure``, relaying each event to ``emit`` as it comes, and an
        :class:`~rooflens.bench.job.Ended` when a job's process has ended. An exception (Ctrl-C, an error of the
        driver's while it writes a record) stops whatever the executor started, then propagates."""


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


PREPARE_S = 900.0  # silence allowed while a worker loads a model or prepares an engine (training predictors)
STALL_FLOOR_S, STALL_FACTOR = 120.0, 10.0  # then: 120 s + 10x its slowest repetition so far


class Watch:
    """How long a worker may stay silent before its job is stopped as hung.

    Until the worker starts its first cell (interpreter, imports, the model's loading): 900 s. Then ``limit``
    (the experiment's ``cell_timeout_s``) if set; else 900 s from a cell's start until its next repetition
    (preparing an engine, training its predictors), then 120 s plus 10x the slowest repetition seen so far:
    a stuck engine is found within minutes, a slow one is not cut short.
    """

    def __init__(self, limit: float | None = None):
        self.limit = limit
        self.last = self.mark = time.monotonic()
        self.slowest: float | None = None
        self.preparing = True
        self.cell: int | None = None  # the cell in progress, once one started

    def saw(self, event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, (Loading, Started)):
            self.preparing, self.mark = True, now
            if isinstance(event, Started):
                self.cell = event.index
        elif isinstance(event, Rep):
            if not self.preparing:  # the first repetition after a start also holds the preparation
                self.slowest = max(self.slowest or 0.0, now - self.mark)
            self.preparing, self.cell, self.mark = False, event.index, now
        self.last = now

    @property
    def allowed(self) -> float:
        if self.cell is None:
            return max(PREPARE_S, self.limit or 0.0)
        if self.limit is not None:
            return self.limit
        if self.preparing or self.slowest is None:
            return PREPARE_S
        return STALL_FLOOR_S + STALL_FACTOR * self.slowest

    def remaining(self) -> float:
        return self.allowed - (time.monotonic() - self.last)

    def reason(self) -> ErrorInfo:
        where = f" (cell {self.cell})" if self.cell is not None else ""
        how = (
            "cell_timeout_s"
            if self.limit is not None
            else "default: 900 s to prepare, then 120 s + 10x the slowest repetition"
        )
        return ErrorInfo(
            type="Timeout",
            message=f"timeout after {self.allowed:.0f} s without progress{where}: the worker was stopped ({how})",
        )


class Silent(Exception):
    """A worker stayed silent longer than its :class:`Watch` allows."""


def watched_lines(fd: int, watch: Watch) -> Iterator[str]:
    """A worker's complete lines from pipe ``fd`` until it closes it (a line cut short by its death is
    dropped); :class:`Silent` when none comes for longer than ``watch`` allows (the caller tells the watch
    what each line was)."""
    pending = b""
    while True:
        wait = watch.remaining()
        if wait <= 0:
            raise Silent()
        if not select.select([fd], [], [], wait)[0]:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line.decode("utf-8")


def die_with_parent() -> None:
    """Ask Linux to kill this worker when the process that started it dies (a driver killed by a scheduler
    must not leave a worker holding the machine, its memory or a GPU). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)
