"""The timed loop of one cell: warm-up runs (discarded), then measured repetitions until both ``min_reps``
and ``min_seconds`` are met (capped at ``max_reps``), inside one energy window and one peak-memory window,
watched for the machine's conditions (load, clocks: :mod:`rooflens.bench.conditions`) between repetitions."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rooflens.bench.conditions import WindowConditions, WindowWatch
from rooflens.bench.energy import EnergyMeter, EnergyReading
from rooflens.bench.memory import MemoryPeak, PeakMemory
from rooflens.bench.timing import RepTiming, rep_timing
from rooflens.config import Repetitions
from rooflens.engines.base import Engine, TokenClock


class FixedLengthError(RuntimeError):
    """An engine returned a different number of tokens than requested."""


@dataclass
class CellMeasurement:
    timings: list[RepTiming]
    warmup: int
    measured_seconds: float
    stopped_by: str
    energy: EnergyReading
    memory: MemoryPeak
    stats: dict
    tokens: torch.Tensor  # new tokens of the first measured repetition
    window: WindowConditions  # the machine's conditions across the measured window
    rounds: list[int] | None = None  # interleaved (rooflens.bench.rounds): the round of each repetition


def run_once(engine: Engine, prompts: torch.Tensor, n_new: int, device: torch.device) -> tuple[RepTiming, torch.Tensor]:
    clock = TokenClock(device)
    clock.start()
    tokens = engine.generate(prompts, n_new, clock)
    clock.stop()
    expected = (prompts.shape[0], n_new)
    if tuple(tokens.shape) != expected:
        raise FixedLengthError(f"engine returned tokens of shape {tuple(tokens.shape)}, expected {expected}")
    timing = rep_timing(clock.t_start, clock.events, batch=prompts.shape[0], prompt_len=prompts.shape[1], n_new=n_new)
    return timing, tokens


def measure(
    engine: Engine,
    prompts: torch.Tensor,
    n_new: int,
    reps: Repetitions,
    meter: EnergyMeter,
    device: torch.device,
    on_rep: Callable[[int, bool], None] = lambda n, warm: None,
    now: Callable[[], float] = time.perf_counter,
    watch: WindowWatch | None = None,
) -> CellMeasurement:
    engine.warm(prompts, n_new)
    for i in range(reps.warmup):
        run_once(engine, prompts, n_new, device)
        on_rep(i + 1, True)
    engine.reset_stats()
    # an energy counter needs a window of at least its resolution: keep repeating until it is long enough
    min_seconds = max(reps.min_seconds, meter.min_window_s if meter.available else 0.0)
    timings: list[RepTiming] = []
    first_tokens = None
    watch = watch or WindowWatch(device)
    watch.start()
    with PeakMemory(device) as mem:
        meter.start()
        t0 = now()
        while True:
            timing, tokens = run_once(engine, prompts, n_new, device)
            timings.append(timing)
            if first_tokens is None:
                first_tokens = tokens.detach().cpu()
            elapsed = now() - t0
            on_rep(len(timings), False)
            watch.sample()
            if len(timings) >= reps.max_reps:
                stopped_by = "max_reps"
                break
            if len(timings) >= reps.min_reps and elapsed >= min_seconds:
                stopped_by = "min_reps_and_seconds"
                break
        reading = meter.stop()
    window = watch.stop()
    return CellMeasurement(
        timings, reps.warmup, elapsed, stopped_by, reading, mem.result, engine.stats(), first_tokens, window
    )
