"""From the profiler's events to where each pass's time went: per phase, the time inside operators per class, and
the wall time of the passes (so what no operator covers is the rest).

An *operator* is a top-level event of the profiled thread that is not one of our ranges (``aten::mm``, a custom
op, a CUDA runtime call outside any op); its time is its CPU span (on a CPU) or the device time of the kernels it
launched (on a GPU). Its class: the outermost engine range around it (an engine's own work claims everything
inside, a draft model's layers too), else the innermost operator-class range, else, outside the model, ``sampling``
for the picking operators (argmax, top-k, softmax, multinomial, ...) and ``loop`` for the decoding loop's other
tensor work. Operators outside every pass (before the clock starts, after it stops) are not counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rooflens.engines.marks import ENGINE, KERNEL, OP, STEP

SAMPLING_OPS = {
    "aten::argmax",
    "aten::max",
    "aten::topk",
    "aten::sort",
    "aten::softmax",
    "aten::_softmax",
    "aten::log_softmax",
    "aten::multinomial",
    "aten::gather",
}


@dataclass
class PhaseTimes:
    """One phase over the profiled passes: their count and wall time; per class the top-level operators' time, their
    count and the operators nested in them; the ranges of the instrumentation."""

    passes: int = 0
    wall_us: float = 0.0
    inside_us: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    nested: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    ranges: int = 0
    engine_classes: set[str] = field(default_factory=set)

    @property
    def top_ops(self) -> int:
        return sum(self.calls.values())


class _Span(NamedTuple):
    start: float
    end: float

    def elapsed_us(self) -> float:
        return self.end - self.start


@dataclass(eq=False)
class Node:
    """One CPU event of the profiler with its place in the call tree (the fields :func:`place` and
    :func:`phase_times` read, named as torch's ``FunctionEvent`` names them). Times in µs."""

    name: str
    start: float
    end: float
    thread: int
    is_user_annotation: bool = False
    device_us: float = 0.0  # the kernels this event launched itself (GPU)
    cpu_parent: Node | None = None
    cpu_children: list[Node] = field(default_factory=list)
    device_type: str = "CPU"

    @property
    def time_range(self) -> _Span:
        return _Span(self.start, self.end)

    @property
    def cpu_time_total(self) -> float:
        return self.end - self.start

    @property
    def device_time_total(self) -> float:
        return self.device_us + sum(c.device_time_total for c in self.cpu_children)


def event_tree(raw: Iterable[Any]) -> list[Node]:
    """The CPU events of a profile (``prof.profiler.kineto_results.events()``) nested by time per thread, each
    carrying the device time of the kernels it launched (matched by correlation id). Building torch's own
    ``FunctionEvent`` tree takes seconds for a generation's hundred thousand events; this takes a fraction of one."""
    kernels: dict[int, float] = defaultdict(float)
    cpu: list[tuple[Any, Node]] = []
    for e in raw:
        kind = getattr(e.device_type(), "name", str(e.device_type())).upper()
        if not kind.endswith("CPU"):
            kernels[e.correlation_id()] += e.duration_ns() / 1e3
            continue
        start = e.start_ns() / 1e3
        node = Node(e.name(), start, start + e.duration_ns() / 1e3, e.start_thread_id(), bool(e.is_user_annotation()))
        cpu.append((e, node))
    for e, node in cpu:
        node.device_us = kernels.get(e.correlation_id(), 0.0) if e.correlation_id() else 0.0
    nodes = sorted((n for _, n in cpu), key=lambda n: (n.thread, n.start, -n.end))
    stack: list[Node] = []
    for node in nodes:
        while stack and (stack[-1].thread != node.thread or stack[-1].end <= node.start):
            stack.pop()
        if stack and node.end <= stack[-1].end:
            node.cpu_parent = stack[-1]
            stack[-1].cpu_children.append(node)
        stack.append(node)
    return nodes


def _is_ours(event: Any) -> bool:
    return event.name.startswith((ENGINE, OP, STEP))


def _is_cpu(event: Any) -> bool:
    return getattr(event.device_type, "name", str(event.device_type)).upper().endswith("CPU")


def _is_range(event: Any) -> bool:
    if event.name.startswith(KERNEL):  # a native kernel's call: an operator
        return False
    return _is_ours(event) or bool(getattr(event, "is_user_annotation", False))


def place(event: Any) -> tuple[str | None, str | None, bool]:
    """(phase, class, is the engine's own work) of a top-level operator; phase None: not a top-level operator of a
    pass (nested in another operator, or outside every step range)."""
    phase = engine = op = None
    parent = event.cpu_parent
    while parent is not None:
        name = parent.name
        if not _is_range(parent):
            return None, None, False  # inside another operator: counted with it
        if name.startswith(STEP):
            phase = phase or name[len(STEP) :]
        elif name.startswith(ENGINE):
            engine = name[len(ENGINE) :]  # keeps the outermost
        elif name.startswith(OP):
            op = op or name[len(OP) :]  # keeps the innermost
        parent = parent.cpu_parent
    if engine is not None:
        return phase, engine, True
    if op is not None:
        return phase, op, False
    return phase, ("sampling" if event.name in SAMPLING_OPS else "loop"), False


def _phase_of_range(event: Any) -> str | None:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(STEP):
            return parent.name[len(STEP) :]
        parent = parent.cpu_parent
    return None


def _descendants(event: Any) -> int:
    children = getattr(event, "cpu_children", None) or []
    return sum(1 + _descendants(c) for c in children if _is_cpu(c))


def phase_times(events: Iterable[Any], on_device: bool) -> dict[str, PhaseTimes]:
    """Per phase (``prefill``, ``decode``), the passes' wall time and each class's operator time (µs)."""
    out: dict[str, PhaseTimes] = defaultdict(PhaseTimes)
    for event in events:
        if not _is_cpu(event):
            continue
        if event.name.startswith(STEP):
            times = out[event.name[len(STEP) :]]
            times.passes += 1
            times.wall_us += event.time_range.elapsed_us()
            times.ranges += 1
            continue
        if _is_range(event):
            if (phase := _phase_of_range(event)) is not None:
                out[phase].ranges += 1
            continue
        phase, cls, own = place(event)
        if phase is None or cls is None:
            continue
        times = out[phase]
        times.inside_us[cls] += event.device_time_total if on_device else event.cpu_time_total
        times.calls[cls] += 1
        times.nested[cls] += _descendants(event)
        if own:
            times.engine_classes.add(cls)
    return dict(out)
