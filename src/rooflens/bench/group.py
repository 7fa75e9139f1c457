"""What the cells of one job share while they are measured, and the per-cell steps both schedules take.

A :class:`Group` holds the job, the process's workbench, the baseline's greedy tokens, the engines
(each built and prepared at its first cell that fits, released after its last) and the machine lock,
held from the job's first measured window to its end. Around the timed repetitions of a cell
(:mod:`rooflens.bench.repetitions` in blocks, :mod:`rooflens.bench.rounds` interleaved) the steps are
the same: :func:`refusal` (the memory pre-check, an engine that cannot run it), then
:func:`measured_record` or :func:`failed_record`.
"""

from __future__ import annotations

import gc
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch

from rooflens.bench.attribution import attribute_cell
from rooflens.bench.cell_quality import measure_perplexity, quality_of
from rooflens.bench.cells import Cell
from rooflens.bench.environment import now_iso
from rooflens.bench.job import Emit, GroupJob, reference_key
from rooflens.bench.preflight import MemoryNeed, cell_memory_need, memory_shortfall
from rooflens.bench.record_base import record_base
from rooflens.bench.record_parts import energy_of, memory_of, metrics_of
from rooflens.bench.repetitions import CellMeasurement
from rooflens.bench.task_quality import TaskAnswers, answers_of, task_quality, task_set
from rooflens.bench.validity import judge_cell
from rooflens.bench.workbench import Workbench
from rooflens.config import Repetitions
from rooflens.data.prompts import make_prompts
from rooflens.device.lock import measuring
from rooflens.engines.base import Engine, EngineUnavailable
from rooflens.engines.registry import build_engine, engine_options, get_engine
from rooflens.models.loader import LoadedModel
from rooflens.results.record import (
    Attribution,
    CeilingRef,
    ErrorInfo,
    Metric,
    QualityResult,
    Quantity,
    Record,
    RepetitionInfo,
    TaskQuality,
)
from rooflens.roofline.hints import RooflineHints
from rooflens.roofline.position import ceilings_for, phase_costs, roofline_position, why_unmeasured


@dataclass
class Group:
    """What the cells of one job share: the job, the process's workbench, the engines, the machine lock."""

    job: GroupJob
    bench: Workbench
    emit: Emit
    references: dict[str, torch.Tensor]  # the baseline's greedy tokens by reference_key
    task_answers: dict[str, TaskAnswers]  # the baseline's task answers by workload index (as a string)
    window: ExitStack  # holds the machine lock from the job's first measured window to its end
    engines: dict[str, Engine | ErrorInfo] = field(default_factory=dict)  # by label; ErrorInfo: why it cannot run
    perplexity: dict[str, Quantity | str | None] = field(default_factory=dict)
    tasks: dict[tuple[str, int], TaskQuality | str | None] = field(default_factory=dict)  # by (engine, workload)
    locked: bool = False

    def model(self, cell: Cell) -> LoadedModel:
        """The model in the cell's engine's dtype (loaded once per dtype by the workbench)."""
        return self.bench.model_for(self.job.experiment, cell.engine, self.emit)

    def hold_machine(self, what: str) -> None:
        """Take the machine lock at the job's first measured window; kept until the job ends."""
        if not self.locked:
            self.window.enter_context(measuring(f"experiment {self.job.experiment.name}, {what}"))
            self.locked = True

    def release(self, label: str) -> None:
        """Free an engine (and any model copy it made) after its last cell, before the next one is prepared."""
        if isinstance(self.engines.get(label), Engine):
            self.engines[label] = ErrorInfo(type="Released", message="released after its last cell")
            gc.collect()
            if self.bench.device.type == "cuda":
                torch.cuda.empty_cache()

    def base(self, cell: Cell) -> dict[str, Any]:
        bench = self.bench
        return record_base(
            self.job,
            cell,
            model=self.model(cell).info,
            device=str(bench.device),
            hardware_profile=bench.hardware_profile,
            environment=bench.environment,
        )

    def prompts(self, cell: Cell) -> torch.Tensor:
        w, exp = cell.workload, self.job.experiment
        seed = exp.seed + 1000 * cell.workload_index
        return make_prompts(self.model(cell), w.prompt, cell.batch_size, w.prompt_len, seed, w.chat_template)


def refusal(group: Group, cell: Cell) -> tuple[str, ErrorInfo] | None:
    """Why this cell is not measured (status and reason): it would not fit, or its engine cannot run it."""
    short = _memory_shortfall(group, cell)
    if short is not None:
        return "unavailable", ErrorInfo(type="InsufficientMemory", message=short)
    engine = prepared_engine(group, cell)
    if isinstance(engine, ErrorInfo):
        return ("unavailable" if engine.type == "EngineUnavailable" else "failed"), engine
    if cell.batch_size > 1 and not engine.supports_batch:
        # the record names the engine: one message for every engine, so a summary can group them
        message = "the engine decodes one sequence at a time (batch size 1 only)"
        return "unavailable", ErrorInfo(type="EngineUnavailable", message=message)
    return None


