"""The one place that measures: :func:`measure_group` runs a :class:`~rooflens.bench.job.GroupJob` in the
calling process (the driver's own under ``inline``, a worker's or a Ray task's otherwise).

Per cell: the memory pre-check, the engine (built and prepared at the group's first cell that fits,
released after its last), then the timed repetitions (:mod:`rooflens.bench.repetitions`) and the record.
The machine lock (:mod:`rooflens.device.lock`) is held from the start of the group's first measured window
to the end of its last: no other measurement on this machine runs between its cells, so they share one
state of the machine; model loading and the engine's preparation (training included) stay outside.
A cell that fails becomes a ``failed`` record and the group goes on; Ctrl-C keeps a trace of the cell
in progress (:class:`~rooflens.bench.job.Interrupted`) and stops. Records go to ``emit`` as each cell
ends: the driver writes them.
"""

from __future__ import annotations

import gc
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from rooflens.bench.cell_quality import measure_perplexity, quality_of
from rooflens.bench.cells import Cell, expand_cells
from rooflens.bench.environment import now_iso
from rooflens.bench.job import (
    Emit,
    Fatal,
    Finished,
    GroupJob,
    Interrupted,
    Note,
    Ready,
    Rep,
    Started,
    reference_key,
)
from rooflens.bench.preflight import PreflightError, cell_memory_need, check_context, memory_shortfall
from rooflens.bench.record_base import record_base
from rooflens.bench.record_parts import energy_of, memory_of, metrics_of
from rooflens.bench.repetitions import CellMeasurement, measure
from rooflens.bench.validity import judge_cell
from rooflens.bench.workbench import Workbench, done_with, workbench_for
from rooflens.data.prompts import make_prompts
from rooflens.device.lock import MachineBusy, measuring, waiting
from rooflens.engines.base import Engine, EngineUnavailable
from rooflens.engines.registry import build_engine, engine_options, get_engine
from rooflens.models.loader import LoadedModel, ModelLoadError
from rooflens.results.record import ErrorInfo, QualityResult, Quantity, Record, RepetitionInfo
from rooflens.roofline.position import ceilings_for, roofline_position, why_unmeasured

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


@dataclass
class _Group:
    """What the cells of one group share: the job, the process's workbench, the model, the engine."""

    job: GroupJob
    bench: Workbench
    model: LoadedModel
    references: dict[str, torch.Tensor]  # the baseline's greedy tokens by reference_key
    window: ExitStack  # holds the machine lock from the group's first measured window to the end of the group
    engine: Engine | ErrorInfo | None = None  # None until prepared; ErrorInfo: why it cannot run
    perplexity: Quantity | str | None = None
    locked: bool = False

    def hold_machine(self, cell: Cell) -> None:
        """Take the machine lock at the group's first measured window; kept until the group ends."""
        if not self.locked:
            what = f"experiment {self.job.experiment.name}, engine {cell.engine.display}"
            self.window.enter_context(measuring(what))
            self.locked = True


def _measure_cells(job: GroupJob, bench: Workbench, emit: Emit) -> None:
    exp = job.experiment
    cells = expand_cells(exp)
    model = bench.model_for(exp, cells[job.group[0]].engine, emit)  # one engine per group: one dtype
    check_context(exp, model.model.config, exp.model.label)
    references = {key: torch.tensor(tokens, dtype=torch.long) for key, tokens in job.references.items()}
    with ExitStack() as window:
        group = _Group(job, bench, model, references, window)
        for i in job.group:
            cell = cells[i]
            emit(Started(index=i))
            record = _measure_cell(group, i, cell, emit)
            emit(Finished(index=i, record=record, reference=_reference_of(group, cell)))
    if isinstance(group.engine, Engine):
        group.engine = None  # free the engine (and any model copy it made) before the next group's is prepared
        gc.collect()
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()


def _reference_of(group: _Group, cell: Cell) -> list[list[int]] | None:
    """A baseline cell's greedy tokens, for the groups measured after this one."""
    if cell.engine.display != group.job.experiment.baseline_label:
        return None
    tokens = group.references.get(reference_key(cell.workload_index, cell.batch_size))
    return tokens.tolist() if tokens is not None else None


def _measure_cell(group: _Group, index: int, cell: Cell, emit: Emit) -> Record:
    bench = group.bench
    base = record_base(
        group.job,
        cell,
        model=group.model.info,
        device=str(bench.device),
        hardware_profile=bench.hardware_profile,
        environment=bench.environment,
    )
    refusal = _refusal(group, cell)
    if refusal is not None:
        status, reason = refusal
        return Record(status=status, reason=reason, finished_at=now_iso(), **base)
    group.hold_machine(cell)  # outside the try: MachineBusy (--no-wait) stops the run, it is no failure of this cell
    try:
        m = _timed(group, index, cell, emit)
    except KeyboardInterrupt:
        # keep a trace of the interrupted cell, then stop the sweep; finished cells are on disk
        reason = ErrorInfo(type="KeyboardInterrupt", message="interrupted by the user")
        emit(Interrupted(index=index, record=Record(status="failed", reason=reason, finished_at=now_iso(), **base)))
        raise
    except Exception as err:
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()
        reason = ErrorInfo(type=type(err).__name__, message=str(err), traceback=traceback.format_exc())
        return Record(status="failed", reason=reason, finished_at=now_iso(), **base)
    results = _results(group, cell, m)
    return Record(status="ok", finished_at=now_iso(), **results, **base)


