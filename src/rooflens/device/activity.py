"""What else the machine is doing: the load average, and other processes' CPU time over a window.

A measurement is only as good as the machine is quiet. Two figures say how quiet it is:

* the **load average** (``os.getloadavg()``): runnable threads, averaged over 1, 5 and 15 minutes
  — slow to move, and it counts this process's own threads too;
* **other processes' CPU time** in a window: the CPU time every CPU spent busy (``psutil.cpu_times()``,
  system-wide, from ``/proc/stat`` on Linux) minus this process's own (``psutil.Process().cpu_times()``,
  all its threads), as a share of the core-seconds the window had (``wall time x logical cores``).
  1.0 means every core was busy with something else the whole time. Steal time (a hypervisor
  running another guest) counts as busy: it takes the cores away all the same.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = ["CpuActivity", "ActivityWindow", "load_average", "logical_cores", "watch"]


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return None
    return round(one, 2), round(five, 2), round(fifteen, 2)


def logical_cores() -> int:
    """Logical cores the OS schedules on (what the load average and CPU time are judged against)."""
    import psutil

    return int(psutil.cpu_count(logical=True) or os.cpu_count() or 1)


def _busy_cpu_s() -> float:
    """Seconds all CPUs together spent busy since boot: every state but idle and I/O wait."""
    import psutil

    times = psutil.cpu_times()
    fields = times._asdict()
    total = sum(fields.values())
    # Linux counts guest time inside user/nice already (psutil reports it again as its own field)
    total -= fields.get("guest", 0.0) + fields.get("guest_nice", 0.0)
    return total - fields.get("idle", 0.0) - fields.get("iowait", 0.0)


def _own_cpu_s() -> float:
    """Seconds this process (all its threads) spent on a CPU, in user and kernel mode."""
    import psutil

    own = psutil.Process().cpu_times()
    return float(own.user + own.system)


@dataclass(frozen=True)
class CpuActivity:
    """What the machine did in one window, besides this process."""

    wall_s: float
    cores: int
    other_cpu_s: float  # CPU seconds of every other process (system-wide busy minus this process's)
    load_avg: tuple[float, float, float] | None  # at the end of the window

    @property
    def other_share(self) -> float:
        """Other processes' CPU time as a share of the window's core-seconds (0: idle, 1: every core busy)."""
        return self.other_cpu_s / (self.wall_s * self.cores) if self.wall_s > 0 else 0.0


class ActivityWindow:
    """A window opened now; :meth:`stop` says what else ran in it."""

    def __init__(self) -> None:
        self._cores = logical_cores()
        self._t0 = time.perf_counter()
        self._busy0 = _busy_cpu_s()
        self._own0 = _own_cpu_s()

    def stop(self) -> CpuActivity:
        busy, own = _busy_cpu_s() - self._busy0, _own_cpu_s() - self._own0
        return CpuActivity(
            wall_s=time.perf_counter() - self._t0,
            cores=self._cores,
            other_cpu_s=max(0.0, busy - own),  # the counters tick at 10 ms: a tiny negative is rounding
            load_avg=load_average(),
        )


def watch() -> ActivityWindow:
    """Open a window: everything the machine does from now until ``stop()`` is counted."""
    return ActivityWindow()
