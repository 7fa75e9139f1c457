"""The one place that measures: :func:`measure_group` runs a :class:`~rooflens.bench.job.GroupJob` in the
calling process (the driver's own under ``inline``, a worker's or a Ray task's otherwise).

A job's cells are measured in one of two schedules (:func:`rooflens.bench.interleave.plan_schedule`):
interleaved (per workload and batch size, the engines' repetitions in rotating rounds) or blocks (each
cell's repetitions in one block, engine after engine: :mod:`rooflens.bench.repetitions`). Per cell: the
memory pre-check, the engine (built and prepared at its first cell that fits, released after its last),
the timed repetitions and the record (:mod:`rooflens.bench.group`). The machine lock
(:mod:`rooflens.device.lock`) is held from the start of the job's first measured window to its end: no
other measurement on this machine runs between its cells, so they share one state of the machine; model
loading and the engines' preparation (training included) before it stay outside. A cell that fails becomes
a ``failed`` record and the job goes on; Ctrl-C keeps a trace of the cells in progress
(:class:`~rooflens.bench.job.Interrupted`) and stops. Records go to ``emit`` as each cell ends: the driver
writes them.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch

from rooflens.bench.cells import Cell, expand_cells, last_cell_of_engines
from rooflens.bench.group import (
    Group,
    failed_record,
    interrupted_record,
    measured_record,
    references_of,
    refused_record,
)
from rooflens.bench.interleave import measure_interleaved, plan_schedule
from rooflens.bench.job import Emit, Fatal, Finished, GroupJob, Interrupted, Note, Ready, Rep, Started
from rooflens.bench.preflight import PreflightError, check_context
from rooflens.bench.repetitions import CellMeasurement, measure
from rooflens.bench.workbench import Workbench, done_with, workbench_for
from rooflens.device.lock import MachineBusy, waiting
from rooflens.engines.base import Engine
from rooflens.models.loader import ModelLoadError
from rooflens.results.record import Record

FATAL_ERRORS: dict[str, type[Exception]] = {
    "PreflightError": PreflightError,
    "ModelLoadError": ModelLoadError,
    "MachineBusy": MachineBusy,  # --no-wait, and another measurement holds the machine lock
}
"""Errors that stop a whole run (the CLI exits 2): sent as :class:`Fatal`, raised again by the driver."""


def fatal_error(event: Fatal) -> Exception:
    return FATAL_ERRORS.get(event.type, RuntimeError)(event.message)


def measure_group(job: GroupJob, emit: Emit) -> None:
    """Measure the job's group in this process, telling ``emit`` every event as it happens. While another
    measurement holds the machine lock this waits, saying whom for (a note), or stops the run (``--no-wait``)."""
    with waiting(job.wait_for_lock, lambda text: emit(Note(text=text))):
        _measure_group(job, emit)


def _measure_group(job: GroupJob, emit: Emit) -> None:
    bench = workbench_for(job, emit)
    try:
        emit(Ready(environment=bench.environment, probe=bench.probe, probe_note=bench.probe_note))
        if job.group:
            _measure_cells(job, bench, emit)
    except tuple(FATAL_ERRORS.values()) as err:
        done_with(bench, job, failed=True)
        emit(Fatal(type=type(err).__name__, message=str(err)))
        return
    except BaseException:
        done_with(bench, job, failed=True)
        raise
    done_with(bench, job, failed=False)


def _measure_cells(job: GroupJob, bench: Workbench, emit: Emit) -> None:
    exp = job.experiment
    cells = expand_cells(exp)
    references = {key: torch.tensor(tokens, dtype=torch.long) for key, tokens in job.references.items()}
    with ExitStack() as window:
        group = Group(job, bench, emit, references, dict(job.task_answers), window)
        first = group.model(cells[job.group[0]])
        check_context(exp, first.model.config, exp.model.label)
        plan = plan_schedule(group, cells)
        if plan.interleaved:
            measure_interleaved(group, cells, emit)
        else:
            _measure_blocks(group, cells, emit, plan.schedule_fields)
    for label in list(group.engines):
        group.release(label)


def _measure_blocks(group: Group, cells: list[Cell], emit: Emit, schedule: dict[str, Any]) -> None:
    """Each cell's repetitions in one block, engine after engine; an engine is freed after its last cell."""
    last = last_cell_of_engines(group.job.group, cells)
    for i in group.job.group:
        cell = cells[i]
        emit(Started(index=i))
        record = _measure_cell(group, i, cell, emit, schedule)
        emit(Finished(index=i, record=record, **references_of(group, cell)))
        if last[cell.engine.display] == i:
            group.release(cell.engine.display)


def _measure_cell(group: Group, index: int, cell: Cell, emit: Emit, schedule: dict[str, Any]) -> Record:
    base = group.base(cell)
    refused = refused_record(group, cell, base)
    if refused is not None:
        return refused
    group.hold_machine(f"engine {cell.engine.display}")  # outside the try: MachineBusy (--no-wait) stops the run
    try:
        m = _timed(group, index, cell, emit)
    except KeyboardInterrupt:
        # keep a trace of the interrupted cell, then stop the sweep; finished cells are on disk
        emit(Interrupted(index=index, record=interrupted_record(base)))
        raise
    except Exception as err:
        if group.bench.device.type == "cuda":
            torch.cuda.empty_cache()
        return failed_record(base, err)
    return measured_record(group, cell, base, m, schedule)


def _timed(group: Group, index: int, cell: Cell, emit: Emit) -> CellMeasurement:
    engine = group.engines[cell.engine.display]
    assert isinstance(engine, Engine)
    return measure(
        engine,
        group.prompts(cell),
        cell.workload.gen_len,
        group.job.experiment.repetitions,
        group.bench.meter,
        group.bench.device,
        on_rep=lambda n, warm: emit(Rep(index=index, measured=n, warmup=warm)),
    )