def refused_record(group: Group, cell: Cell, base: dict[str, Any]) -> Record | None:
    """The record of a cell that is not measured (:func:`refusal` says why), or None when it can be."""
    refused = refusal(group, cell)
    if refused is None:
        return None
    status, reason = refused
    return Record(status=status, reason=reason, finished_at=now_iso(), **base)


def memory_need(group: Group, cell: Cell, engine_weights: tuple[int, str] | None = None) -> MemoryNeed:
    """What the cell allocates beside the loaded model; ``engine_weights`` (bytes, what) overrides its engine's."""
    model, w = group.model(cell), cell.workload
    if engine_weights is None:
        engine_weights = (0, "")
        if cell.engine.display not in group.engines:  # not prepared yet: its own weights are still to come
            cls = get_engine(cell.engine.name)
            engine_weights = cls.extra_weight_bytes(engine_options(cell.engine), model)
    return cell_memory_need(
        model.model.config,
        model.model.dtype,
        batch=cell.batch_size,
        prompt_len=w.prompt_len,
        gen_len=w.gen_len,
        real_weights=model.info.weights == "real",
        engine_weights=engine_weights,
    )


def _memory_shortfall(group: Group, cell: Cell) -> str | None:
    """Why this cell would not fit in the memory free now (None when it fits or its engine cannot run)."""
    if isinstance(group.engines.get(cell.engine.display), ErrorInfo):
        return None
    w = cell.workload
    need = memory_need(group, cell)
    return memory_shortfall(need, group.bench.device, batch=cell.batch_size, prompt_len=w.prompt_len, gen_len=w.gen_len)


def prepared_engine(group: Group, cell: Cell) -> Engine | ErrorInfo:
    """Build and prepare the cell's engine at its first cell; remember why it could not run."""
    label = cell.engine.display
    if label in group.engines:
        return group.engines[label]
    model = group.model(cell)
    reason = get_engine(cell.engine.name).unavailable_reason(group.bench.device, model)
    if reason is not None:
        group.engines[label] = ErrorInfo(type="EngineUnavailable", message=reason)
        return group.engines[label]
    try:
        engine = build_engine(cell.engine, model)
        engine.prepare()
        group.engines[label] = engine
        group.perplexity[label] = measure_perplexity(engine, model, group.bench.shared_perplexity)
    except EngineUnavailable as err:  # an option this device cannot run (found while preparing)
        group.engines[label] = ErrorInfo(type="EngineUnavailable", message=str(err))
    except Exception as err:
        group.engines[label] = ErrorInfo(
            type=type(err).__name__, message=f"prepare failed: {err}", traceback=traceback.format_exc()
        )
    return group.engines[label]


def failed_record(base: dict[str, Any], err: BaseException) -> Record:
    reason = ErrorInfo(type=type(err).__name__, message=str(err), traceback=_traceback_of(err))
    return Record(status="failed", reason=reason, finished_at=now_iso(), **base)


def interrupted_record(base: dict[str, Any]) -> Record:
    """A trace of a cell Ctrl-C stopped (kept on disk; not a result)."""
    reason = ErrorInfo(type="KeyboardInterrupt", message="interrupted by the user")
    return Record(status="failed", reason=reason, finished_at=now_iso(), **base)


def _traceback_of(err: BaseException) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))


