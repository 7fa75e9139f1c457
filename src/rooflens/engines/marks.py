"""How an engine marks its own work for the per-operator attribution.

During the profiled repetitions of a cell (:mod:`rooflens.bench.attribution`) everything an engine does
beyond the plain model (a draft, predictors, verification, a KV fill, a precision switch) must be its own
class of time. Engines wrap that work in :func:`engine_work`; outside a profiled repetition it costs one
attribute read. The ranges themselves live in :mod:`rooflens.kernels.ranges`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from rooflens.kernels import ranges
from rooflens.kernels.ranges import ENGINE, KERNEL, OP, STEP, profiler_range, recording, recording_ranges

__all__ = ["ENGINE", "KERNEL", "OP", "STEP", "engine_work", "profiler_range", "recording", "recording_ranges"]


def engine_work(name: str) -> Any:
    """``with engine_work("draft"): ...``: the time inside is the engine's class ``name`` in the attribution."""
    return profiler_range(ENGINE + name) if ranges.recording() else nullcontext()
