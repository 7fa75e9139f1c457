"""Several experiments through one executor (``rooflens run a.yaml b.yaml``): one Ray cluster for all.

Each experiment keeps its own runner, run id and results folder; the driver writes every record
into its own experiment's folder as it arrives. Under ``ray`` the experiments' groups are in
flight together, so their records interleave; under ``inline``/``subprocess`` the experiments run
one after another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rooflens.results.store import ensure_writable

if TYPE_CHECKING:
    from rooflens.bench.executors.base import Executor
    from rooflens.bench.runner import ExperimentRunner, RunResult


def run_experiments(runners: Sequence[ExperimentRunner], executor: Executor) -> list[RunResult | Exception]:
    """Measure every runner's experiment with ``executor``; per runner, its result or the error that stopped it.

    A run-stopping error of one experiment (a prompt longer than the context, a model that cannot be
    loaded, resources no node has) stops that experiment only. Every results folder is checked before
    anything is measured; an error writing a record, Ctrl-C or a bug stops them all (records already
    written stay).
    """
    from rooflens.bench.runner import RunResult, cell_groups, expand_cells

    for runner in runners:
        ensure_writable(runner.folder, "results folder")
    stopped: dict[int, Exception] = {}
    outcomes = executor.run_many([(r, cell_groups(expand_cells(r.exp))) for r in runners])
    try:
        for k, item in outcomes:
            if isinstance(item, Exception):
                stopped[k] = item
            else:
                runners[k].keep(*item)
    finally:
        outcomes.close()  # an executor stops its workers when the driver stops early
        for runner in runners:
            if not runner.records:  # no empty run folder behind a run that wrote nothing
                with contextlib.suppress(OSError):
                    runner.folder.rmdir()
    return [stopped.get(k) or RunResult(r.run_id, r.folder, r.records) for k, r in enumerate(runners)]
