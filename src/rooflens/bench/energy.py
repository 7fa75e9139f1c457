"""Energy meters with measured windows only.

Every joule reported here comes from a hardware counter or from integrating measured power
samples; nothing is estimated from TDP or utilisation. Where no counter exists the meter is an
:class:`UnavailableMeter` whose readings have ``joules=None`` and a ``reason``.

Meters:

* :class:`NvmlEnergyCounterMeter` -- NVML total-energy counter (mJ, Volta and newer).
* :class:`PowerSamplingMeter` -- generic trapezoid integrator of a power reading, sampled by a
  background thread; used for NVML power (mW) where the energy counter is not supported.
* :class:`RaplMeter` -- Linux powercap RAPL package counters (``energy_uj``), polled by a
  background thread so that wrap-around is corrected.
* :class:`UnavailableMeter` -- no counter; says why.

Use :func:`select_meter` to pick one for a device string such as ``"cpu"`` or ``"cuda:1"``; which GPU
or RAPL domains that is comes from :mod:`rooflens.device`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rooflens.device import gpu
from rooflens.device.rapl import POWERCAP_ROOT, RaplZone, discover_rapl
from rooflens.device.spec import DeviceSpecError, parse_device

__all__ = [
    "POWERCAP_ROOT",
    "EnergyMeter",
    "EnergyReading",
    "EnergyWindow",
    "MeterUnavailableError",
    "NvmlEnergyCounterMeter",
    "PowerSamplingMeter",
    "RaplMeter",
    "UnavailableMeter",
    "combine_readings",
    "select_meter",
    "tokens_per_joule",
]

#: NVML's energy counter (and its power average) refresh only every ~100 ms.
NVML_MIN_WINDOW_S = 1.0
#: RAPL counters refresh every ~1 ms; windows under this are dominated by read jitter.
RAPL_MIN_WINDOW_S = 0.1


class MeterUnavailableError(RuntimeError):
    """Raised by a meter constructor when its counter cannot be read; the message is the reason."""


@dataclass(frozen=True)
class EnergyReading:
    """Energy over one measured window."""

    joules: float | None
    seconds: float
    meter: str
    domain: str
    short_window: bool
    warnings: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def mean_power_w(self) -> float | None:
        """Mean power over the window in watts, or None when not measured."""
        if self.joules is None or self.seconds <= 0:
            return None
        return self.joules / self.seconds


class EnergyWindow:
    """Holder filled by :meth:`EnergyMeter.window` when the ``with`` block exits."""

    reading: EnergyReading | None

    def __init__(self) -> None:
        self.reading = None


class _Measured(NamedTuple):
    joules: float | None
    warnings: tuple[str, ...] = ()
    reason: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class EnergyMeter(ABC):
    """Measures energy between :meth:`start` and :meth:`stop`.

    Subclasses implement ``_begin`` (read the counter, start any poller) and ``_end`` (stop
    and return the measured energy). ``stop`` never raises for measurement failures: they come
    back as ``joules=None`` with a reason. Misuse (stop without start, start twice) raises
    ``RuntimeError``.
    """

    name: str
    domain: str
    min_window_s: float

    def __init__(
        self,
        *,
        name: str,
        domain: str,
        min_window_s: float,
        clock: Callable[[], float] | None = None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.domain = domain
        self.min_window_s = float(min_window_s)
        self._clock: Callable[[], float] = clock or time.perf_counter
        self._static_warnings = tuple(warnings)
        self._t0: float | None = None

    @property
    def available(self) -> bool:
        """Whether this meter measures anything."""
        return True

    @property
    def running(self) -> bool:
        """Whether a window is open."""
        return self._t0 is not None

    def start(self) -> None:
        """Open a measurement window."""
        if self._t0 is not None:
            raise RuntimeError(f"{type(self).__name__}.start() called twice without stop()")
        t0 = self._clock()
        self._begin()
        self._t0 = t0

    def stop(self) -> EnergyReading:
        """Close the window and return its reading."""
        if self._t0 is None:
            raise RuntimeError(f"{type(self).__name__}.stop() called without start()")
        try:
            measured = self._end()
        except Exception as exc:  # a measurement failure is a reading, not a crash
            measured = _Measured(None, reason=f"{self.name} read failed: {_describe(exc)}")
        t1 = self._clock()
        seconds = max(0.0, t1 - self._t0)
        self._t0 = None

        warnings = list(self._static_warnings) + list(measured.warnings)
        short = seconds < self.min_window_s
        if short:
            warnings.append(
                f"window of {seconds:.3f} s is shorter than the {self.name} minimum of "
                f"{self.min_window_s:.2f} s; the energy is unreliable, lengthen the window"
            )
        return EnergyReading(
            joules=measured.joules,
            seconds=seconds,
            meter=self.name,
            domain=self.domain,
            short_window=short,
            warnings=tuple(warnings),
            reason=measured.reason,
        )

    @contextmanager
    def window(self) -> Iterator[EnergyWindow]:
        """``with meter.window() as w: ...`` then ``w.reading``; stops even if the body raises."""
        holder = EnergyWindow()
        self.start()
        try:
            yield holder
        finally:
            holder.reading = self.stop()

    @abstractmethod
    def _begin(self) -> None:
        """Read the starting counter value / start sampling."""

    @abstractmethod
    def _end(self) -> _Measured:
        """Read the final counter value / stop sampling and return the energy."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, domain={self.domain!r})"


