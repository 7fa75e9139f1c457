"""Executors: where the measuring function runs the driver's jobs.

The driver (:mod:`rooflens.bench.runner`) makes an experiment's cells into jobs (all of them in one job
under ``schedule: interleaved``, one job per engine under ``schedule: blocks``), and hands the jobs and
the measuring function (:func:`rooflens.bench.measure.measure_group`) to an executor; it writes each
record the executor relays back.

- ``inline``: in the driver's own process (the default).
- ``subprocess``: each job in a fresh worker process, one after another; a worker that dies
  turns the cells it had not finished into ``failed`` records and the sweep goes on.
- ``ray``: each job as a Ray task, on a local or an existing Ray cluster (optional extra); after
  the baseline's group, the other groups run side by side on different nodes as far as their resource
  requests allow (never two on one node).
"""

from __future__ import annotations

from rooflens.bench.executors.base import EXECUTORS, Executor, ExecutorError

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "make_executor"]


def make_executor(name: str, ray_address: str | None = None) -> Executor:
    """The executor called ``name``; ``ray_address`` is for ``ray`` only (else ``RAY_ADDRESS`` or a local cluster)."""
    if name == "inline":
        from rooflens.bench.executors.inline import InlineExecutor

        return InlineExecutor()
    if name == "subprocess":
        from rooflens.bench.executors.subprocess_executor import SubprocessExecutor

        return SubprocessExecutor()
    if name == "ray":
        from rooflens.bench.executors.ray_executor import RayExecutor

        return RayExecutor(address=ray_address)
    raise ExecutorError(f"unknown executor '{name}' (allowed: {', '.join(EXECUTORS)})")
