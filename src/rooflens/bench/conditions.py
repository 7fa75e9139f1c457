"""The machine's conditions across a cell's measured window, for its validity (:mod:`rooflens.bench.validity`).

Sampled outside the timed code: the 1-minute load average at the window's start and end; on a CPU cell
the highest current clock among the CPUs this process may run on, at the start and after each
repetition; on a GPU cell NVML's clocks-event (throttle) reasons at the same moments. What cannot be
read here (no cpufreq in sysfs, no NVML) is said in a note, never guessed. No thread is started.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rooflens.device import cpu, gpu


def read_loadavg() -> float | None:
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return None


@dataclass
class WindowConditions:
    """What :class:`WindowWatch` read across one measured window (all ``measured``)."""

    device_type: str
    threads: int  # torch threads of the measuring process
    cores: int  # logical CPUs of the machine (the load average counts the whole machine)
    load_start: float | None = None
    load_end: float | None = None
    cpu_khz_min: int | None = None  # lowest of the per-sample highest clocks
    cpu_khz_max: int | None = None
    cpu_samples: int = 0
    gpu_reasons: int = 0  # NVML clocks-event reasons seen in any sample (OR of the bit masks)
    gpu_samples: int = 0
    notes: list[str] = field(default_factory=list)  # what could not be read here, and why
    other_measurement: bool | None = None
    """Whether another measurement ran on the machine in the window: True (a reason), False (checked:
    none), None (not checked). :mod:`rooflens.bench.measure` sets False when the window ran under the machine
    lock (no other rooflens measurement can run then); other programs show in the load checks."""


class WindowWatch:
    """Samples the conditions of one measured window: :meth:`start`, :meth:`sample` after each repetition,
    :meth:`stop`. Each sample costs a few file reads or one NVML call, between repetitions."""

    def __init__(self, device: torch.device, cpus: set[int] | None = None):
        self.device = device
        self.cpus = cpus if cpus is not None else _allowed_cpus()
        self.conditions = WindowConditions(device.type, torch.get_num_threads(), os.cpu_count() or 1)
        self._gpu_read: Callable[[], int] | None = None

    def start(self) -> None:
        c = self.conditions
        c.load_start = read_loadavg()
        if self.device.type == "cuda":
            try:
                self._gpu_read = gpu.clock_event_reader(self.device.index or 0)
            except gpu.GpuError as err:
                c.notes.append(f"GPU clocks-event reasons not readable here: {err}")
        self.sample()

    def sample(self) -> None:
        if self.device.type == "cuda":
            self._sample_gpu()
        else:
            self._sample_cpu()

    def stop(self) -> WindowConditions:
        c = self.conditions
        c.load_end = read_loadavg()
        if c.load_start is None or c.load_end is None:
            c.notes.append("load average not readable here (os.getloadavg)")
        if self.device.type != "cuda" and c.cpu_samples == 0:
            c.notes.append(f"CPU clocks not readable here (no cpufreq scaling_cur_freq under {cpu.CPUFREQ_ROOT})")
        return c

    def _sample_cpu(self) -> None:
        clocks = cpu.cpu_clocks_khz(self.cpus)
        if not clocks:
            return
        c, top = self.conditions, max(clocks.values())
        c.cpu_khz_min = top if c.cpu_khz_min is None else min(c.cpu_khz_min, top)
        c.cpu_khz_max = top if c.cpu_khz_max is None else max(c.cpu_khz_max, top)
        c.cpu_samples += 1

    def _sample_gpu(self) -> None:
        if self._gpu_read is None:
            return
        c = self.conditions
        try:
            c.gpu_reasons |= self._gpu_read()
            c.gpu_samples += 1
        except gpu.GpuError as err:
            c.notes.append(f"GPU clocks-event reasons not readable here: {err}")
            self._gpu_read = None


def merged_window(windows: list[WindowConditions]) -> WindowConditions:
    """One window's conditions for several measured windows of one cell (``rooflens ab``'s blocks): the load at
    the first start and the last end, the clocks over all of them, every note once."""
    first, last = windows[0], windows[-1]
    lows = [w.cpu_khz_min for w in windows if w.cpu_khz_min is not None]
    highs = [w.cpu_khz_max for w in windows if w.cpu_khz_max is not None]
    reasons = 0
    for w in windows:
        reasons |= w.gpu_reasons
    return WindowConditions(
        device_type=first.device_type,
        threads=first.threads,
        cores=first.cores,
        load_start=first.load_start,
        load_end=last.load_end,
        cpu_khz_min=min(lows) if lows else None,
        cpu_khz_max=max(highs) if highs else None,
        cpu_samples=sum(w.cpu_samples for w in windows),
        gpu_reasons=reasons,
        gpu_samples=sum(w.gpu_samples for w in windows),
        notes=list(dict.fromkeys(n for w in windows for n in w.notes)),
        other_measurement=last.other_measurement,
    )