class UnavailableMeter(EnergyMeter):
    """A meter that measures nothing; every reading has ``joules=None`` and ``reason``."""

    def __init__(self, reason: str, *, clock: Callable[[], float] | None = None) -> None:
        super().__init__(name="unavailable", domain="", min_window_s=0.0, clock=clock)
        self.reason = reason

    @property
    def available(self) -> bool:
        return False

    def _begin(self) -> None:
        pass

    def _end(self) -> _Measured:
        return _Measured(None, reason=self.reason)

    def __repr__(self) -> str:
        return f"UnavailableMeter(reason={self.reason!r})"


# --------------------------------------------------------------------------------------------
# NVML


class NvmlEnergyCounterMeter(EnergyMeter):
    """NVML total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ, Volta+).

    The counter is read once at construction; ``NVMLError_NotSupported`` (pre-Volta, some
    vGPU/MIG setups) raises :class:`MeterUnavailableError`. Deltas are taken on the raw integer
    millijoules. A counter that goes backwards (driver reload) gives ``joules=None`` with reason
    ``"counter reset ..."``. The counter is ``handle``'s (an NVML device handle, see
    :func:`rooflens.device.gpu.cuda_gpu`) unless ``read_mj`` is given; ``read_mj`` and ``clock`` are
    injectable for tests. ``device_index`` is the GPU's NVML index, for messages.
    """

    def __init__(
        self,
        device_index: int,
        *,
        handle: Any = None,
        read_mj: Callable[[], int] | None = None,
        clock: Callable[[], float] | None = None,
        domain: str | None = None,
        min_window_s: float = NVML_MIN_WINDOW_S,
        warnings: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            name="nvml-energy-counter",
            domain=domain if domain is not None else f"gpu{device_index} board",
            min_window_s=min_window_s,
            clock=clock,
            warnings=warnings,
        )
        self.device_index = device_index
        if read_mj is None:
            if handle is None:
                raise ValueError("NvmlEnergyCounterMeter needs an NVML handle or read_mj")
            nv = gpu.nvml()

            def read_mj() -> int:
                return nv.nvmlDeviceGetTotalEnergyConsumption(handle)

        self._read_mj: Callable[[], int] = read_mj
        try:
            int(self._read_mj())
        except Exception as exc:
            if gpu.is_not_supported(exc):
                raise MeterUnavailableError(
                    f"NVML total-energy counter not supported on gpu{device_index} "
                    "(NVMLError_NotSupported; needs Volta or newer)"
                ) from exc
            raise MeterUnavailableError(
                f"NVML total-energy counter unreadable on gpu{device_index}: {_describe(exc)}"
            ) from exc
        self._start_mj: int | None = None
        self._start_error: str | None = None

    def _begin(self) -> None:
        try:
            self._start_mj = int(self._read_mj())
            self._start_error = None
        except Exception as exc:
            self._start_mj = None
            self._start_error = _describe(exc)

    def _end(self) -> _Measured:
        if self._start_mj is None:
            return _Measured(None, reason=f"NVML energy read failed at start: {self._start_error}")
        start_mj = self._start_mj
        end_mj = int(self._read_mj())
        if end_mj < start_mj:
            return _Measured(
                None,
                warnings=(f"NVML energy counter went backwards ({start_mj} -> {end_mj} mJ)",),
                reason=f"counter reset: NVML energy counter went backwards ({start_mj} -> "
                f"{end_mj} mJ), probably a driver reload",
            )
        delta_mj = end_mj - start_mj
        warnings: tuple[str, ...] = ()
        if delta_mj == 0:
            warnings = ("NVML energy counter did not advance during the window",)
        return _Measured(delta_mj / 1000.0, warnings=warnings)


