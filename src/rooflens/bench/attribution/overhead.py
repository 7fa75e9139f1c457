"""What the profiler and the instrumentation cost a pass, measured just before the profiled repetition.

Every operator the profiler records costs it time (its callbacks and an event), and every range the
instrumentation adds costs a Python call and a scope: in a decode step of a small model that is thousands of
events. Both are measured here on this CPU, now: a loop of small ``linear`` calls (eight recorded operators each:
``linear``, ``t``, ``transpose``, ``matmul``, ``mm``, ...) and a loop of wrapped empty calls, each timed bare and
under the profiler (best of a few tries), divided by the events the profiler recorded. A range's figure is used
as it is; an operator's is a floor: inside a real forward the profiler pays more per operator than in a tight loop,
and :func:`rooflens.bench.attribution.in_situ` takes the larger figure the decode passes show. On a GPU the
operators' times are their kernels', which the host-side cost does not touch: nothing is removed there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rooflens.engines.marks import OP, profiler_range

CALLS = 1000
TRIES = 5


@dataclass(frozen=True)
class ProfilerCost:
    """Seconds the profiler adds per recorded operator and per instrumentation range, and how that was found."""

    per_op_s: float
    per_range_s: float
    how: str


def _best(fn, tries: int = TRIES) -> float:
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _calls(fn) -> None:
    for _ in range(CALLS):
        fn()


def _nothing() -> None:
    return None


def _wrapped() -> None:
    with profiler_range(OP + "calibration"):
        return _nothing()


def measure_profiler_cost() -> ProfilerCost:
    """The profiler's cost per recorded operator and per range on this CPU, now (about 0.1 s)."""
    from torch.profiler import ProfilerActivity, profile

    x, w = torch.zeros(1, 8), torch.zeros(8, 8)
    ops = lambda: _calls(lambda: torch.nn.functional.linear(x, w))  # noqa: E731
    ranges = lambda: _calls(_wrapped)  # noqa: E731
    bare_ops, bare_calls = _best(ops), _best(lambda: _calls(_nothing))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled_ops = _best(ops)
    events = sum(1 for _ in prof.profiler.kineto_results.events()) / TRIES
    with profile(activities=[ProfilerActivity.CPU]):
        profiled_ranges = _best(ranges)
    per_op = max(profiled_ops - bare_ops, 0.0) / max(events, 1.0)
    per_range = max(profiled_ranges - bare_calls, 0.0) / CALLS
    how = (
        f"{per_op * 1e6:.2f} us per operator ({CALLS} small linear calls, {events / CALLS:.0f} operators each, bare "
        f"and profiled), {per_range * 1e6:.2f} us per range ({CALLS} wrapped empty calls); best of {TRIES}"
    )
    return ProfilerCost(per_op, per_range, how)
