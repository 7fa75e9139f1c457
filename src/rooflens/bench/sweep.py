"""The experiments of one `rooflens run`, measured with one executor: which executor, their runners, and what
an interrupted sweep kept.

Importing this module is cheap (no torch): the runner is imported when the runners are built, after every
file and the executor have been checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rooflens.config import Experiment

if TYPE_CHECKING:
    from rooflens.bench.executors import Executor
    from rooflens.bench.runner import ExperimentRunner, RunObserver, RunResult

__all__ = ["Sweep", "SweepError", "choose_executor"]

Loaded = Sequence[tuple[Experiment, str]]
"""Experiments with the file each came from."""


class SweepError(Exception):
    """The sweep cannot start as asked (before anything is measured); the message says why."""


def choose_executor(experiments: Loaded, name: str | None, ray_address: str | None) -> Executor:
    """The one executor of all ``experiments``: ``name`` overrides theirs; SweepError when they name
    different ones, ``ray_address`` is given for another executor, or the executor cannot be used here."""
    from rooflens.bench.executors import EXECUTORS, ExecutorError, make_executor
    from rooflens.text import quote

    if name is not None and name not in EXECUTORS:
        raise SweepError(f"--executor {quote(name)}: allowed {', '.join(EXECUTORS)}")
    named = {exp.executor for exp, _ in experiments}
    if name is None and len(named) > 1:
        which = ", ".join(f"{source}: {exp.executor}" for exp, source in experiments)
        raise SweepError(f"the experiments name different executors ({which}); pick one for all with --executor")
    chosen = name or named.pop()
    if ray_address is not None and chosen != "ray":
        raise SweepError(f"--ray-address applies to executor 'ray' only (this run uses '{chosen}')")
    try:
        return make_executor(chosen, ray_address=ray_address)
    except ExecutorError as err:
        raise SweepError(str(err)) from None


def _with_timeouts(experiments: Loaded, executor: str | None, cell_timeout: float | None) -> Loaded:
    """``cell_timeout`` set on every experiment; one with a timeout and the default executor moves to
    ``subprocess`` (a hung engine can only be stopped in a worker process); SweepError for --executor inline."""
    if cell_timeout is not None and not cell_timeout > 0:
        raise SweepError(f"--cell-timeout {cell_timeout:g}: must be a number of seconds above 0")
    out = []
    for exp, source in experiments:
        if cell_timeout is not None:
            exp = exp.model_copy(update={"cell_timeout_s": cell_timeout})
        if exp.cell_timeout_s is None or (executor or exp.executor) != "inline":
            out.append((exp, source))
            continue
        if executor == "inline" or "executor" in exp.model_fields_set:
            raise SweepError(
                f"{source}: executor 'inline' runs cells in this process, where a hung engine cannot be stopped: "
                "a cell timeout needs executor subprocess or ray"
            )
        exp = exp.model_copy(update={"executor": "subprocess"})
        out.append((exp, source))
    return out


@dataclass
class Sweep:
    """Experiments sharing one executor (under ray one cluster, all groups in flight together; otherwise one
    experiment after another), each with its own results folder."""

    experiments: list[tuple[Experiment, str]]
    executor: Executor
    runners: list[ExperimentRunner] = field(default_factory=list)  # as they are built

    @classmethod
    def plan(
        cls,
        experiments: Loaded,
        executor: str | None = None,
        ray_address: str | None = None,
        cell_timeout: float | None = None,
    ) -> Sweep:
        """The sweep of ``experiments`` with the executor they name, or ``executor`` for all of them;
        ``cell_timeout`` (seconds) overrides their ``cell_timeout_s``."""
        experiments = _with_timeouts(experiments, executor, cell_timeout)
        chosen = choose_executor(experiments, executor, ray_address)
        if executor is not None:
            experiments = [(exp.model_copy(update={"executor": executor}), source) for exp, source in experiments]
        return cls(list(experiments), chosen)

    def build_runners(
        self,
        results_root: Path | None,
        observer: Callable[[Experiment], RunObserver],
        reports: bool = False,
    ) -> Iterator[ExperimentRunner]:
        """Build the runner of each experiment and yield it when it is ready (its device and dtype are known).

        With ``reports``, every reports folder is checked for writing first (OutputError), so that a report
        that cannot be written is refused before the first cell is measured."""
        from rooflens.bench.runner import ExperimentRunner
        from rooflens.results.store import ensure_writable

        if reports:
            for exp, _ in self.experiments:
                ensure_writable(Path(exp.output.reports_dir), "reports folder")
        for exp, source in self.experiments:
            runner = ExperimentRunner(
                exp, source=source, results_root=results_root, observer=observer(exp), executor=self.executor
            )
            self.runners.append(runner)
            yield runner

    def run(self) -> list[RunResult | Exception]:
        """Measure every experiment; per experiment its result, or the error that stopped it alone."""
        from rooflens.bench.runner import run_experiments

        return run_experiments(self.runners, self.executor)

    def interrupted(self) -> str:
        """What an interrupted sweep kept: how many cells of how many, and where their records are."""
        done = sum(len(r.records) for r in self.runners)
        total = sum(r.total_cells for r in self.runners) if len(self.runners) == len(self.experiments) else "?"
        folders = ", ".join(str(r.folder) for r in self.runners if r.records)
        where = f"; their records are in {folders}" if folders else ""
        sweep = "sweep" if len(self.experiments) == 1 else "sweeps"
        return f"interrupted: the {sweep} stopped after {done} of {total} cell(s){where}"
