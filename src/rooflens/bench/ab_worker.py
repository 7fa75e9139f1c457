"""The worker of one side of ``rooflens ab``: a long-lived process that keeps its model and engines loaded and
measures short blocks of repetitions when the driver asks (:mod:`rooflens.bench.ab`).

Started by the driver with an isolated path (``python -I``, the side's source folder first), so the engines
and the measuring code are those of the side's revision. It reads one command per line of JSON on stdin
and writes events (:mod:`rooflens.bench.job`) as lines of JSON to the file descriptor it is given:

- ``{"op": "start", "job": GroupJob}``: set up (threads, device, model, every engine prepared); ``ready``;
- ``{"op": "block", "index": i, "round": r, "reps": k}``: k measured repetitions of cell i (its warm-up
  first, at its first block), under the machine lock; ``block`` when done, with the block's per-repetition
  metrics (the driver decides from them whether the cell needs another round);
- ``{"op": "finish"}``: one record per cell, its blocks together (``repetitions.rounds`` says each
  repetition's round, so the driver pairs the two sides round by round); then it exits.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from rooflens.bench.cells import expand_cells
from rooflens.bench.conditions import merged_window
from rooflens.bench.energy import combine_readings
from rooflens.bench.executors.base import die_with_parent
from rooflens.bench.group import Group, failed_record, measured_record, refused_record
from rooflens.bench.job import Block, Emit, Fatal, Finished, GroupJob, Note, Ready, encode_event
from rooflens.bench.measure import FATAL_ERRORS
from rooflens.bench.memory import highest_peak
from rooflens.bench.record_parts import metrics_of
from rooflens.bench.repetitions import CellMeasurement, measure
from rooflens.bench.workbench import workbench_for
from rooflens.config import Repetitions
from rooflens.device.lock import measuring, waiting
from rooflens.engines.base import Engine
from rooflens.results.record import Record


@dataclass
class _Cell:
    base: dict[str, Any]
    refused: Record | None = None  # not measured (it would not fit, its engine cannot run it)
    failed: Record | None = None  # a block raised: no more blocks
    prompts: Any = None  # the cell's prompt ids (a tensor), made once
    blocks: list[CellMeasurement] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)


class AbSession:
    """One side's model, engines and blocks."""

    def __init__(self, job: GroupJob, send: Emit):
        self.job, self.send = job, send
        self.bench = workbench_for(job, send)
        self.cells = expand_cells(job.experiment)
        self.group = Group(job, self.bench, send, {}, {}, ExitStack())
        self.state: dict[int, _Cell] = {}
        for i in job.group:
            cell = self.cells[i]
            state = self.state[i] = _Cell(self.group.base(cell))
            state.refused = refused_record(self.group, cell, state.base)
            if state.refused is None:
                state.prompts = self.group.prompts(cell)  # once: every block of the cell uses them
        # ready only once every engine is prepared: the other side measures nothing while this one still works
        send(Ready(environment=self.bench.environment, probe=self.bench.probe, probe_note=self.bench.probe_note))

    def block(self, index: int, round_: int, reps: int) -> None:
        state, cell = self.state[index], self.cells[index]
        values: dict[str, list[float]] = {}
        if state.refused is None and state.failed is None:
            engine = self.group.engines[cell.engine.display]
            assert isinstance(engine, Engine)
            warmup = self.job.experiment.repetitions.warmup if not state.blocks else 0
            asked = Repetitions(warmup=warmup, min_reps=reps, min_seconds=0.0, max_reps=reps)
            try:
                with measuring(f"rooflens ab, {cell.engine.display} {cell.workload.display} b{cell.batch_size}"):
                    m = measure(
                        engine,
                        state.prompts,
                        cell.workload.gen_len,
                        asked,
                        self.bench.meter,
                        self.bench.device,
                    )
                m.window.other_measurement = False  # measured under the machine lock
            except Exception as err:
                state.failed = failed_record(state.base, err)
            else:
                state.blocks.append(m)
                state.rounds += [round_] * len(m.timings)
                values = {k: v.samples for k, v in metrics_of(m.timings).items() if k != "itl_s"}
        failed = state.refused is not None or state.failed is not None
        self.send(Block(index=index, round=round_, measured=0 if failed else reps, values=values, failed=failed))

    def finish(self) -> None:
        self.group.locked = True  # every block held the machine lock
        for i, state in self.state.items():
            self.send(Finished(index=i, record=self._record(i, state)))

    def _record(self, index: int, state: _Cell) -> Record:
        if state.refused or state.failed:
            return state.refused or state.failed  # type: ignore[return-value]
        if not state.blocks:
            return failed_record(state.base, RuntimeError("rooflens ab measured no block of this cell"))
        merged = _merged(state.blocks)
        schedule = {
            "schedule": "ab",
            "rounds": state.rounds,
            "schedule_note": f"rooflens ab: {len(state.blocks)} blocks of "
            f"{len(state.blocks[0].timings)} repetition(s), alternating with the other side's worker",
        }
        # judged against what ab asked (its blocks), not the experiment's min_reps/min_seconds
        asked = self.job.experiment.repetitions.model_copy(update={"min_reps": len(merged.timings), "min_seconds": 0})
        return measured_record(self.group, self.cells[index], state.base, merged, schedule, asked, attribute=False)


def _merged(blocks: list[CellMeasurement]) -> CellMeasurement:
    """A cell's blocks as one measurement, repetitions in the order they were taken."""
    return CellMeasurement(
        timings=[t for b in blocks for t in b.timings],
        warmup=blocks[0].warmup,
        measured_seconds=sum(b.measured_seconds for b in blocks),
        stopped_by="min_reps_and_seconds",
        energy=combine_readings([b.energy for b in blocks]),
        memory=highest_peak([b.memory for b in blocks]),
        stats=blocks[-1].stats,
        tokens=blocks[0].tokens,
        window=merged_window([b.window for b in blocks]),
    )


def serve(commands, send: Emit) -> None:
    """Answer the driver's commands until ``finish`` (or the end of its input)."""
    session: AbSession | None = None
    for line in commands:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "start":
            job = GroupJob.model_validate(cmd["job"])
            with waiting(job.wait_for_lock, lambda text: send(Note(text=text))):
                try:
                    session = AbSession(job, send)
                except tuple(FATAL_ERRORS.values()) as err:
                    send(Fatal(type=type(err).__name__, message=str(err)))
                    return
        elif op == "block" and session is not None:
            with waiting(session.job.wait_for_lock, lambda text: send(Note(text=text))):
                session.block(cmd["index"], cmd["round"], cmd["reps"])
        elif op == "finish" and session is not None:
            session.finish()
            return
        else:
            raise ValueError(f"rooflens ab worker: unexpected command {line.strip()!r}")


def main(fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops its workers and says so
    die_with_parent()
    faulthandler.enable()
    with os.fdopen(fd, "w", encoding="utf-8") as out:

        def send(event) -> None:
            out.write(encode_event(event) + "\n")
            out.flush()

        serve(sys.stdin, send)
    return 0
