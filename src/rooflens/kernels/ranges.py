"""Profiler ranges, named by what they hold, for the profiled repetitions of a cell (the per-operator attribution).

The lowest layer that needs them: a native kernel called through ctypes is no torch operator, so the profiler would
not see it; it runs inside a ``rooflens.kernel/`` range, which the attribution counts as an operator. The other
prefixes name an engine's own work, an operator class of the model, and a pass of the generation
(:mod:`rooflens.engines.marks`, :mod:`rooflens.bench.attribution`). Outside a profiled repetition a range costs one
attribute read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

ENGINE = "rooflens.engine/"  # an engine's own work: claims everything inside it (a draft model's layers too)
OP = "rooflens.op/"  # one operator class of the model (q_proj, attention, ...): the innermost one wins
STEP = "rooflens.step/"  # one pass of the generation: rooflens.step/prefill, rooflens.step/decode
KERNEL = "rooflens.kernel/"  # a native kernel called outside torch's dispatcher: an operator of its own

_recording = False


def recording() -> bool:
    """True while a profiled repetition runs."""
    return _recording


@contextmanager
def recording_ranges() -> Iterator[None]:
    """Turn the ranges of engines and kernels on for the duration (the profiled repetition)."""
    global _recording
    _recording = True
    try:
        yield
    finally:
        _recording = False


def profiler_range(name: str) -> Any:
    """A profiler range, the cheapest this torch has (``_RecordFunctionFast`` is a C++ scope, about 10x
    cheaper than ``record_function``); a fresh object per use."""
    fast = getattr(torch._C._profiler, "_RecordFunctionFast", None)
    return fast(name) if fast is not None else torch.profiler.record_function(name)


def kernel_range(name: str) -> Any:
    """``with kernel_range("rl_lowbit_gemm"): lib.rl_lowbit_gemm(...)``: the call is an operator to the profiler."""
    return profiler_range(KERNEL + name) if _recording else nullcontext()
