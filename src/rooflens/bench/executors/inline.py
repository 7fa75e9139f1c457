"""The ``inline`` executor: every group in the driver's own process (rooflens's original behaviour)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rooflens.bench.executors.base import Executor, Results

if TYPE_CHECKING:
    from rooflens.bench.runner import ExperimentRunner


class InlineExecutor(Executor):
    name = "inline"

    def run(self, runner: ExperimentRunner, groups: Sequence[Sequence[int]]) -> Results:
        yield from runner.measure_groups(groups)