def _refusal(group: _Group, cell: Cell) -> tuple[str, ErrorInfo] | None:
    """Why this cell is not measured (status and reason): it would not fit, or its engine cannot run it."""
    short = _memory_shortfall(group, cell)
    if short is not None:
        return "unavailable", ErrorInfo(type="InsufficientMemory", message=short)
    engine = _prepared_engine(group, cell)
    if isinstance(engine, ErrorInfo):
        return ("unavailable" if engine.type == "EngineUnavailable" else "failed"), engine
    if cell.batch_size > 1 and not engine.supports_batch:
        # the record names the engine: one message for every engine, so a summary can group them
        message = "the engine decodes one sequence at a time (batch size 1 only)"
        return "unavailable", ErrorInfo(type="EngineUnavailable", message=message)
    return None


def _memory_shortfall(group: _Group, cell: Cell) -> str | None:
    """Why this cell would not fit in the memory free now (None when it fits or its engine cannot run)."""
    if isinstance(group.engine, ErrorInfo):
        return None
    model, device = group.model, group.bench.device
    extra = (0, "")
    if group.engine is None:  # not prepared yet: its own weights are still to come
        cls = get_engine(cell.engine.name)
        extra = cls.extra_weight_bytes(engine_options(cell.engine), model)
    w = cell.workload
    need = cell_memory_need(
        model.model.config,
        model.model.dtype,
        batch=cell.batch_size,
        prompt_len=w.prompt_len,
        gen_len=w.gen_len,
        real_weights=model.info.weights == "real",
        engine_weights=extra,
    )
    return memory_shortfall(need, device, batch=cell.batch_size, prompt_len=w.prompt_len, gen_len=w.gen_len)


def _prepared_engine(group: _Group, cell: Cell) -> Engine | ErrorInfo:
    """Build and prepare the group's engine at its first cell; remember why it could not run."""
    if group.engine is not None:
        return group.engine
    spec, model = cell.engine, group.model
    reason = get_engine(spec.name).unavailable_reason(group.bench.device, model)
    if reason is not None:
        group.engine = ErrorInfo(type="EngineUnavailable", message=reason)
        return group.engine
    try:
        engine = build_engine(spec, model)
        engine.prepare()
        group.engine = engine
        group.perplexity = measure_perplexity(engine, model, group.bench.shared_perplexity)
    except EngineUnavailable as err:  # an option this device cannot run (found while preparing)
        group.engine = ErrorInfo(type="EngineUnavailable", message=str(err))
    except Exception as err:
        group.engine = ErrorInfo(
            type=type(err).__name__, message=f"prepare failed: {err}", traceback=traceback.format_exc()
        )
    return group.engine


def _timed(group: _Group, index: int, cell: Cell, emit: Emit) -> CellMeasurement:
    exp, w = group.job.experiment, cell.workload
    assert isinstance(group.engine, Engine)
    prompts = make_prompts(group.model, w.prompt, cell.batch_size, w.prompt_len, exp.seed + 1000 * cell.workload_index)
    return measure(
        group.engine,
        prompts,
        w.gen_len,
        exp.repetitions,
        group.bench.meter,
        group.bench.device,
        on_rep=lambda n, warm: emit(Rep(index=index, measured=n, warmup=warm)),
    )


def _results(group: _Group, cell: Cell, m: CellMeasurement) -> dict[str, Any]:
    """The measured parts of an ``ok`` record."""
    model, w, engine, exp = group.model, cell.workload, group.engine, group.job.experiment
    assert isinstance(engine, Engine)
    reps = len(m.timings)
    metrics = metrics_of(m.timings)
    roofline = roofline_position(
        model.model.config,
        model.info.dtype,
        batch=cell.batch_size,
        prompt_len=w.prompt_len,
        gen_len=w.gen_len,
        ttft_s=metrics["ttft_s"].median,
        tpot_s=metrics["tpot_s"].median,
        hints=engine.roofline_hints(),
        ceilings=ceilings_for(group.bench.profile, model.info.dtype, group.bench.probe),
        probe_note=why_unmeasured(group.bench.probe, model.info.dtype, group.bench.probe_note),
    )
    if group.locked:  # the machine lock kept every other rooflens measurement out of this window
        m.window.other_measurement = False
    return {
        "metrics": metrics,
        "roofline": roofline,
        "quality": _quality(group, cell, m.tokens),
        "energy": energy_of(m.energy, reps * cell.batch_size * w.gen_len, reps),
        "memory": memory_of(m.memory),
        "engine_stats": m.stats,
        "repetitions": RepetitionInfo(
            warmup=m.warmup, measured=reps, measured_seconds=m.measured_seconds, stopped_by=m.stopped_by
        ),
        "validity": judge_cell(exp.validity, exp.repetitions, metrics, reps, m.measured_seconds, m.window),
    }


def _quality(group: _Group, cell: Cell, tokens: torch.Tensor) -> QualityResult | None:
    """Agreement with the baseline's tokens and perplexity; none on random weights (quality means nothing)."""
    if group.model.info.weights != "real":
        return None
    key = reference_key(cell.workload_index, cell.batch_size)
    baseline = group.job.experiment.baseline_label
    if cell.engine.display == baseline:
        group.references[key] = tokens
    return quality_of(cell, baseline, tokens, group.references.get(key), group.perplexity)
