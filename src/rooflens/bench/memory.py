"""Peak memory over a window: the CUDA caching allocator on GPU, process RSS (sampled) on CPU."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil
import torch


@dataclass(frozen=True)
class MemoryPeak:
    kind: str  # "cuda_allocator" | "process_rss"
    peak_bytes: int
    baseline_bytes: int
    how: str


class PeakMemory:
    """Context manager measuring the peak memory of the code it wraps."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device = device
        self.interval_s = interval_s
        self.result: MemoryPeak | None = None
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None
        self._proc = psutil.Process()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._baseline = self._peak = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._poll, name="rooflens-rss", daemon=True)
            self._thread.start()
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
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.result = MemoryPeak(
            "process_rss",
            self._peak,
            self._baseline,
            f"process RSS sampled every {self.interval_s * 1000:.0f} ms over the measured repetitions",
        )
