"""Peak memory over a window: the CUDA caching allocator on GPU, the kernel's RSS high-water mark on CPU.

No thread runs beside the measured code: a poller competing for the cores that torch's threads
use raised TPOT by ~4 % at batch 1 (issue 9). On Linux the kernel keeps the process's RSS
high-water mark (``VmHWM`` in ``/proc/self/status``), which writing ``5`` to
``/proc/self/clear_refs`` resets; where that is not possible, RSS is read at both ends of the
window and the record says that peaks in between are missed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_HIGH_WATER_MARK = "5"  # proc(5): reset the peak resident set size ("high water mark")


@dataclass(frozen=True)
class MemoryPeak:
    kind: str  # "cuda_allocator" | "process_rss"
    peak_bytes: int
    baseline_bytes: int
    how: str


def _high_water_mark() -> int | None:
    """``VmHWM`` of this process in bytes, or None where /proc does not have it."""
    try:
        m = re.search(r"^VmHWM:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def _reset_high_water_mark() -> bool:
    try:
        CLEAR_REFS.write_text(RESET_HIGH_WATER_MARK)
    except OSError:
        return False
    return _high_water_mark() is not None


class PeakMemory:
    """Context manager measuring the peak memory of the code it wraps, without a sampling thread."""

    def __init__(self, device: torch.device):
        self.device = device
        self.result: MemoryPeak | None = None
        self._proc = psutil.Process()
        self._hwm = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._baseline = self._proc.memory_info().rss
            self._hwm = _reset_high_water_mark()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.result = MemoryPeak(
                "cuda_allocator",
                torch.cuda.max_memory_allocated(self.device),
                self._baseline,
                "torch.cuda.max_memory_allocated over the measured repetitions",
            )
            return
        end = self._proc.memory_info().rss
        hwm = _high_water_mark() if self._hwm else None
        if hwm is not None:
            peak, how = max(hwm, end), "process RSS high-water mark (VmHWM, reset before the measured repetitions)"
        else:
            peak = max(self._baseline, end)
            how = "process RSS read before and after the measured repetitions (no resettable high-water mark here: peaks in between are missed)"
        self.result = MemoryPeak("process_rss", peak, self._baseline, how)


def highest_peak(peaks: list[MemoryPeak]) -> MemoryPeak:
    """The highest of several windows' peaks (an engine's repetitions in interleaved rounds), the first baseline."""
    top = max(peaks, key=lambda p: p.peak_bytes)
    how = f"{top.how}; highest over {len(peaks)} per-repetition windows (interleaved rounds)"
    return MemoryPeak(top.kind, top.peak_bytes, peaks[0].baseline_bytes, how)
