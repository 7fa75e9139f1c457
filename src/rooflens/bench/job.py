"""What the driver hands to the process that measures a group of cells, and what that process says back.

A :class:`GroupJob` is plain data: it goes to a worker process or a Ray task as JSON, or is called
with as is (``inline``). The measuring function (:data:`MeasureFn`) answers with events, each the
moment it happens: progress for the driver's observer, one :class:`Finished` record per cell, and
:class:`Fatal` for an error that stops the whole run. An executor adds :class:`Ended` when the
process that measured a group has ended. No torch here: executors import this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from rooflens.config import Experiment
from rooflens.results.record import ErrorInfo, Record
from rooflens.roofline.probe_file import ProbeResult

References = dict[str, list[list[int]]]
"""The baseline engine's greedy tokens (first measured repetition) by ``"<workload index>:<batch size>"``."""


def reference_key(workload_index: int, batch_size: int) -> str:
    return f"{workload_index}:{batch_size}"


class DtypeSpec(BaseModel):
    """A dtype choice (``models.loader.DtypeChoice``) as data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["float32", "bfloat16", "float16"]
    reason: str


class GroupJob(BaseModel):
    """One group of an experiment's cells (one engine's), and everything its measuring process needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: Experiment
    source: str = Field(description="the experiment's file, as its records name it")
    run_id: str
    executor: str = Field(description="the executor's name, for the records' environment.placement")
    group: list[int] = Field(
        default_factory=list, description="indices into expand_cells(experiment); none: a probe-only job"
    )
    dtype: DtypeSpec | None = Field(
        default=None, description="the driver's choice; None: the measuring process chooses for its own device"
    )
    threads: int | None = Field(default=None, description="torch CPU threads of the measuring process")
    probe: bool = Field(
        default=False, description="measure the device's roofline ceilings first when it has none (probe: auto)"
    )
    probe_note: str | None = Field(
        default=None, description="why the run has no measured ceilings (its automatic probe was refused), for records"
    )
    references: References = Field(default_factory=dict)
    task_answers: References = Field(
        default_factory=dict, description="the baseline engine's task answers by workload index (bench.task_quality)"
    )
    placement: dict[str, Any] = Field(
        default_factory=dict, description="where the process runs, beyond executor and pid (a Ray node, its GPUs)"
    )
    wait_for_lock: bool = Field(
        default=True,
        description="wait while another measurement holds the machine lock; False: stop the run (--no-wait)",
    )


Emit = Callable[["Event"], None]
MeasureFn = Callable[[GroupJob, Emit], None]
"""Measures a job's group in the calling process, telling ``emit`` each event as it happens."""


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ready(_Event):
    """The measuring process is set up: its environment is in every record it measures."""

    event: Literal["ready"] = "ready"
    environment: dict[str, Any]
    probe: ProbeResult | None = Field(default=None, description="the ceilings it measures against, if any")
    probe_note: str | None = Field(default=None, description="why it has no measured ceilings, if so")


class Loading(_Event):
    event: Literal["loading"] = "loading"
    label: str


class Note(_Event):
    """Something the process does besides measuring cells (a first probe of the device): shown, never silent."""

    event: Literal["note"] = "note"
    text: str


class Started(_Event):
    event: Literal["started"] = "started"
    index: int


class Rep(_Event):
    event: Literal["rep"] = "rep"
    index: int
    measured: int
    warmup: bool


class Block(_Event):
    """``rooflens ab``: a block of repetitions of one cell, measured as the driver asked."""

    event: Literal["block"] = "block"
    index: int
    round: int
    measured: int
    values: dict[str, list[float]] = {}  # each per-repetition metric of the block (what the record's samples hold)
    failed: bool = False  # the cell cannot be measured (refused, or a block raised): no more blocks of it


class Finished(_Event):
    """A cell's record; a baseline cell's also carries its greedy tokens and task answers, the references of the
    later groups."""

    event: Literal["record"] = "record"
    index: int
    record: Record
    reference: list[list[int]] | None = None
    task_answers: list[list[int]] | None = None


class Interrupted(_Event):
    """Ctrl-C during a cell: its ``failed`` record is kept on disk; the run stops."""

    event: Literal["interrupted"] = "interrupted"
    index: int
    record: Record


class Fatal(_Event):
    """An error that stops the whole run (a prompt longer than the context, a model that cannot be loaded)."""

    event: Literal["fatal"] = "fatal"
    type: str
    message: str


class Ended(_Event):
    """Sent by an executor: the group's process has ended; its cells without a record get ``reason``."""

    event: Literal["ended"] = "ended"
    reason: ErrorInfo


Event = Annotated[
    Ready | Loading | Note | Started | Rep | Block | Finished | Interrupted | Fatal | Ended,
    Field(discriminator="event"),
]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def encode_event(event: _Event) -> str:
    """One line of JSON (no newline in it)."""
    return json.dumps(event.model_dump(mode="json"))


def decode_event(text: str) -> Event:
    return _EVENT.validate_python(json.loads(text))
