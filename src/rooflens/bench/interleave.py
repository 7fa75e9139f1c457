"""Which schedule a job's cells are measured in, and the interleaved one: per workload and batch size, the
engines' repetitions in rotating rounds (:mod:`rooflens.bench.rounds`).

Interleaving needs every engine of the job prepared at once: the memory pre-check decides, counting
each engine's own weights together with the largest cell's KV cache, activations and logits. When they
do not fit (or the experiment says ``schedule: blocks``, or there is one engine) the cells are measured in
blocks and each record says why (``repetitions.schedule_note``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from rooflens.bench.cells import Cell, cell_slices, last_cell_of_engines
from rooflens.bench.group import (
    Group,
    failed_record,
    interrupted_record,
    measured_record,
    memory_need,
    references_of,
    refused_record,
)
from rooflens.bench.job import Emit, Finished, Interrupted, Rep, Started
from rooflens.bench.preflight import memory_shortfall
from rooflens.bench.rounds import Contender, measure_rounds
from rooflens.engines.base import Engine
from rooflens.engines.registry import engine_options, get_engine
from rooflens.results.record import Record


@dataclass(frozen=True)
class SchedulePlan:
    interleaved: bool
    schedule_fields: dict[str, Any] = field(default_factory=dict)  # a blocks record's RepetitionInfo fields


def _blocks(note: str) -> SchedulePlan:
    return SchedulePlan(False, {"schedule": "blocks", "schedule_note": note})


def plan_schedule(group: Group, cells: list[Cell]) -> SchedulePlan:
    """Interleaved when the experiment asks for it, the job has several engines and they fit together."""
    indices = group.job.group
    labels = list(dict.fromkeys(cells[i].engine.display for i in indices))
    if group.job.experiment.schedule == "blocks":
        return _blocks("the experiment asks for blocks (schedule: blocks)")
    if len(labels) == 1:
        return _blocks("one engine in this job: nothing to interleave with")
    short = _together_shortfall(group, [cells[i] for i in indices])
    if short is not None:
        return _blocks(f"the engines' prepared states do not fit in memory together: {short}")
    return SchedulePlan(True)


def _together_shortfall(group: Group, cells: list[Cell]) -> str | None:
    """Why the engines of ``cells`` would not fit in memory all prepared at once (None when they would)."""
    first_of: dict[str, Cell] = {}
    for cell in cells:
        first_of.setdefault(cell.engine.display, cell)
    weights = 0
    for cell in first_of.values():
        cls = get_engine(cell.engine.name)
        weights += cls.extra_weight_bytes(engine_options(cell.engine), group.model(cell))[0]
    together = (weights, f"the own weights of {len(first_of)} engines")
    for cell in cells:
        w = cell.workload
        need = memory_need(group, cell, together)
        short = memory_shortfall(
            need, group.bench.device, batch=cell.batch_size, prompt_len=w.prompt_len, gen_len=w.gen_len
        )
        if short is not None:
            return short
    return None


def measure_interleaved(group: Group, cells: list[Cell], emit: Emit) -> None:
    """Each workload and batch size's cells in rounds; an engine is freed after its last slice."""
    last = last_cell_of_engines(group.job.group, cells)
    for indices in cell_slices(group.job.group, cells):
        _measure_slice(group, cells, indices, emit)
        for label, i in last.items():
            if i in indices:
                group.release(label)


def _measure_slice(group: Group, cells: list[Cell], indices: list[int], emit: Emit) -> None:
    ready: list[tuple[int, Cell, dict[str, Any]]] = []
    for i in indices:
        cell = cells[i]
        emit(Started(index=i))
        base = group.base(cell)
        refused = refused_record(group, cell, base)
        if refused is None:
            ready.append((i, cell, base))
        else:
            emit(Finished(index=i, record=refused))
    if not ready:
        return
    labels = [cell.engine.display for _, cell, _ in ready]
    group.hold_machine("engines " + ", ".join(labels))
    for (i, cell, _), record in zip(ready, _rounds(group, ready, labels, emit)):
        emit(Finished(index=i, record=record, **references_of(group, cell)))


def _rounds(group: Group, ready: list[tuple[int, Cell, dict[str, Any]]], labels: list[str], emit: Emit) -> list[Record]:
    """The records of the ready cells of one slice, measured in rounds (in the order of ``ready``)."""
    contenders = []
    for i, cell, _ in ready:
        engine = group.engines[cell.engine.display]
        assert isinstance(engine, Engine)
        on_rep = partial(_rep_event, emit, i)
        contenders.append(Contender(engine, group.prompts(cell), on_rep))
    exp, bench = group.job.experiment, group.bench
    gen_len = ready[0][1].workload.gen_len
    try:
        result = measure_rounds(contenders, gen_len, exp.repetitions, bench.meter, bench.device)
    except KeyboardInterrupt:
        for i, _, base in ready:
            emit(Interrupted(index=i, record=interrupted_record(base)))
        raise
    except Exception as err:  # not one engine's failure (those come back per contender): all of them failed
        return [failed_record(base, err) for _, _, base in ready]
    records = []
    for (_, cell, base), m in zip(ready, result.measurements):
        if isinstance(m, Exception):
            records.append(failed_record(base, m))
            continue
        others = [label for label in labels if label != cell.engine.display]
        fields: dict[str, Any] = {"schedule": "interleaved", "rounds": m.rounds, "rounds_with": others}
        if not others:
            fields = {"schedule": "blocks", "schedule_note": "the only engine that could run this workload and batch"}
        records.append(measured_record(group, cell, base, m, fields))
    return records


def _rep_event(emit: Emit, index: int, measured: int, warmup: bool) -> None:
    emit(Rep(index=index, measured=measured, warmup=warmup))
