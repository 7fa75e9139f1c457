"""The ``inline`` executor: every job in the driver's own process (rooflens's original behaviour)."""

from __future__ import annotations

from collections.abc import Sequence

from rooflens.bench.executors.base import Executor, Relay, RunJobs, one_by_one
from rooflens.bench.job import MeasureFn


class InlineExecutor(Executor):
    name = "inline"

    def run(self, runs: Sequence[RunJobs], measure: MeasureFn, emit: Relay) -> None:
        for run in runs:
            for job in one_by_one(run):
                measure(job, lambda event, job=job: emit(job, event))
