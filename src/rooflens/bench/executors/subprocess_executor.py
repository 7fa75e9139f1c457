"""The ``subprocess`` executor: each job in a fresh worker process, one job at a time.

A fresh process per job means a crash (a native abort, a segfault, the kernel's out-of-memory killer)
costs only that job's unfinished cells: one engine's under ``schedule: blocks`` (one job per engine, and
no engine inherits another's allocator state or threads), every engine's unfinished cells under
``schedule: interleaved`` (one job measures them all, side by side). Jobs run one after another, never two measuring processes at once,
so a worker has the machine's cores to itself (the driver only waits on a pipe meanwhile). A worker silent
for longer than its :class:`~rooflens.bench.executors.base.Watch` allows (a hung engine) is killed: its
unfinished cells fail with ``timeout after N s`` and the next job starts. A worker dies with the driver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rooflens.bench.executors.base import (
    Executor,
    ExecutorError,
    Relay,
    RunJobs,
    Silent,
    Watch,
    describe_exit,
    one_by_one,
    stderr_tail,
    watched_lines,
    worker_died,
)
from rooflens.bench.job import Ended, GroupJob, MeasureFn, decode_event

BOOT = (
    "import sys; del sys.path[0]; "  # '' (the working directory), which ``python -c`` puts first
    "from rooflens.bench.executors.subprocess_worker import main; sys.exit(main(sys.argv[1:]))"
)
"""What a worker runs (``python -c BOOT TARGET JOB FD``). Never ``python -m``: that puts the working directory
first on the path, so a planted ``json.py`` (or ``rooflens/``) where a user runs an experiment would run in
every worker. PYTHONPATH and installed plug-ins still count: they are the user's own way to add engines."""


def function_name(fn: MeasureFn) -> str:
    """``module:name`` of a module-level function, which a worker process imports to call it."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or not name.isidentifier():
        raise ExecutorError(f"executor 'subprocess' calls a module-level function in its workers, not {fn!r}")
    return f"{module}:{name}"


class SubprocessExecutor(Executor):
    name = "subprocess"

    def __init__(self, python: str = sys.executable):
        self.python = python

    def run(self, runs: Sequence[RunJobs], measure: MeasureFn, emit: Relay) -> None:
        target = function_name(measure)
        for run in runs:
            for job in one_by_one(run):
                self._run_job(job, target, run, emit)

    def _run_job(self, job: GroupJob, target: str, run: RunJobs, emit: Relay) -> None:
        with tempfile.TemporaryDirectory(prefix="rooflens-worker-") as tmp:
            job_path, log_path = Path(tmp) / "job.json", Path(tmp) / "worker.log"
            job_path.write_text(job.model_dump_json())
            read_fd, write_fd = os.pipe()
            try:
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(
                        [self.python, "-c", BOOT, target, str(job_path), str(write_fd)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        pass_fds=(write_fd,),
                    )
            except BaseException:
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)  # the worker holds the only write end: EOF when it exits
            watch = Watch(job.experiment.cell_timeout_s)
            try:
                for line in watched_lines(read_fd, watch):
                    event = decode_event(line)
                    watch.saw(event)
                    emit(job, event)
                    if run.stopped:
                        break  # an error that stops the run: its worker goes with it
                if run.stopped:
                    _stop(proc)
                    return
                returncode = proc.wait()
            except Silent:
                _stop(proc)
                emit(job, Ended(reason=watch.reason()))
                return
            except BaseException:  # Ctrl-C, SIGTERM, or the driver could not write a record
                _stop(proc)
                raise
            finally:
                os.close(read_fd)
            what = describe_exit(returncode) if returncode != 0 else "worker exited before reporting every cell"
            emit(job, Ended(reason=worker_died(what, stderr_tail(log_path))))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
