"""Whether a cell's measurement can be vouched for: the rules, in one place.

A measured cell is ``valid`` unless one of these holds (each an ``invalid`` reason with the measured value
and the limit it broke):

- ``cv``: the CV (std / mean) of the primary metric over the measured repetitions is above ``max_cv``
  (the experiment's ``validity.max_cv``; by default 5 % on a GPU, 10 % on a CPU: the device the cell ran
  on). The primary metric is decode tok/s, or e2e tok/s where a cell has no usable decode figures.
- ``repetitions`` / ``seconds``: fewer measured repetitions than ``min_reps``, or a shorter measured window
  than ``min_seconds`` (``max_reps`` stopped it first): what the runner measured against what was asked.
- ``load_at_start`` / ``load_at_end``: the 1-minute load average at the start or end of the measured
  window is above ``own + max_other_load x cores``. ``own`` is the run's own share of the load: its torch
  threads on a CPU cell (it may keep that many cores busy), 1 on a GPU cell (the thread launching the
  kernels); ``cores`` is the machine's logical CPUs (the load average counts the whole machine). With the
  default 0.5: on 8 cores, a 4-thread CPU run is invalid above a load of 4 + 4 = 8.
- ``cpu_clock`` (CPU cells): the highest current clock of this process's CPUs (cpufreq), sampled at the
  window's start and after each repetition, fell by more than ``max_clock_drop`` (default 10 %) of its
  highest sample.
- ``gpu_throttle`` (GPU cells): NVML reported a slowdown clocks-event reason (hardware slowdown, software or
  hardware thermal slowdown, hardware power brake) in any sample of the window. The software power cap
  alone is a note: a GPU at its power limit is its sustained state, not a disturbance.
- ``other_measurement``: another measurement ran on the machine in the window. A window measured under the
  machine lock (:mod:`rooflens.device.lock`) records False: no other rooflens measurement could run; other
  programs show in the load checks. Where nothing filled it, a note says it was not checked.

What cannot be read on this machine (no load average, no cpufreq, no NVML) is a note, never a reason.
Cells that did not measure are ``n/a``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rooflens.bench.conditions import WindowConditions
from rooflens.config import Repetitions, ValidityLimits
from rooflens.device.gpu import CLOCK_SLOWDOWNS, describe_clock_events
from rooflens.results.record import Metric, Validity, ValidityReason

DEFAULT_MAX_CV = {"cuda": 0.05, "cpu": 0.10}
"""``validity.max_cv`` when the experiment does not set it, by the type of device the cell ran on."""

PRIMARY_METRICS = ("decode_tok_s", "e2e_tok_s")
SOFTWARE_POWER_CAP = 0x4


@dataclass
class _Verdict:
    reasons: list[ValidityReason] = field(default_factory=list)
    limits: dict[str, float] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def reason(self, check: str, value: float, limit: float | None, unit: str, source: str, message: str) -> None:
        self.reasons.append(
            ValidityReason(check=check, value=value, limit=limit, unit=unit, source=source, message=message)
        )


def _percents(value: float, limit: float) -> tuple[str, str]:
    """``("14%", "10%")``, with a decimal where whole percents would read equal (``("10.4%", "10%")``)."""
    digits = 0 if round(100 * value) > round(100 * limit) else 1
    return f"{100 * value:.{digits}f}%", f"{100 * limit:.{digits if (100 * limit) % 1 else 0}f}%"


def max_cv(limits: ValidityLimits, device_type: str) -> float:
    """The CV limit of a cell on a device of this type: the experiment's, else the device type's default."""
    if limits.max_cv is not None:
        return limits.max_cv
    return DEFAULT_MAX_CV["cuda" if device_type == "cuda" else "cpu"]


def primary_metric(metrics: dict[str, Metric]) -> tuple[str, Metric] | None:
    """Decode tok/s, else e2e tok/s: the first whose samples are all finite and positive."""
    for name in PRIMARY_METRICS:
        m = metrics.get(name)
        if m is not None and m.samples and all(math.isfinite(x) and x > 0 for x in m.samples):
            return name, m
    return None


def judge_cell(
    limits: ValidityLimits,
    asked: Repetitions,
    metrics: dict[str, Metric],
    reps: int,
    seconds: float,
    window: WindowConditions,
) -> Validity:
    """The validity of one measured cell: ``reps`` repetitions over ``seconds`` (what the runner measured),
    their ``metrics``, and the machine's conditions over the window."""
    v = _Verdict()
    _check_cv(v, limits, window.device_type, metrics)
    _check_repetitions(v, asked, reps, seconds)
    _check_load(v, limits, window)
    if window.device_type == "cuda":
        _check_gpu(v, window)
    else:
        _check_cpu_clock(v, limits, window)
    if window.other_measurement:
        v.reason("other_measurement", 1.0, None, "", "measured", "another measurement ran on this machine")
    elif window.other_measurement is None:
        v.notes.append("another measurement on this machine: not checked")
    v.notes += window.notes
    return Validity(
        status="invalid" if v.reasons else "valid",
        reasons=v.reasons,
        limits=v.limits,
        measured=v.measured,
        notes=v.notes,
        other_measurement=window.other_measurement,
    )


