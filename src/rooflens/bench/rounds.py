"""The timed loop of several engines measured side by side in time: warm-up rounds (discarded), then
measured rounds, each one repetition of every engine in an order that changes every round (a Williams design:
each engine follows each other one equally often), until every engine has met both
``min_reps`` and ``min_seconds`` (its own repetitions' time), capped at ``max_reps`` rounds.

Machine drift (a clock change, a neighbour VM, a thermal limit) then reaches every engine in the same
rounds, so the ratio of two engines in one round cancels it: the records keep the round of each
repetition and speedups are taken over paired rounds (:func:`rooflens.results.derived.speedup`). The order
keeps any engine from always following the same one (a cache it warms, a clock it raises), which a plain rotation
does not: in rotation by one, engine i follows engine i-1 in every round where it is not first.
Energy and peak memory are read per repetition and summed (energy) or maximised (memory) per engine;
the machine's conditions are watched once across all rounds. An engine that raises is dropped from the
later rounds with its error; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from rooflens.bench.conditions import WindowConditions, WindowWatch
from rooflens.bench.energy import EnergyMeter, EnergyReading, combine_readings
from rooflens.bench.memory import MemoryPeak, PeakMemory, highest_peak
from rooflens.bench.repetitions import CellMeasurement, run_once
from rooflens.bench.timing import RepTiming
from rooflens.config import Repetitions
from rooflens.engines.base import Engine


@dataclass
class Contender:
    """One engine's cell in the rounds: its prompts, and whom to tell after each repetition."""

    engine: Engine
    prompts: torch.Tensor
    on_rep: Callable[[int, bool], None] = lambda n, warm: None
    timings: list[RepTiming] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    seconds: float = 0.0  # its own measured repetitions' wall time
    energy: list[EnergyReading] = field(default_factory=list)
    memory: list[MemoryPeak] = field(default_factory=list)
    tokens: torch.Tensor | None = None
    error: Exception | None = None  # what stopped it; it sits out the later rounds

    def done(self, reps: Repetitions, min_seconds: float) -> bool:
        return self.error is not None or (len(self.timings) >= reps.min_reps and self.seconds >= min_seconds)


@dataclass
class RoundsResult:
    """Per contender (in the order given): its measurement, or the error that stopped it."""

    measurements: list[CellMeasurement | Exception]
    rounds: int


def williams_order(n: int, k: int) -> list[int]:
    """Round ``k``'s order of ``n`` items: row ``k`` of a Williams design (a balanced Latin square: over its n rows
    for an even n, its 2n rows for an odd n, each item comes first, last and in every place equally often, and
    follows each other item equally often). Row 0 is 0, 1, n-1, 2, n-2, ...; row r adds r to it (mod n); for an
    odd n the rows n..2n-1 are rows 0..n-1 reversed."""
    if n <= 1:
        return list(range(n))
    first = [0]
    for j in range(1, n):
        first.append((j + 1) // 2 if j % 2 else n - j // 2)
    period = n if n % 2 == 0 else 2 * n
    r = k % period
    row = [(x + r) % n for x in first]
    return row if r < n else row[::-1]


def rotation(items: Sequence[Contender], k: int) -> list[Contender]:
    """Round ``k``'s order: the engines in row ``k`` of a Williams design (:func:`williams_order`), so no engine
    always follows the same one: whatever an engine leaves behind (a warm cache, a raised clock, threads still
    spinning) reaches each of the others equally often. Round 0 is the given order for up to three engines."""
    return [items[i] for i in williams_order(len(items), k)]


def measure_rounds(
    contenders: list[Contender],
    n_new: int,
    reps: Repetitions,
    meter: EnergyMeter,
    device: torch.device,
    now: Callable[[], float] = time.perf_counter,
    watch: WindowWatch | None = None,
) -> RoundsResult:
    for c in contenders:  # one-time work for the cell's shape (compiling), before any repetition
        try:
            c.engine.warm(c.prompts, n_new)
        except Exception as err:
            c.error = err
    for w in range(reps.warmup):
        for c in rotation(contenders, w):
            if c.error is None:
                _warm(c, n_new, device, w + 1)
    for c in contenders:
        if c.error is None:
            c.engine.reset_stats()
    min_seconds = reps.min_seconds
    watch = watch or WindowWatch(device)
    watch.start()
    k = 0
    stopped_by = "max_reps"
    while k < reps.max_reps:
        for c in rotation(contenders, k):
            if c.error is None:
                _measured_rep(c, k, n_new, meter, device, now)
        watch.sample()
        k += 1
        if all(c.done(reps, min_seconds) for c in contenders):
            stopped_by = "min_reps_and_seconds"
            break
    window = watch.stop()
    return RoundsResult([_measurement(c, reps, stopped_by, window) for c in contenders], k)


def _warm(c: Contender, n_new: int, device: torch.device, n: int) -> None:
    try:
        run_once(c.engine, c.prompts, n_new, device)
    except Exception as err:
        c.error = err
        return
    c.on_rep(n, True)


def _measured_rep(
    c: Contender, k: int, n_new: int, meter: EnergyMeter, device: torch.device, now: Callable[[], float]
) -> None:
    try:
        with PeakMemory(device) as mem:
            meter.start()
            t0 = now()
            try:
                timing, tokens = run_once(c.engine, c.prompts, n_new, device)
            finally:
                elapsed = now() - t0
                reading = meter.stop()
    except Exception as err:
        c.error = err
        return
    assert mem.result is not None
    c.timings.append(timing)
    c.rounds.append(k)
    c.seconds += elapsed
    c.energy.append(reading)
    c.memory.append(mem.result)
    if c.tokens is None:
        c.tokens = tokens.detach().cpu()
    c.on_rep(len(c.timings), False)


def _measurement(
    c: Contender, reps: Repetitions, stopped_by: str, window: WindowConditions
) -> CellMeasurement | Exception:
    if c.error is not None:
        return c.error
    assert c.tokens is not None
    return CellMeasurement(
        c.timings,
        reps.warmup,
        c.seconds,
        stopped_by,
        combine_readings(c.energy),
        highest_peak(c.memory),
        c.engine.stats(),
        c.tokens,
        window,
        rounds=list(c.rounds),
    )
