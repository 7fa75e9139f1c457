"""The ``subprocess`` executor: each group of cells in a fresh worker process, one group at a time.

A fresh process per engine means one engine's crash (a native abort, a segfault, the kernel's
out-of-memory killer) costs only that engine's unfinished cells, and no engine inherits another's
allocator state or threads. Groups run one after another, never two measuring processes at once,
so a worker has the machine's cores to itself (the driver only waits on a pipe meanwhile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rooflens.bench.executors.base import Executor, Results, describe_exit, stderr_tail, worker_died
from rooflens.bench.executors.remote import GroupDriver, References

if TYPE_CHECKING:
    from rooflens.bench.runner import ExperimentRunner

WORKER_MODULE = "rooflens.bench.executors.worker"


class SubprocessExecutor(Executor):
    name = "subprocess"

    def __init__(self, python: str = sys.executable):
        self.python = python

    def run(self, runner: ExperimentRunner, groups: Sequence[Sequence[int]]) -> Results:
        references: References = {}  # the baseline group's tokens, sent to every later group
        for group in groups:
            yield from self._run_group(GroupDriver(runner, group, references))

    def _run_group(self, driver: GroupDriver) -> Results:
        with tempfile.TemporaryDirectory(prefix="rooflens-worker-") as tmp:
            job_path, log_path = Path(tmp) / "job.json", Path(tmp) / "worker.log"
            job_path.write_text(json.dumps(driver.job(self.name, same_machine=True)))
            read_fd, write_fd = os.pipe()
            try:
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(
                        [self.python, "-m", WORKER_MODULE, str(job_path), str(write_fd)],
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
            try:
                with os.fdopen(read_fd, "r", encoding="utf-8") as messages:
                    for line in messages:
                        if not line.endswith("\n"):
                            break  # cut short by the worker's death
                        result = driver.handle(json.loads(line))
                        if result is not None:
                            yield result
                returncode = proc.wait()
            except KeyboardInterrupt:
                _stop(proc)
                driver.interrupted()
                raise
            except BaseException:  # the driver stopped early (GeneratorExit) or a fatal message
                _stop(proc)
                raise
            if returncode != 0 or len(driver.done) < len(driver.group):
                what = describe_exit(returncode) if returncode != 0 else "worker exited before reporting every cell"
                yield from driver.lost(worker_died(what, stderr_tail(log_path)))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