def _check_cv(v: _Verdict, limits: ValidityLimits, device_type: str, metrics: dict[str, Metric]) -> None:
    limit = v.limits["max_cv"] = max_cv(limits, device_type)
    found = primary_metric(metrics)
    if found is None:
        v.notes.append("no primary metric (decode or e2e tok/s) to judge the spread of")
        return
    name, m = found
    if m.n < 2:
        v.notes.append(f"the spread of {name} cannot be judged from {m.n} repetition")
        return
    cv = v.measured[f"cv_{name}"] = m.cv
    if cv > limit:
        shown, most = _percents(cv, limit)
        v.reason("cv", cv, limit, "fraction", "derived", f"cv {shown} > {most}")


def _check_repetitions(v: _Verdict, asked: Repetitions, reps: int, seconds: float) -> None:
    v.limits["min_reps"], v.limits["min_seconds"] = asked.min_reps, asked.min_seconds
    v.measured["reps"], v.measured["seconds"] = reps, seconds
    if reps < asked.min_reps:
        v.reason("repetitions", reps, asked.min_reps, "reps", "measured", f"{reps} reps < min_reps {asked.min_reps}")
    if seconds < asked.min_seconds:
        message = f"{seconds:.3f}".rstrip("0").rstrip(".") + f" s < min_seconds {asked.min_seconds:g}"
        v.reason("seconds", seconds, asked.min_seconds, "s", "measured", message)


def _check_load(v: _Verdict, limits: ValidityLimits, w: WindowConditions) -> None:
    own = w.threads if w.device_type != "cuda" else 1
    allowed = v.limits["max_load"] = own + limits.max_other_load * w.cores
    for when, load in (("start", w.load_start), ("end", w.load_end)):
        if load is None:
            continue
        v.measured[f"load_1m_at_{when}"] = load
        if load > allowed:
            message = (
                f"load {load:.2f} at {when} > {allowed:.2f} ({own} own + {limits.max_other_load:g} x {w.cores} cores)"
            )
            v.reason(f"load_at_{when}", load, allowed, "runnable tasks (1-min load average)", "measured", message)


def _check_cpu_clock(v: _Verdict, limits: ValidityLimits, w: WindowConditions) -> None:
    limit = v.limits["max_clock_drop"] = limits.max_clock_drop
    if w.cpu_khz_min is None or w.cpu_khz_max is None or w.cpu_khz_max <= 0:
        return  # the watch's note says why
    v.measured["cpu_khz_min"], v.measured["cpu_khz_max"] = w.cpu_khz_min, w.cpu_khz_max
    drop = v.measured["cpu_clock_drop"] = 1 - w.cpu_khz_min / w.cpu_khz_max
    if drop > limit:
        shown, most = _percents(drop, limit)
        clocks = f"{w.cpu_khz_max / 1e6:.2f} -> {w.cpu_khz_min / 1e6:.2f} GHz"
        message = f"cpu clock -{shown} ({clocks}) > {most}"
        v.reason("cpu_clock", drop, limit, "fraction", "derived", message)


def _check_gpu(v: _Verdict, w: WindowConditions) -> None:
    if w.gpu_samples == 0:
        return  # the watch's note says why
    v.measured["gpu_clock_event_reasons"] = w.gpu_reasons
    slowdowns = w.gpu_reasons & CLOCK_SLOWDOWNS
    if slowdowns:
        names = ", ".join(describe_clock_events(slowdowns))
        v.reason(
            "gpu_throttle", w.gpu_reasons, None, "NVML clocks-event reasons (bit mask)", "measured", f"gpu {names}"
        )
    if w.gpu_reasons & SOFTWARE_POWER_CAP:
        v.notes.append("the GPU was at its software power cap during the window (its sustained state; not a reason)")