class PowerSamplingMeter(EnergyMeter):
    """Integrates ``read_power_w()`` (watts) over the window with the trapezoid rule.

    A background thread samples every ``interval_s``; the window's first and last samples are
    taken in ``start``/``stop``. Failed samples are skipped (the trapezoid bridges the gap) and
    reported as warnings; fewer than two good samples gives ``joules=None``.
    """

    def __init__(
        self,
        read_power_w: Callable[[], float],
        *,
        name: str,
        domain: str,
        interval_s: float = 0.05,
        min_window_s: float = 1.0,
        clock: Callable[[], float] | None = None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        super().__init__(name=name, domain=domain, min_window_s=min_window_s, clock=clock, warnings=warnings)
        self.interval_s = float(interval_s)
        self._read_power_w = read_power_w
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._last: tuple[float, float] | None = None
        self._energy_j = 0.0
        self._n_ok = 0
        self._n_failed = 0
        self._last_error: str | None = None

    def _sample(self) -> None:
        t = self._clock()
        try:
            p = float(self._read_power_w())
        except Exception as exc:
            with self._lock:
                self._n_failed += 1
                self._last_error = _describe(exc)
            return
        with self._lock:
            if self._last is not None:
                t_prev, p_prev = self._last
                self._energy_j += 0.5 * (p + p_prev) * (t - t_prev)
            self._last = (t, p)
            self._n_ok += 1

    def _run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self._sample()

    def _begin(self) -> None:
        self._reset_state()
        self._stop_event.clear()
        self._sample()
        self._thread = threading.Thread(target=self._run, name=f"rooflens-{self.name}", daemon=True)
        self._thread.start()

    def _end(self) -> _Measured:
        warnings: list[str] = []
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 4 * self.interval_s))
            if self._thread.is_alive():
                warnings.append("power sampler thread did not stop in time (a read is hanging)")
            self._thread = None
        self._sample()
        with self._lock:
            n_ok, n_failed, energy, err = (self._n_ok, self._n_failed, self._energy_j, self._last_error)
        if n_failed:
            warnings.append(f"{n_failed} of {n_ok + n_failed} power samples failed ({err})")
        if n_ok < 2:
            return _Measured(
                None,
                warnings=tuple(warnings),
                reason=f"only {n_ok} successful power sample(s); cannot integrate"
                + (f" (last error: {err})" if err else ""),
            )
        return _Measured(energy, warnings=tuple(warnings))


# --------------------------------------------------------------------------------------------
# RAPL