def measured_record(
    group: Group,
    cell: Cell,
    base: dict[str, Any],
    m: CellMeasurement,
    schedule: dict[str, Any],
    asked: Repetitions | None = None,
    attribute: bool = True,
) -> Record:
    """The ``ok`` record of a measured cell; ``schedule``: the RepetitionInfo fields that say how it was taken;
    ``asked``: the repetitions its validity is judged against (default: the experiment's); ``attribute``: profile
    one more repetition for the per-operator attribution when the experiment asks for it."""
    model, w, exp = group.model(cell), cell.workload, group.job.experiment
    engine = group.engines[cell.engine.display]
    assert isinstance(engine, Engine)
    reps = len(m.timings)
    metrics = metrics_of(m.timings)
    hints = engine.roofline_hints()  # before the profiled repetition adds to the engine's counters
    ceilings = ceilings_for(group.bench.profile, model.info.dtype, group.bench.probe)
    roofline = roofline_position(
        model.model.config,
        model.info.dtype,
        batch=cell.batch_size,
        prompt_len=w.prompt_len,
        gen_len=w.gen_len,
        ttft_s=metrics["ttft_s"].median,
        tpot_s=metrics["tpot_s"].median,
        hints=hints,
        ceilings=ceilings,
        probe_note=why_unmeasured(group.bench.probe, model.info.dtype, group.bench.probe_note),
    )
    attribution = _attribution(group, cell, engine, hints, metrics, ceilings) if attribute and exp.attribution else None
    if group.locked:  # the machine lock kept every other rooflens measurement out of this window
        m.window.other_measurement = False
    interleaved = schedule.get("schedule") == "interleaved"
    window = "this engine's per-repetition windows, summed" if interleaved else "the window of all measured repetitions"
    return Record(
        status="ok",
        finished_at=now_iso(),
        metrics=metrics,
        roofline=roofline,
        attribution=attribution,
        quality=_quality(group, cell, engine, m.tokens),
        energy=energy_of(m.energy, reps * cell.batch_size * w.gen_len, reps, window),
        memory=memory_of(m.memory),
        engine_stats=m.stats,
        fidelity=engine.fidelity(),
        repetitions=RepetitionInfo(
            warmup=m.warmup, measured=reps, measured_seconds=m.measured_seconds, stopped_by=m.stopped_by, **schedule
        ),
        validity=judge_cell(exp.validity, asked or exp.repetitions, metrics, reps, m.measured_seconds, m.window),
        **base,
    )


def _attribution(
    group: Group,
    cell: Cell,
    engine: Engine,
    hints: RooflineHints,
    metrics: dict[str, Metric],
    ceilings: list[CeilingRef],
) -> Attribution:
    """One profiled repetition after the timed ones: where a pass's time goes, each class against its analytic cost."""
    model, w = group.model(cell), cell.workload
    try:
        prefill, decode = phase_costs(
            model.model.config,
            model.info.dtype,
            batch=cell.batch_size,
            prompt_len=w.prompt_len,
            gen_len=w.gen_len,
            hints=hints,
        )
        costs = {"prefill": prefill, "decode": decode}
    except ValueError:  # an architecture the analytic model does not know: times only
        costs = {}
    timed = {"prefill": metrics["ttft_s"].median, "decode": metrics["tpot_s"].median * (hints.tokens_per_pass or 1.0)}
    reps = group.job.experiment.attribution_repetitions
    return attribute_cell(engine, group.prompts(cell), w.gen_len, group.bench.device, costs, ceilings, timed, reps)


def _quality(group: Group, cell: Cell, engine: Engine, tokens: torch.Tensor) -> QualityResult | None:
    """Agreement with the baseline's tokens, perplexity and task quality; none on random weights (quality means
    nothing)."""
    if group.model(cell).info.weights != "real":
        return None
    key = reference_key(cell.workload_index, cell.batch_size)
    baseline = group.job.experiment.baseline_label
    if cell.engine.display == baseline:
        group.references[key] = tokens
    result = quality_of(cell, baseline, tokens, group.references.get(key), group.perplexity.get(cell.engine.display))
    task = _task(group, cell, engine)
    if isinstance(task, str):
        result.note = "; ".join(filter(None, [result.note, task]))
    else:
        result.task = task
    return result


def _task(group: Group, cell: Cell, engine: Engine) -> TaskQuality | str | None:
    """The cell's task quality (bench.task_quality), answered once per engine and workload whatever the batch
    size; a string says why there is none. A failing pass never fails the measured cell."""
    key = (cell.engine.display, cell.workload_index)
    if key in group.tasks:
        return group.tasks[key]
    model, w = group.model(cell), cell.workload
    is_baseline = cell.engine.display == group.job.experiment.baseline_label
    result: TaskQuality | str | None
    try:
        tasks = task_set(model, w)
        if tasks is None:
            result = None
        else:
            known = group.task_answers.get(str(cell.workload_index))  # the baseline's, from an earlier job
            answers = known if is_baseline and known else answers_of(engine, model, tasks, w.gen_len)
            if is_baseline:
                group.task_answers[str(cell.workload_index)] = answers
            baseline = None if is_baseline else known
            result = task_quality(tasks, answers, w.gen_len, model.tokenizer, baseline)
    except Exception as err:  # a task pass that fails says so; the timed measurement stands
        result = f"task quality n/a: {type(err).__name__}: {err}"
    group.tasks[key] = result
    return result


def references_of(group: Group, cell: Cell) -> dict[str, list[list[int]] | None]:
    """A baseline cell's greedy tokens and task answers (``Finished`` fields), for the jobs measured after this
    one; nothing for the other engines."""
    if cell.engine.display != group.job.experiment.baseline_label:
        return {}
    tokens = group.references.get(reference_key(cell.workload_index, cell.batch_size))
    return {
        "reference": tokens.tolist() if tokens is not None else None,
        "task_answers": group.task_answers.get(str(cell.workload_index)),
    }
