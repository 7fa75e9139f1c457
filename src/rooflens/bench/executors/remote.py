"""The driver's side of a group measured in another process: the job it sends, the messages it reads back.

A job is plain JSON: the experiment's dump, the run's identity, the group's cell indices and the
baseline's greedy tokens measured so far (for agreement and ROUGE-L across groups). The worker
answers with messages (see :mod:`rooflens.bench.executors.worker`); the driver keeps each new
baseline reference for the groups that follow.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rooflens.bench.preflight import PreflightError
from rooflens.models.loader import ModelLoadError, dtype_name
from rooflens.results.record import ErrorInfo, Record
from rooflens.results.store import write_record

if TYPE_CHECKING:
    from rooflens.bench.runner import ExperimentRunner

# errors that stop a whole run (the CLI exits 2), raised again in the driver
FATAL_ERRORS: dict[str, type[Exception]] = {"PreflightError": PreflightError, "ModelLoadError": ModelLoadError}

References = dict[str, list[list[int]]]
"""The baseline's greedy tokens by ``"<workload index>:<batch size>"``."""


def reference_key(workload_index: int, batch_size: int) -> str:
    return f"{workload_index}:{batch_size}"


class GroupDriver:
    """Follows one group measured elsewhere: relays progress to the runner's observer, turns record
    messages into records, keeps baseline references, and accounts for the cells never reported."""

    def __init__(self, runner: ExperimentRunner, group: Sequence[int], references: References):
        from rooflens.bench.runner import expand_cells

        self.runner = runner
        self.group = list(group)
        self.references = references
        self.cells = expand_cells(runner.exp)
        self.done: set[int] = set()
        self.started: int | None = None
        self.environment: dict[str, Any] | None = None  # the worker's, once it has said so
        self.model: Any = None  # the model info of the group's records, once there is one

    def job(self, executor: str, *, same_machine: bool) -> dict[str, Any]:
        """What the worker needs. On the driver's own machine it reuses the driver's dtype choice
        (``dtype: auto`` may time a matmul to decide); elsewhere the worker decides for its device."""
        r = self.runner
        job: dict[str, Any] = {
            "executor": executor,
            "experiment": r.exp.model_dump(mode="json"),
            "source": r.source,
            "run_id": r.run_id,
            "results_root": str(r.folder.parent.parent),
            "group": self.group,
            "references": self.references,
        }
        if same_machine:
            job["dtype"] = {"name": dtype_name(r.dtype_choice.dtype), "reason": r.dtype_choice.reason}
        return job

    def handle(self, msg: dict[str, Any]) -> tuple[int, Record] | None:
        """Act on one message; a record message returns ``(index, record)``; a fatal one raises."""
        obs, total = self.runner.observer, len(self.cells)
        kind = msg.get("event")
        if kind == "loading":
            obs.model_loading(msg["label"])
        elif kind == "note":
            obs.note(msg["text"])
        elif kind == "ready":
            self.environment = msg["environment"]
        elif kind == "started":
            self.started = msg["index"]
            obs.cell_started(msg["index"], total, self.cells[msg["index"]])
        elif kind == "rep":
            obs.repetition_done(self.cells[msg["index"]], msg["measured"], msg["warmup"])
        elif kind == "record":
            i = msg["index"]
            record = Record.model_validate(msg["record"])
            cell = self.cells[i]
            if msg.get("reference") is not None:
                self.references[reference_key(cell.workload_index, cell.batch_size)] = msg["reference"]
            self.done.add(i)
            self.model = record.model or self.model
            return i, record
        elif kind == "fatal":
            raise FATAL_ERRORS.get(msg["type"], RuntimeError)(msg["message"])
        return None

    def lost(self, reason: ErrorInfo) -> Iterator[tuple[int, Record]]:
        """A ``failed`` record for every cell of the group that has none."""
        for i in self.group:
            if i not in self.done:
                yield i, self.runner.lost_record(i, reason, self.model, self.environment)

    def interrupted(self) -> None:
        """Ctrl-C: keep a trace of the cell in progress, as the inline runner does, before the sweep stops."""
        if self.started is not None and self.started not in self.done:
            reason = ErrorInfo(type="KeyboardInterrupt", message="interrupted by the user")
            write_record(
                self.runner.folder, self.runner.lost_record(self.started, reason, self.model, self.environment)
            )