class RaplMeter(EnergyMeter):
    """CPU package energy from Linux powercap RAPL (``intel-rapl:N`` / ``amd-rapl:N``).

    Only top-level zones whose ``name`` starts with ``package`` are summed (subzones such as
    ``intel-rapl:0:0`` are inside their package and would double count). A background thread
    reads every ``poll_s`` and accumulates integer microjoule deltas with wrap correction
    (``end < start`` -> ``end + max_energy_range_uj - start``), so a wrap is never missed as long
    as ``poll_s`` is far below the wrap period (minutes). Raises :class:`MeterUnavailableError`
    when no package zone is readable.
    """

    def __init__(
        self,
        root: Path = POWERCAP_ROOT,
        *,
        poll_s: float = 0.5,
        min_window_s: float = RAPL_MIN_WINDOW_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        zones, reason = discover_rapl(Path(root))
        if not zones:
            raise MeterUnavailableError(reason or f"no readable RAPL under {root}")
        super().__init__(
            name="rapl",
            domain="cpu package(s) " + ",".join(z.label for z in zones),
            min_window_s=min_window_s,
            clock=clock,
        )
        self.root = Path(root)
        self.poll_s = float(poll_s)
        self.zones: tuple[RaplZone, ...] = tuple(zones)
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._prev: list[int | None] = [None] * len(zones)
        self._acc_uj = 0
        self._wraps = 0
        self._read_failures = 0
        self._last_error: str | None = None
        self._start_error: str | None = None

    def _poll(self) -> str | None:
        """Read every zone once and accumulate; return an error string if any read failed."""
        error: str | None = None
        with self._lock:
            for i, zone in enumerate(self.zones):
                try:
                    cur = zone.read_uj()
                except (OSError, ValueError) as exc:
                    error = f"{zone.path.name}: {_describe(exc)}"
                    self._read_failures += 1
                    self._last_error = error
                    continue
                prev = self._prev[i]
                if prev is not None:
                    if cur >= prev:
                        self._acc_uj += cur - prev
                    else:
                        self._acc_uj += cur + zone.max_range_uj - prev
                        self._wraps += 1
                self._prev[i] = cur
        return error

    def _run(self) -> None:
        while not self._stop_event.wait(self.poll_s):
            self._poll()

    def _begin(self) -> None:
        with self._lock:
            self._prev = [None] * len(self.zones)
            self._acc_uj = 0
            self._wraps = 0
            self._read_failures = 0
            self._last_error = None
        self._stop_event.clear()
        self._start_error = self._poll()
        self._thread = threading.Thread(target=self._run, name="rooflens-rapl-poll", daemon=True)
        self._thread.start()

    def _end(self) -> _Measured:
        warnings: list[str] = []
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 4 * self.poll_s))
            if self._thread.is_alive():
                warnings.append("RAPL poller thread did not stop in time")
            self._thread = None
        if self._start_error is not None:
            return _Measured(None, reason=f"RAPL read failed at start: {self._start_error}")
        end_error = self._poll()
        if end_error is not None:
            return _Measured(None, reason=f"RAPL read failed at stop: {end_error}")
        with self._lock:
            acc_uj, wraps, failures, err = (self._acc_uj, self._wraps, self._read_failures, self._last_error)
        if wraps:
            warnings.append(f"RAPL counter wrapped {wraps} time(s); corrected")
        if failures:
            warnings.append(
                f"{failures} RAPL poll read(s) failed mid-window ({err}); a wrap during the gap would be missed"
            )
        return _Measured(acc_uj / 1e6, warnings=tuple(warnings))


# --------------------------------------------------------------------------------------------
# Selection


def _board_domain(g: gpu.VisibleGpu) -> tuple[str, tuple[str, ...]]:
    """The energy domain of ``g``'s board, and what a reading of it cannot vouch for."""
    notes = g.caveats
    where = [f"cuda:{g.cuda_index}"] if g.nvml_index != g.cuda_index else []
    if g.mig_uuid is not None:
        where.append(f"MIG {g.mig_uuid}")
        notes += (f"cuda:{g.cuda_index} is a MIG instance: the board's energy includes the other instances' work",)
    return f"gpu{g.nvml_index} board" + (f" ({', '.join(where)})" if where else ""), notes


