"""The driver: plans an experiment's cells into jobs, hands them to an executor, and writes each record.

The cells (engine x workload x batch size, :mod:`rooflens.bench.cells`) go to the executor as
jobs (:class:`~rooflens.bench.job.GroupJob`). Under ``schedule: interleaved`` (the default) one job holds them
all: its process prepares every engine and measures each workload and batch size in rounds. Under
``schedule: blocks`` there is one job per engine, and the baseline engine's runs first: its greedy
tokens go with every later job (the quality reference). ``probe: auto`` on a device with no roofline
ceilings adds one probe job before any cell, measured where the cells are. The executor calls
:func:`~rooflens.bench.measure.measure_group` with each job, in whatever process it runs it, and
relays the events back. The driver is the only writer of records: each one atomically, as it
arrives, so an interrupted or crashing sweep keeps every finished cell; a failing cell is a
``failed`` record and the sweep goes on. The driver measures nothing and sets no torch threads.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rooflens.bench.cells import Cell, cell_groups, expand_cells
from rooflens.bench.environment import capture_environment, now_iso
from rooflens.bench.executors import Executor, make_executor
from rooflens.bench.executors.base import RunJobs
from rooflens.bench.job import (
    DtypeSpec,
    Ended,
    Event,
    Fatal,
    Finished,
    GroupJob,
    Interrupted,
    Loading,
    Note,
    Ready,
    References,
    Rep,
    Started,
    reference_key,
)
from rooflens.bench.measure import fatal_error, measure_group
from rooflens.bench.prompt_lengths import resolve_prompt_lengths
from rooflens.bench.record_base import hardware_profile_info, record_base
from rooflens.bench.workbench import probe_threads
from rooflens.config import Experiment
from rooflens.device.detect import detect_hardware
from rooflens.device.lock import wait_policy
from rooflens.models.loader import choose_dtype, dtype_name, resolve_device
from rooflens.results.record import ErrorInfo, Record
from rooflens.results.store import RecordRescued, ensure_writable, record_filename, write_record
from rooflens.roofline.hardware import resolve_profile
from rooflens.roofline.position import ceilings_for
from rooflens.roofline.probe_file import ProbeResult, lookup_probe
from rooflens.text import safe_name


class RunObserver(Protocol):
    def model_loading(self, label: str) -> None: ...
    def note(self, text: str) -> None: ...
    def cell_started(self, index: int, total: int, cell: Cell) -> None: ...
    def repetition_done(self, cell: Cell, measured: int, warmup: bool) -> None: ...
    def cell_finished(self, index: int, total: int, record: Record, path: Path) -> None: ...


class SilentObserver:
    def model_loading(self, label: str) -> None: ...
    def note(self, text: str) -> None: ...
    def cell_started(self, index: int, total: int, cell: Cell) -> None: ...
    def repetition_done(self, cell: Cell, measured: int, warmup: bool) -> None: ...
    def cell_finished(self, index: int, total: int, record: Record, path: Path) -> None: ...


@dataclass
class RunResult:
    run_id: str
    folder: Path
    records: list[Record]


@dataclass
class _GroupState:
    """What the driver knows of one job in flight, for the records of cells it never reports."""

    job: GroupJob
    done: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)  # cells started, finished or not (interleaved: several at once)
    environment: dict[str, Any] | None = None  # the measuring process's, once it is ready
    model: Any = None  # the model info of the group's records, once there is one


class ExperimentRunner:
    """The driver of one experiment's run: its id and folder, device and dtype, jobs and records."""

    def __init__(
        self,
        exp: Experiment,
        source: str = "<experiment>",
        results_root: Path | None = None,
        observer: RunObserver | None = None,
        executor: Executor | None = None,
        run_suffix: str = "",
    ):
        """``executor``: where the cells run (default: the one the experiment names, ``inline`` unless set);
        ``run_suffix``: ends the run id (``rooflens ab`` marks its sides with it). A ``prompt_len: from-data``
        is resolved here, from the model's tokenizer (PreflightError when it has none)."""
        self.exp = exp = resolve_prompt_lengths(exp)
        self.source = source
        self.observer = observer or SilentObserver()
        self.executor = executor
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2) + run_suffix
        root = Path(results_root) if results_root is not None else Path(exp.output.results_dir)
        self.folder = root / safe_name(exp.name) / self.run_id
        self.device = resolve_device(exp.device)
        self.dtype_choice = choose_dtype(exp.dtype, self.device)
        self.dtype = self.dtype_choice.dtype
        self.cells = expand_cells(exp)
        self.total_cells = len(self.cells)
        self.records: list[Record] = []  # written so far (an interrupted sweep reports them)
        self._indices: list[int] = []  # the cell index of each of ``records``
        self.unwritten: list[str] = []  # why records could not be written to the run folder (kept elsewhere)
        self.references: References = {}  # the baseline's greedy tokens, for the groups after its own
        self.task_answers: References = {}  # the baseline's task answers by workload index, likewise
        self.error: Exception | None = None  # what stopped the run
        self._groups: dict[tuple[int, ...], _GroupState] = {}
        self._environment: dict[str, Any] | None = None
        # the hardware as known here (resolve_hardware): what the summary names; records carry the measuring side's
        self.profile_info: dict[str, Any] = {}
        self.device_name: str | None = None
        self.probe: ProbeResult | None = None
        self.probe_threads = 0  # the thread count its probe is keyed by (0: a GPU)
        self.probe_note: str | None = None  # why there is no probe, when there is none
        self.probe_refused: str | None = None  # why the automatic probe saved none, for the later jobs' records
        self.needs_probe = False

    def run(self) -> RunResult:
        """Measure every cell; checks that need no measurement (output folder, context) come first."""
        (outcome,) = run_experiments([self], self.executor or make_executor(self.exp.executor))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    # ------------------------------------------------------------------------ the plan

    def resolve_hardware(self) -> None:
        """The hardware profile and saved ceilings of the run's device, as known here (nothing is measured)."""
        profile = resolve_profile(self.exp.hardware, str(self.device), hardware=detect_hardware())
        self.profile_info = hardware_profile_info(profile)
        self.device_name = profile.device_name
        self.probe_threads = probe_threads(self.device, self.exp.threads)
        found = lookup_probe(profile.device_name, self.probe_threads) if profile.device_name else None
        self.probe = found.probe if found else None
        self.probe_note = found.note if found else None
        self.needs_probe = bool(
            self.exp.probe == "auto"
            and profile.device_name
            and not ceilings_for(profile.profile, dtype_name(self.dtype), self.probe)
        )

    def job(self, group: Sequence[int], executor: str, *, probe: bool = False) -> GroupJob:
        """The job of ``group``, with the baseline's tokens known now."""
        return GroupJob(
            experiment=self.exp,
            source=self.source,
            run_id=self.run_id,
            executor=executor,
            group=list(group),
            dtype=DtypeSpec(name=dtype_name(self.dtype), reason=self.dtype_choice.reason),
            threads=self.exp.threads,
            probe=probe,
            probe_note=None if probe else self.probe_refused,
            references=dict(self.references),
            task_answers=dict(self.task_answers),
            wait_for_lock=wait_policy().wait,  # the caller's (rooflens run --no-wait), to the measuring process
        )

    def jobs(self, executor: str) -> _Jobs:
        return _Jobs(self, executor)

    def stop(self, error: Exception) -> None:
        if self.error is None:
            self.error = error

    # ------------------------------------------------------------------------ what comes back

    def handle(self, job: GroupJob, event: Event) -> None:
        """Act on one event of ``job``: tell the observer, write a record, stop the run."""
        state = self._groups.setdefault(tuple(job.group), _GroupState(job))
        obs = self.observer
        match event:
            case Ready():
                state.environment = event.environment
                self.probe = event.probe or self.probe  # the ceilings the records are measured against
                if job.probe and event.probe is None:  # the automatic probe was refused (or failed): why, for records
                    self.probe_refused = self.probe_note = event.probe_note
            case Loading():
                obs.model_loading(event.label)
            case Note():
                obs.note(event.text)
            case Started():
                state.started.add(event.index)
                obs.cell_started(event.index, self.total_cells, self.cells[event.index])
            case Rep():
                obs.repetition_done(self.cells[event.index], event.measured, event.warmup)
            case Finished():
                self._finished(state, event)
            case Interrupted():
                state.done.add(event.index)
                self._write_trace(event.record)  # a trace of the cell Ctrl-C stopped, not a result
            case Fatal():
                self.stop(fatal_error(event))
            case Ended():
                self._ended(state, event.reason)

    def _finished(self, state: _GroupState, event: Finished) -> None:
        cell = self.cells[event.index]
        if event.reference is not None:
            self.references[reference_key(cell.workload_index, cell.batch_size)] = event.reference
        if event.task_answers is not None:
            self.task_answers[str(cell.workload_index)] = event.task_answers
        state.done.add(event.index)
        state.model = event.record.model or state.model
        self.keep(event.index, event.record)

    def keep(self, index: int, record: Record) -> Path:
        """Write the record of cell ``index`` atomically and tell the observer. Groups measured at the same
        time (``ray``) deliver records interleaved; ``records`` stays in cell order all the same. A record the
        run folder cannot take is kept all the same (written elsewhere, or in memory), and the observer told."""
        try:
            path = write_record(self.folder, record)
        except RecordRescued as err:
            self.observer.note(f"warning: {err}")
            self.unwritten.append(str(err))
            path = err.path or self.folder / record_filename(record)
        at = bisect.bisect(self._indices, index)
        self._indices.insert(at, index)
        self.records.insert(at, record)
        self.observer.cell_finished(index, self.total_cells, record, path)
        return path

    def _write_trace(self, record: Record) -> None:
        """Write the record of a cell Ctrl-C stopped (not a result: not in ``records``)."""
        try:
            write_record(self.folder, record)
        except RecordRescued as err:
            self.unwritten.append(str(err))

    def _ended(self, state: _GroupState, reason: ErrorInfo) -> None:
        """The job's process has ended: a ``failed`` record for every cell of its group that has none."""
        if self.error is not None:
            return  # the run stopped: its unfinished cells are not failures of theirs
        for i in state.job.group:
            if i not in state.done:
                self.keep(i, self._lost_record(state, i, reason))

    def interrupted(self) -> None:
        """Ctrl-C: keep a trace of each cell in progress that has none yet, before the sweep stops."""
        reason = ErrorInfo(type="KeyboardInterrupt", message="interrupted by the user")
        for state in self._groups.values():
            for index in sorted(state.started - state.done):
                state.done.add(index)
                self._write_trace(self._lost_record(state, index, reason))

    def _lost_record(self, state: _GroupState, index: int, reason: ErrorInfo) -> Record:
        """A ``failed`` record for a cell whose measuring process ended before it reported one."""
        environment = state.environment or self._own_environment(state.job.executor)
        base = record_base(
            state.job,
            self.cells[index],
            model=state.model,
            device=str(self.device),
            hardware_profile=self.profile_info,
            environment=environment,
        )
        return Record(status="failed", reason=reason, finished_at=now_iso(), **base)

    def _own_environment(self, executor: str) -> dict[str, Any]:
        """The driver's environment, for a cell whose measuring process died before it said its own."""
        if self._environment is None:
            self._environment = capture_environment(detect_hardware().model_dump(mode="json"))
            self._environment["placement"] = {"executor": executor, "pid": os.getpid()}
        return self._environment


