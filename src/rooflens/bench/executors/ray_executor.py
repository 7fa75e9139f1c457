"""The ``ray`` executor: each group of cells as a Ray task, on a local or an existing Ray cluster.

Placement: each experiment's baseline group runs first (its greedy tokens are the quality
reference of the other groups), then the experiment's other groups are submitted at once and Ray
places them by what each task asks for, so that no two measurements share a node:

- every task asks for one unit of the node's ``rooflens_measure`` resource (:data:`MEASURE_RESOURCE`),
  which a node declares once (``ray start --resources='{"rooflens_measure": 1}'``; a local cluster
  started here declares it): a node measures one group at a time, and a group has the node's memory
  bandwidth, caches and energy counter to itself. A cluster without the resource is refused;
- a CUDA group also asks for one GPU; a CPU group for ``threads`` CPUs, or, with ``threads`` unset,
  for as many CPUs as the smallest measuring node has; the task pins torch's threads to the CPUs
  Ray granted it.

Within the task, the machine lock (:mod:`rooflens.device.lock`) still guards every measured window, so a
``rooflens run`` outside Ray on the same machine waits for it too. A request no node can grant is refused
before anything is submitted (Ray would wait for such a node forever). Records stream back to the
driver as each cell ends (a streaming generator task) and the driver writes them. A task is never
retried: a crash would otherwise be measured again silently; it becomes ``failed`` records for the
cells it had not finished, as under ``subprocess``. A task silent for longer than its
:class:`~rooflens.bench.executors.base.Watch` allows (a hung engine) is cancelled (its worker killed): its
unfinished cells fail with ``timeout after N s``. A task streams no repetition events (they would wake its
streaming thread between repetitions), so under Ray a cell's limit counts from the cell's start.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rooflens.bench.executors.base import Executor, ExecutorError, Relay, RunJobs, Watch, worker_died
from rooflens.bench.executors.ray_task import MEASURE_RESOURCE, group_task
from rooflens.bench.job import Ended, GroupJob, MeasureFn, decode_event
from rooflens.config import Experiment
from rooflens.device.spec import parse_device
from rooflens.results.record import ErrorInfo

MISSING_RAY = "executor 'ray' needs the ray package: pip install 'rooflens[ray]'"
TRACE_TAIL = 2048


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(MISSING_RAY) from None
    return ray


@dataclass
class _Run:
    """One experiment in flight: its next stage is submitted when none of its jobs is in flight."""

    jobs: RunJobs
    stages: Iterator[list[GroupJob]]
    task: Any


@dataclass
class _Flight:
    run: _Run
    job: GroupJob
    watch: Watch


def _describe(need: dict[str, float]) -> str:
    return " and ".join(f"{v:g} {k}" for k, v in need.items())


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None = None):
        self.ray = import_ray()  # fail before anything is measured
        self.address = address

    def _init(self) -> None:
        if self.ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address:
            self.ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:  # a new local cluster of one node, this machine, which measures one group at a time
            self.ray.init(
                address="local", resources={MEASURE_RESOURCE: 1}, include_dashboard=False, log_to_driver=False
            )

    def resources(self, exp: Experiment) -> dict[str, float]:
        """What each task of ``exp`` asks Ray for; an :class:`ExecutorError` when no alive node has it."""
        if re.fullmatch(r"cuda:[1-9][0-9]*", exp.device):
            raise ExecutorError(
                f"experiment '{exp.name}': under executor 'ray' each task sees only the GPU Ray gives it "
                f"(as cuda:0): use device 'cuda', not '{exp.device}'"
            )
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        measuring = [n for n in nodes if n.get(MEASURE_RESOURCE, 0) >= 1]
        if not measuring:
            raise ExecutorError(
                f"experiment '{exp.name}': no node of the Ray cluster declares the '{MEASURE_RESOURCE}' resource, "
                "which keeps two measurements off one node; start each node that measures with "
                f"`ray start ... --resources='{{\"{MEASURE_RESOURCE}\": 1}}'`"
            )
        gpu = parse_device(exp.device).type == "cuda" or (
            exp.device == "auto" and any(n.get("GPU", 0) > 0 for n in measuring)
        )
        if gpu:
            need = {"CPU": float(exp.threads or 1), "GPU": 1.0}
        elif exp.threads:
            need = {"CPU": float(exp.threads)}
        else:  # the whole (smallest) node: its cores are all the task's
            need = {"CPU": min((n["CPU"] for n in measuring if n.get("CPU", 0) >= 1), default=1.0) // 1}
        need[MEASURE_RESOURCE] = 1.0  # the node's measuring slot: one group at a time
        if not any(all(n.get(k, 0) >= v for k, v in need.items()) for n in nodes):
            have = "; ".join(
                f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU, {n.get(MEASURE_RESOURCE, 0):g} {MEASURE_RESOURCE}"
                for n in nodes
            )
            raise ExecutorError(
                f"experiment '{exp.name}': each task asks Ray for {_describe(need)}, which no node of the cluster "
                f"has (nodes: {have}); lower `threads`, or add such a node"
            )
        return need

    def _task(self, exp: Experiment) -> Any:
        need = self.resources(exp)
        return self.ray.remote(
            num_cpus=need["CPU"],
            num_gpus=need.get("GPU", 0),
            resources={MEASURE_RESOURCE: need[MEASURE_RESOURCE]},
            max_retries=0,
            retry_exceptions=False,
            max_calls=1,  # a fresh worker process per group: the model and engine are freed with it
            num_returns="streaming",
        )(group_task)

    def run(self, runs: Sequence[RunJobs], measure: MeasureFn, emit: Relay) -> None:
        """Submit each run's first stage (its baseline group), then its next stage when that one has ended;
        relay what comes back."""
        self._init()
        flight: dict[Any, _Flight] = {}  # streaming generator -> its run and job

        def next_stage(run: _Run) -> None:
            for job in next(run.stages, []):
                # the node chooses the dtype for its own device (the driver's may differ)
                task = run.task.remote(measure, job.model_copy(update={"dtype": None}).model_dump_json())
                flight[task] = _Flight(run, job, Watch(job.experiment.cell_timeout_s))

        try:
            for jobs in runs:
                self._start(jobs, next_stage)
            while flight:
                self._next_event(flight, emit, next_stage)
        except BaseException:  # Ctrl-C, the driver could not write a record, or a bug
            for refs in flight:
                self._cancel(refs)
            raise

    def _start(self, jobs: RunJobs, next_stage: Callable[[_Run], None]) -> None:
        """Submit the run's first stage, unless no node can meet what its tasks ask for (the run stops)."""
        stages = jobs.stages()
        first = next(stages, [])
        if not first:
            return
        try:
            task = self._task(first[0].experiment)
        except ExecutorError as err:
            jobs.stop(err)
            return
        next_stage(_Run(jobs, itertools.chain([first], stages), task))

    def _next_event(self, flight: dict[Any, _Flight], emit: Relay, next_stage: Callable[[_Run], None]) -> None:
        wait = max(0.0, min(f.watch.remaining() for f in flight.values()))
        ready, _ = self.ray.wait(list(flight), num_returns=1, timeout=wait)
        if not ready:  # a task has been silent for longer than its watch allows: a hung engine
            for refs, f in [(r, f) for r, f in flight.items() if f.watch.remaining() <= 0]:
                self._cancel(refs)
                self._ended(flight, refs, emit, f.watch.reason(), next_stage)
            return
        refs = ready[0]
        f = flight[refs]
        try:
            text = self.ray.get(next(refs))
        except StopIteration:
            reason = worker_died("ray task ended before reporting every cell", "")
        except self.ray.exceptions.RayError as err:
            message = str(err)
            what = f"ray task failed: {type(err).__name__}: {message.splitlines()[0] if message else ''}"
            reason = worker_died(what, message[-TRACE_TAIL:])
        else:
            event = decode_event(text)
            f.watch.saw(event)
            emit(f.job, event)
            if f.run.jobs.stopped:  # this experiment stops (as it would alone); the others go on
                for other in [g for g, x in flight.items() if x.run is f.run]:
                    self._cancel(other)
                    del flight[other]
            return
        self._ended(flight, refs, emit, reason, next_stage)

    def _ended(
        self, flight: dict[Any, _Flight], refs: Any, emit: Relay, reason: ErrorInfo, next_stage: Callable[[_Run], None]
    ) -> None:
        """The job's task has ended (or was cancelled): its unfinished cells get ``reason``; the run's next stage
        starts when none of its jobs is in flight."""
        f = flight.pop(refs)
        emit(f.job, Ended(reason=reason))
        if not any(x.run is f.run for x in flight.values()):
            next_stage(f.run)

    def _cancel(self, refs: Any) -> None:
        try:
            self.ray.cancel(refs, force=True)
        except Exception:  # already finished, or a Ray without cancel for streaming tasks
            pass
