"""The ``ray`` executor: each group of cells as a Ray task, on a local or an existing Ray cluster.

Placement: each experiment's baseline group runs first (its greedy tokens are the quality
reference of the other groups), then the experiment's other groups are submitted at once and Ray
places them by what each task asks for, so that measurements running side by side do not share
what they measure:

- a CUDA group asks for one GPU: never two measuring tasks on one GPU;
- a CPU group asks for ``threads`` CPUs, or, with ``threads`` unset, for as many CPUs as the
  smallest node has (a task then has a node to itself); the task pins torch's threads to the CPUs
  Ray granted it, so a node never runs more measuring threads than it has cores.

A request no node can grant is refused before anything is submitted (Ray would wait for such a node
forever). Records stream back to the driver as each cell ends (a streaming generator task) and the
driver writes them. A task is never retried: a crash would otherwise be measured again silently; it
becomes ``failed`` records for the cells it had not finished, as under ``subprocess``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rooflens.bench.executors.base import (
    Executor,
    ExecutorError,
    Outcomes,
    Results,
    Run,
    run_stopping_errors,
    worker_died,
)
from rooflens.bench.executors.remote import GroupDriver, References
from rooflens.results.record import Record

if TYPE_CHECKING:
    from rooflens.bench.runner import ExperimentRunner
    from rooflens.config import Experiment

MISSING_RAY = "executor 'ray' needs the ray package: pip install 'rooflens[ray]'"
TRACE_TAIL = 2048


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(MISSING_RAY) from None
    return ray


def _group_task(job: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Runs on a Ray worker: the records (and ``ready``/``fatal``) of one group; progress is not sent."""
    import hashlib
    import os
    import signal
    import socket

    import ray
    import torch

    from rooflens.bench.executors.worker import run_job

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    context = ray.get_runtime_context()
    granted = context.get_assigned_resources()
    if granted.get("CPU", 0) >= 1:
        # as many threads as CPUs granted: tasks side by side on a node never oversubscribe its cores
        torch.set_num_threads(int(granted["CPU"]))
    placement = {
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        # hashed like the environment's own hostname_hash: records get shared; node_id/node_ip locate the node
        "hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
        "gpu_ids": list(ray.get_gpu_ids()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "resources": granted,
    }
    yield from run_job(job, placement=placement)


@dataclass
class _Run:
    """One experiment in flight: ``later`` groups wait for its baseline group, which fills ``references``."""

    index: int
    runner: ExperimentRunner
    later: list[list[int]]
    task: Any
    references: References = field(default_factory=dict)


def _describe(need: dict[str, float]) -> str:
    return " and ".join(f"{v:g} {k}" for k, v in need.items())


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None = None):
        self.ray = import_ray()  # fail before anything is measured
        self.address = address

    def _init(self) -> None:
        if not self.ray.is_initialized():
            # address None: RAY_ADDRESS if set, else a new local cluster
            self.ray.init(address=self.address, include_dashboard=False, log_to_driver=False)

    def resources(self, exp: Experiment) -> dict[str, float]:
        """What each task of ``exp`` asks Ray for; an :class:`ExecutorError` when no alive node has it."""
        if re.fullmatch(r"cuda:[1-9][0-9]*", exp.device):
            raise ExecutorError(
                f"experiment '{exp.name}': under executor 'ray' each task sees only the GPU Ray gives it "
                f"(as cuda:0): use device 'cuda', not '{exp.device}'"
            )
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        gpu = exp.device.startswith("cuda") or (exp.device == "auto" and any(n.get("GPU", 0) > 0 for n in nodes))
        if gpu:
            need = {"CPU": float(exp.threads or 1), "GPU": 1.0}
        elif exp.threads:
            need = {"CPU": float(exp.threads)}
        else:  # the whole (smallest) node: its cores are all the task's
            need = {"CPU": min((n["CPU"] for n in nodes if n.get("CPU", 0) >= 1), default=1.0) // 1}
        if not any(all(n.get(k, 0) >= v for k, v in need.items()) for n in nodes):
            have = "; ".join(f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for n in nodes) or "none alive"
            raise ExecutorError(
                f"experiment '{exp.name}': each task asks Ray for {_describe(need)}, which no node of the cluster "
                f"has (nodes: {have}); lower `threads`, or add such a node"
            )
        return need

    def _task(self, runner: ExperimentRunner) -> Any:
        need = self.resources(runner.exp)
        return self.ray.remote(
            num_cpus=need["CPU"],
            num_gpus=need.get("GPU", 0),
            max_retries=0,
            retry_exceptions=False,
            max_calls=1,  # a fresh worker process per group: the model and engine are freed with it
            num_returns="streaming",
        )(_group_task)

    def run(self, runner: ExperimentRunner, groups: Sequence[Sequence[int]]) -> Results:
        outcomes = self._drive([(runner, groups)])
        try:
            for _, item in outcomes:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            outcomes.close()

    def run_many(self, runs: Sequence[Run]) -> Outcomes:
        """All the experiments at once: every baseline group first, then each experiment's other groups."""
        for runner, _ in runs:
            runner.setup(self.name)
        yield from self._drive(runs)

    def _drive(self, runs: Sequence[Run]) -> Outcomes:
        """Submit each run's baseline group, then its other groups all at once when it ends; relay what comes back."""
        self._init()
        flight: dict[Any, tuple[_Run, GroupDriver]] = {}  # streaming generator -> its run and group

        def submit(run: _Run, group: list[int]) -> None:
            driver = GroupDriver(run.runner, group, run.references)
            flight[run.task.remote(driver.job(self.name, same_machine=False))] = (run, driver)

        def tag(run: _Run, results: Iterable[tuple[int, Record]]) -> Outcomes:
            for item in results:
                yield run.index, item

        for k, (runner, groups) in enumerate(runs):
            try:
                task = self._task(runner)
            except ExecutorError as err:
                yield k, err
                continue
            if groups:
                run = _Run(k, runner, [list(g) for g in groups[1:]], task)
                submit(run, list(groups[0]))
        try:
            while flight:
                ready, _ = self.ray.wait(list(flight), num_returns=1)
                refs = ready[0]
                run, driver = flight[refs]
                try:
                    msg = self.ray.get(next(refs))
                except StopIteration:
                    reason = worker_died("ray task ended before reporting every cell", "")
                except self.ray.exceptions.RayError as err:
                    text = str(err)
                    what = f"ray task failed: {type(err).__name__}: {text.splitlines()[0] if text else ''}"
                    reason = worker_died(what, text[-TRACE_TAIL:])
                else:
                    try:
                        result = driver.handle(msg)
                    except run_stopping_errors() as err:
                        # this experiment stops (as it would alone); the others go on
                        for other in [g for g, (r, _) in flight.items() if r is run]:
                            self._cancel(other)
                            del flight[other]
                        yield run.index, err
                        continue
                    if result is not None:
                        yield run.index, result
                    continue
                del flight[refs]  # the group's task has ended
                yield from tag(run, driver.lost(reason))
                # the baseline group was the run's only task in flight: its tokens are in run.references now
                for group in run.later:
                    submit(run, group)
                run.later = []
        except KeyboardInterrupt:
            for refs, (_, driver) in flight.items():
                self._cancel(refs)
                driver.interrupted()
            raise
        except BaseException:  # the driver stopped early (GeneratorExit) or a bug
            for refs in flight:
                self._cancel(refs)
            raise

    def _cancel(self, refs: Any) -> None:
        try:
            self.ray.cancel(refs, force=True)
        except Exception:  # already finished, or a Ray without cancel for streaming tasks
            pass