def _select_cuda(cuda_index: int) -> EnergyMeter:
    try:
        g = gpu.cuda_gpu(cuda_index)
    except gpu.NvmlUnavailableError as exc:
        return UnavailableMeter(f"no NVML: {exc}")
    except gpu.GpuError as exc:
        return UnavailableMeter(str(exc))
    domain, notes = _board_domain(g)
    try:
        return NvmlEnergyCounterMeter(g.nvml_index, handle=g.board, domain=domain, warnings=notes)
    except MeterUnavailableError as exc:
        counter_reason = str(exc)
    nv = gpu.nvml()

    def read_power_w() -> float:
        return nv.nvmlDeviceGetPowerUsage(g.board) / 1000.0

    try:
        read_power_w()
    except Exception as exc:
        return UnavailableMeter(f"{counter_reason}; NVML power sampling unavailable: {_describe(exc)}")
    return PowerSamplingMeter(
        read_power_w,
        name="nvml-power-sampling",
        domain=domain,
        interval_s=0.05,
        min_window_s=NVML_MIN_WINDOW_S,
        warnings=notes
        + (
            f"{counter_reason}; energy integrated from nvmlDeviceGetPowerUsage samples, which "
            "some GPUs report as a ~1 s average",
        ),
    )


def _select_cpu() -> EnergyMeter:
    try:
        return RaplMeter(POWERCAP_ROOT)
    except MeterUnavailableError as exc:
        return UnavailableMeter(str(exc))


def select_meter(device: str) -> EnergyMeter:
    """Best measured meter for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``); never raises.

    CUDA: NVML energy counter, else NVML power sampling, else :class:`UnavailableMeter` with the
    NVML error. CPU: :class:`RaplMeter` if a package zone is readable, else
    :class:`UnavailableMeter` with the reason. Anything else is unavailable.
    """
    unsupported = UnavailableMeter(f"no energy meter for device {device!r} (supported: cpu, cuda[:N])")
    try:
        spec = parse_device(device)
    except DeviceSpecError:
        return unsupported
    try:
        if spec.type == "cpu":
            return _select_cpu()
        if spec.type == "cuda":
            return _select_cuda(spec.index if spec.index is not None else 0)
        return unsupported
    except Exception as exc:  # selection must never take a benchmark down
        return UnavailableMeter(f"energy meter selection failed for {device!r}: {_describe(exc)}")


def tokens_per_joule(tokens: int, reading: EnergyReading) -> float | None:
    """``tokens / joules``; None when the reading has no energy or non-positive energy."""
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    if reading.joules is None or reading.joules <= 0:
        return None
    return tokens / reading.joules


def combine_readings(readings: list[EnergyReading]) -> EnergyReading:
    """One reading for several windows of one meter (an engine's repetitions in interleaved rounds): joules and
    seconds summed; unmeasured when any window is. Short windows are counted, not hidden: summing them is only as
    good as each window's own reading (a counter is read at both ends of each)."""
    if not readings:
        raise ValueError("no readings to combine")
    first = readings[0]
    seconds = sum(r.seconds for r in readings)
    missing = next((r for r in readings if r.joules is None), None)
    warnings = list(dict.fromkeys(w for r in readings for w in r.warnings if not w.startswith("window of ")))
    short = sum(r.short_window for r in readings)
    if short:
        warnings.append(
            f"{short} of {len(readings)} per-repetition windows were shorter than the {first.meter} minimum; "
            "their summed energy is unreliable"
        )
    return EnergyReading(
        joules=None if missing else sum(r.joules or 0.0 for r in readings),
        seconds=seconds,
        meter=first.meter,
        domain=first.domain,
        short_window=bool(short),
        warnings=tuple(warnings),
        reason=missing.reason if missing else None,
    )
