"""The worker's side: measure one group of cells and report back as messages.

``python -m rooflens.bench.executors.worker JOB.json FD`` reads the job (see
:mod:`rooflens.bench.executors.remote`) and writes one JSON message per line to file descriptor
FD. A Ray task calls :func:`run_job` directly. Messages (``event``):

- ``ready``: the worker's environment (it is in every record it measures);
- ``loading``, ``started``, ``rep``: progress, for the driver's observer;
- ``record``: a finished cell (index, record, and for the baseline its greedy tokens);
- ``fatal``: an error that stops the whole run (a prompt longer than the context, a model that
  cannot be loaded).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from rooflens.bench.executors.remote import FATAL_ERRORS
from rooflens.bench.runner import Cell, ExperimentRunner, expand_cells
from rooflens.config import Experiment
from rooflens.models.loader import TORCH_DTYPES, DtypeChoice
from rooflens.results.record import Record

Emit = Callable[[dict[str, Any]], None]


class _EmitObserver:
    """Forwards the runner's progress to the driver."""

    def __init__(self, emit: Emit):
        self.emit = emit
        self._index = -1  # the cell in progress

    def model_loading(self, label: str) -> None:
        self.emit({"event": "loading", "label": label})

    def note(self, text: str) -> None:
        self.emit({"event": "note", "text": text})

    def cell_started(self, index: int, total: int, cell: Cell) -> None:
        self.emit({"event": "started", "index": index})
        self._index = index

    def repetition_done(self, cell: Cell, measured: int, warmup: bool) -> None:
        self.emit({"event": "rep", "index": self._index, "measured": measured, "warmup": warmup})

    def cell_finished(self, index: int, total: int, record: Record, path: Path) -> None: ...


def run_job(
    job: dict[str, Any], emit: Emit = lambda msg: None, placement: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Measure the job's group in this process. Progress goes to ``emit`` as it happens; the
    ``ready``, ``record`` and ``fatal`` messages are yielded, each as soon as it exists.
    ``placement`` adds to the records' ``environment.placement`` where the process runs (a Ray node, its GPUs)."""
    exp = Experiment.model_validate(job["experiment"])
    dtype = job.get("dtype")
    runner = ExperimentRunner(
        exp,
        source=job["source"],
        results_root=Path(job["results_root"]),
        observer=_EmitObserver(emit),
        run_id=job["run_id"],
        dtype_choice=DtypeChoice(TORCH_DTYPES[dtype["name"]], dtype["reason"]) if dtype else None,
    )
    for key, tokens in job["references"].items():
        wi, b = (int(x) for x in key.split(":"))
        runner._reference_tokens[(wi, b)] = torch.tensor(tokens, dtype=torch.long)
    runner.setup(job["executor"])
    runner.env["placement"].update(placement or {})
    yield {"event": "ready", "environment": runner.env}
    cells = expand_cells(exp)
    try:
        for i, record in runner.measure_groups([job["group"]]):
            cell = cells[i]
            ref = runner._reference_tokens.get((cell.workload_index, cell.batch_size))
            is_baseline = cell.engine.display == exp.baseline_label
            yield {
                "event": "record",
                "index": i,
                "record": record.model_dump(mode="json"),
                "reference": ref.tolist() if is_baseline and ref is not None else None,
            }
    except tuple(FATAL_ERRORS.values()) as err:
        yield {"event": "fatal", "type": type(err).__name__, "message": str(err)}


def main(argv: list[str] | None = None) -> int:
    job_path, fd = (argv if argv is not None else sys.argv[1:])[:2]
    # Ctrl-C reaches the whole process group: the driver stops the worker and records the interruption
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()  # a crash in native code leaves the Python stack in the stderr tail
    job = json.loads(Path(job_path).read_text())
    with os.fdopen(int(fd), "w", encoding="utf-8") as out:

        def send(msg: dict[str, Any]) -> None:
            out.write(json.dumps(msg) + "\n")
            out.flush()

        for msg in run_job(job, send):
            send(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