class _Jobs(RunJobs):
    """A run's jobs for an executor: interleaved, one job of all cells; in blocks, the baseline's group, then the
    others (with its tokens)."""

    def __init__(self, runner: ExperimentRunner, executor: str, *, probe: bool = False):
        self.runner = runner
        self.executor = executor
        self.probe = probe

    def stages(self) -> Iterator[list[GroupJob]]:
        r = self.runner
        if self.probe:
            yield [r.job([], self.executor, probe=True)]
            return
        if r.exp.schedule == "interleaved":
            yield [r.job(range(len(r.cells)), self.executor)]
            return
        first, *later = cell_groups(r.cells)
        if not self.stopped:
            yield [r.job(first, self.executor)]
        if later and not self.stopped:
            yield [r.job(group, self.executor) for group in later]

    @property
    def stopped(self) -> bool:
        return self.runner.error is not None

    def stop(self, error: Exception) -> None:
        self.runner.stop(error)


def _probe_jobs(runners: Sequence[ExperimentRunner], executor: str) -> list[RunJobs]:
    """``probe: auto`` on a device with no ceilings: one probe job per device and thread count, before any cell."""
    jobs: list[RunJobs] = []
    devices: set[str] = set()
    for runner in runners:
        key = f"{runner.device_name}-t{runner.probe_threads}"
        if runner.needs_probe and key not in devices:
            devices.add(key)
            jobs.append(_Jobs(runner, executor, probe=True))
    return jobs


