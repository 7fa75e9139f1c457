"""The worker process of the ``subprocess`` executor: measures one job and reports back.

``python -c BOOT MODULE:FUNCTION JOB.json FD`` (:data:`~rooflens.bench.executors.subprocess_executor.BOOT`) reads the job
(a :class:`~rooflens.bench.job.GroupJob` as JSON), calls the measuring function with it, and writes
each event it emits as one line of JSON to file descriptor FD, as it happens.
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import signal
import sys
from pathlib import Path

from rooflens.bench.executors.base import die_with_parent
from rooflens.bench.job import GroupJob, MeasureFn, encode_event


def import_function(target: str) -> MeasureFn:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    target, job_path, fd = (argv if argv is not None else sys.argv[1:])[:3]
    # Ctrl-C reaches the whole process group: the driver stops the worker and records the interruption
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()  # a driver killed outright (SIGKILL, a scheduler) takes its worker with it
    faulthandler.enable()  # a crash in native code leaves the Python stack in the stderr tail
    measure = import_function(target)
    job = GroupJob.model_validate_json(Path(job_path).read_text())
    with os.fdopen(int(fd), "w", encoding="utf-8") as out:

        def send(event) -> None:
            out.write(encode_event(event) + "\n")
            out.flush()

        measure(job, send)
    return 0


if __name__ == "__main__":
    sys.exit(main())
