"""Executors: where an experiment's cells run.

The runner (the driver) splits the cells into groups, one per engine (one model load and one
engine ``prepare`` each), hands them to an executor and writes each record it gets back.

- ``inline``: in the driver's own process (the default).
- ``subprocess``: each group in a fresh worker process, one after another; a worker that dies
  turns the cells it had not finished into ``failed`` records and the sweep goes on.
- ``ray``: each group as a Ray task, on a local or an existing Ray cluster (optional extra); after
  the baseline's group, the other groups run side by side as far as their resource requests allow.

:func:`run_experiments` measures several experiments with one executor (one Ray cluster).
"""

from __future__ import annotations

from rooflens.bench.executors.base import EXECUTORS, Executor, ExecutorError
from rooflens.bench.executors.many import run_experiments

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "make_executor", "run_experiments"]


def make_executor(name: str, ray_address: str | None = None) -> Executor:
    """The executor called ``name``; ``ray_address`` is for ``ray`` only (else ``RAY_ADDRESS`` or a local cluster)."""
    if name == "inline":
        from rooflens.bench.executors.inline import InlineExecutor

        return InlineExecutor()
    if name == "subprocess":
        from rooflens.bench.executors.process import SubprocessExecutor

        return SubprocessExecutor()
    if name == "ray":
        from rooflens.bench.executors.ray_tasks import RayExecutor

        return RayExecutor(address=ray_address)
    raise ExecutorError(f"unknown executor '{name}' (allowed: {', '.join(EXECUTORS)})")