def run_experiments(runners: Sequence[ExperimentRunner], executor: Executor) -> list[RunResult | Exception]:
    """Measure every runner's experiment with ``executor``; per runner, its result or the error that stopped it.

    A run-stopping error of one experiment (a prompt longer than the context, a model that cannot be
    loaded, resources no node has) stops that experiment only. Every results folder is checked before
    anything is measured; an error writing a record, Ctrl-C or a bug stops them all (records already
    written stay). Under ``ray`` the experiments' groups are in flight together, so their records
    interleave; under ``inline``/``subprocess`` the experiments run one after another.
    """
    for runner in runners:
        ensure_writable(runner.folder, "results folder")
    by_run = {runner.run_id: runner for runner in runners}

    def relay(job: GroupJob, event: Event) -> None:
        by_run[job.run_id].handle(job, event)

    try:
        for runner in runners:
            runner.resolve_hardware()
        if probes := _probe_jobs(runners, executor.name):
            executor.run(probes, measure_group, relay)
        executor.run([runner.jobs(executor.name) for runner in runners], measure_group, relay)
    except KeyboardInterrupt:
        for runner in runners:
            runner.interrupted()
        raise
    finally:
        for runner in runners:
            if not runner.records:  # no empty run folder behind a run that wrote nothing
                with contextlib.suppress(OSError):
                    runner.folder.rmdir()
    return [runner.error or RunResult(runner.run_id, runner.folder, runner.records) for runner in runners]
