"""Records grouped by the run that made them, and the run a comparison takes from a folder of several.

A comparison compares runs, not folders: records of different runs are never mixed into one side, so a
crashed latest run is not silently filled in by older records. From a folder holding several runs of
one experiment, the newest *complete* run is taken (every cell of its experiment has a record, of any
status) and the choice is said.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from rooflens.results.record import Record


@dataclass(frozen=True)
class Run:
    experiment: str
    run_id: str
    records: list[Record]
    expected: int | None  # cells its experiment has (None: the records do not say)

    @property
    def started(self) -> str:
        return min(r.started_at for r in self.records)

    @property
    def complete(self) -> bool:
        cells = {(r.cell.engine_label, r.cell.workload, r.cell.batch_size) for r in self.records}
        return self.expected is None or len(cells) >= self.expected


def expected_cells(r: Record) -> int | None:
    """How many cells the record's experiment has (engines x batch sizes of every workload)."""
    config = r.experiment.get("config") or {}
    engines, workloads = config.get("engines"), config.get("workloads")
    if not engines or not workloads:
        return None
    return len(engines) * sum(len(w.get("batch_sizes") or [1]) for w in workloads)


def runs_of(records: list[Record]) -> list[Run]:
    """The runs the records belong to, oldest first."""
    by_run: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        by_run[(str(r.experiment.get("name")), str(r.experiment.get("run_id")))].append(r)
    runs = [Run(name, run_id, rs, expected_cells(rs[0])) for (name, run_id), rs in by_run.items()]
    return sorted(runs, key=lambda run: run.started)


def newest_complete_runs(records: list[Record], side: str) -> tuple[list[Record], list[str]]:
    """Per experiment, the records of its newest complete run (else its newest run), and what was chosen."""
    by_experiment: dict[str, list[Run]] = defaultdict(list)
    for run in runs_of(records):
        by_experiment[run.experiment].append(run)
    chosen: list[Record] = []
    notes = []
    for name, runs in by_experiment.items():
        complete = [run for run in runs if run.complete]
        run = (complete or runs)[-1]
        chosen += run.records
        if len(runs) > 1 or not run.complete:
            what = "the newest complete one" if run.complete else "the newest; none is complete"
            notes.append(f"{side}: {len(runs)} run(s) of {name}; using {run.run_id} ({what})")
    return chosen, notes
