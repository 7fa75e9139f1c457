"""A probe's measured ceilings as saved: what the file holds, where it lives, and when a run may use it.

One file per device and thread count, in the user's folder (``$ROOFLENS_HOME`` or
``~/.config/rooflens``, sub-folder ``probes``), never inside the package:
``<device-slug>-t<threads>.json``, threads being ``torch.get_num_threads()`` when a CPU was probed
and ``0`` for a GPU (its ceilings do not depend on the CPU threads). A run uses only the probe at its
own thread count: 1 thread copies and multiplies far slower than 2, and a 1-thread ceiling under a
2-thread run reads efficiencies above 100 %.

A file keeps every attempt of its probe (figures, the machine's load, the verdict and why) and the
valid attempt's figures as the ceilings; only a valid probe is saved. On load it is judged again
(:mod:`rooflens.roofline.probe_rules`: the rules of the day, its age), and a ceiling that is zero,
negative or not finite refuses the whole file.

Files of the earlier format (``<device-slug>.json``, one per device, written before probes were
judged) are **not migrated**: they may hold exactly the noisy ceilings this format exists to stop
(their spread and the load were never judged, and an automatic probe used 64 MiB copies), so a run
ignores them and its note says to re-probe.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rooflens.fsutil import home_dir, slug, write_atomic
from rooflens.results.stats import summarize
from rooflens.roofline import probe_rules
from rooflens.roofline.hardware import HardwareProfile, ResolvedProfile, _normalize_dtype
from rooflens.text import first_line

__all__ = [
    "AttemptLoad",
    "ProbeAttempt",
    "ProbeLookup",
    "ProbeResult",
    "ProbeStat",
    "best_probe",
    "describe_attempt",
    "legacy_probe_path",
    "load_probe",
    "lookup_probe",
    "probe_path",
    "saved_reasons",
    "save_probe",
]

REPROBE = "`rooflens hw probe` on a quiet machine measures them"


# --------------------------------------------------------------------------- what a file holds


class ProbeStat(BaseModel):
    """Per-rep rates of one measurement and their summary (``max`` = best rep = the ceiling)."""

    model_config = ConfigDict(extra="forbid")

    unit: str  # "B/s", "FLOP/s" (int8: "OP/s")
    median: float
    p10: float
    p90: float
    min: float
    max: float
    cv: float
    samples: list[float] = Field(min_length=1)
    how: str

    @field_validator("median", "p10", "p90", "min", "max")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"a rate must be a finite number > 0, not {v!r}")
        return v

    @field_validator("samples")
    @classmethod
    def _positive_samples(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not (math.isfinite(x) and x > 0)]
        if bad:
            raise ValueError(f"every sample must be a finite rate > 0, not {bad[0]!r}")
        return v

    @field_validator("cv")
    @classmethod
    def _cv(cls, v: float) -> float:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"cv must be a finite number >= 0, not {v!r}")
        return v

    @classmethod
    def from_samples(cls, samples: list[float], unit: str, how: str) -> ProbeStat:
        """Summarize per-rep rates (at least one)."""
        s = summarize(samples)
        return cls(
            unit=unit,
            median=float(s["median"]),
            p10=float(s["p10"]),
            p90=float(s["p90"]),
            min=float(s["min"]),
            max=float(s["max"]),
            cv=float(s["cv"]),
            samples=[float(x) for x in samples],
            how=how,
        )

    def value(self, stat: Literal["max", "median"] = "max") -> float:
        """The best rep (``"max"``, the conventional ceiling) or the median."""
        if stat == "max":
            return self.max
        if stat == "median":
            return self.median
        raise ValueError(f"stat must be 'max' or 'median', not {stat!r}")


class AttemptLoad(BaseModel):
    """How busy the machine was around one attempt (``rooflens.device.activity``)."""

    model_config = ConfigDict(extra="forbid")

    cores: int  # logical cores the load is judged against
    load_avg_before: list[float] | None  # 1, 5, 15 min, when the attempt started
    load_avg_after: list[float] | None  # when it ended (counts the probe's own threads: recorded, not judged)
    load_judged: bool  # False once an attempt of this probe has measured: its 1-minute average still counts it
    other_cpu_before: float | None  # other processes' share of the core-seconds in the window before measuring
    other_cpu_during: float | None  # ... while measuring (None: not measured)
    window_before_s: float
    judged: bool  # quietness is judged for CPU probes; a GPU probe records it only


class ProbeAttempt(BaseModel):
    """One try at measuring the ceilings, kept whatever its verdict."""

    model_config = ConfigDict(extra="forbid")

    number: int  # 1, 2, ...
    started_at: str  # UTC ISO 8601
    bandwidth: ProbeStat | None  # None: not measured (the machine was busy before it)
    gemm: dict[str, ProbeStat] = Field(default_factory=dict)
    load: AttemptLoad
    verdict: Literal["valid", "invalid"]
    reasons: list[str] = Field(default_factory=list)  # why it is invalid, one statistic or figure each


class ProbeResult(BaseModel):
    """Measured ceilings of one device at one thread count, as saved by :func:`save_probe`."""

    model_config = ConfigDict(extra="forbid")

    device: str  # "cpu" / "cuda:0"
    device_name: str
    profile: str | None  # matching datasheet profile, if any
    bandwidth: ProbeStat  # the valid attempt's figures: these are the ceilings
    gemm: dict[str, ProbeStat] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    threads: int  # torch.get_num_threads() when it was measured
    torch_version: str
    measured_at: str  # UTC ISO 8601
    sizes: dict[str, int] = Field(default_factory=dict)
    load_avg: list[float] | None = None  # os.getloadavg() when the probe started
    wall_s: float | None = None  # wall time of the whole probe, every attempt
    attempts: list[ProbeAttempt] = Field(min_length=1)  # every attempt, the invalid ones too
    chosen: int  # number of the attempt whose figures are the ceilings
    rules: dict[str, float] = Field(default_factory=dict)  # the limits it was judged by

    @property
    def key_threads(self) -> int:
        """The thread count it is keyed by: its threads on a CPU, 0 on a GPU."""
        return 0 if self.device.startswith("cuda") else self.threads

    @property
    def chosen_attempt(self) -> ProbeAttempt | None:
        return next((a for a in self.attempts if a.number == self.chosen), None)

    def bandwidth_si(self, stat: Literal["max", "median"] = "max") -> float:
        """Measured memory bandwidth in bytes/s."""
        return self.bandwidth.value(stat)

    def peak_flops_si(self, dtype: str, stat: Literal["max", "median"] = "max") -> float | None:
        """Measured GEMM FLOP/s (OP/s for int8) for ``dtype``; ``None`` if not measured."""
        found = self.gemm.get(_normalize_dtype(dtype))
        return found.value(stat) if found is not None else None

    def ratios(
        self,
        profile: HardwareProfile | ResolvedProfile,
        *,
        stat: Literal["max", "median"] = "max",
    ) -> dict[str, float | None]:
        """Measured / datasheet for ``"bandwidth"`` and each measured dtype.

        ``None`` where the datasheet has no number. ``stat`` picks the best rep (default) or
        the median of the measurement.
        """
        if isinstance(profile, ResolvedProfile):
            profile = profile.profile
        out: dict[str, float | None] = {}
        sheet_bw = profile.bandwidth_si()
        out["bandwidth"] = self.bandwidth.value(stat) / sheet_bw if sheet_bw else None
        for dtype, measured in self.gemm.items():
            sheet = profile.peak_flops_si(dtype)
            out[dtype] = measured.value(stat) / sheet if sheet else None
        return out


def describe_attempt(a: ProbeAttempt) -> str:
    """One line: the verdict and why, and the load seen."""
    load = a.load
    seen = f"{load.cores} cores"
    if load.load_avg_before:
        seen = f"load average {load.load_avg_before[0]:.2f} on {seen}"
    for when, share in (("before", load.other_cpu_before), ("during", load.other_cpu_during)):
        if share is not None:
            seen += f", other processes {100 * share:.0f} % of the CPU {when}"
    figures = ""
    if a.bandwidth is not None:
        figures = f"; bandwidth {a.bandwidth.max / 1e9:.1f} GB/s best, CV {100 * a.bandwidth.cv:.1f} %"
    why = f" ({'; '.join(a.reasons)})" if a.reasons else ""
    return f"attempt {a.number}: {a.verdict}{why}; {seen}{figures}"


# --------------------------------------------------------------------------- where files live


def probe_path(device_name: str, threads: int, root: Path | None = None) -> Path:
    """Where the probe of ``device_name`` at ``threads`` (0: a GPU) is kept: ``<root>/probes/<slug>-t<threads>.json``.

    ``root`` defaults to ``$ROOFLENS_HOME`` or ``~/.config/rooflens`` (a user file, never the package).
    """
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: a GPU probe), not {threads}")
    return home_dir(root) / "probes" / f"{slug(device_name)}-t{threads}.json"


def legacy_probe_path(device_name: str, root: Path | None = None) -> Path:
    """Where the earlier format kept the one probe of a device (ignored: see the module docstring)."""
    return home_dir(root) / "probes" / f"{slug(device_name)}.json"


def _saved_threads(device_name: str, root: Path | None) -> list[int]:
    """The thread counts ``device_name`` has probe files for, ascending."""
    folder = home_dir(root) / "probes"
    pattern = re.compile(rf"^{re.escape(slug(device_name))}-t(\d+)\.json$")
    found = (pattern.match(p.name) for p in folder.glob("*.json")) if folder.is_dir() else ()
    return sorted(int(m.group(1)) for m in found if m)


def save_probe(result: ProbeResult, root: Path | None = None) -> Path:
    """Write a valid ``result`` to :func:`probe_path` atomically (temp file + ``os.replace``).

    Raises ValueError, writing nothing, when its chosen attempt is not valid.
    """
    chosen = result.chosen_attempt
    if chosen is None or chosen.verdict != "valid":
        why = "; ".join(chosen.reasons) if chosen else f"no attempt number {result.chosen}"
        raise ValueError(f"refusing to save the probe of {result.device_name}: it is not valid ({why})")
    path = probe_path(result.device_name, result.key_threads, root)
    write_atomic(path, result.model_dump_json(indent=2) + "\n")
    return path


def load_probe(device_name: str, threads: int, root: Path | None = None) -> ProbeResult | None:
    """The saved probe of ``device_name`` at ``threads`` (0: a GPU), or ``None`` if there is none.

    Raises ValueError naming the file when it exists but is not a valid probe file (a zero,
    negative or non-finite ceiling, another thread count inside, the earlier format).
    """
    path = probe_path(device_name, threads, root)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # none saved (or ROOFLENS_HOME is not a folder at all)
        return None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        result = ProbeResult.model_validate_json(text)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise ValueError(f"{path}: not a valid probe result ({where})") from exc
    except ValueError as exc:  # not JSON at all
        raise ValueError(f"{path}: not a valid probe result ({first_line(exc)})") from exc
    if result.key_threads != threads:
        raise ValueError(f"{path}: holds a probe at {result.key_threads} threads, not {threads}")
    return result


# --------------------------------------------------------------------------- may a run use it


def _age_s(measured_at: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(measured_at)).total_seconds()


def saved_reasons(
    result: ProbeResult, now: datetime | None = None, rules: probe_rules.ProbeRules | None = None
) -> list[str]:
    """Why a saved probe does not validate now: the current rules on its figures, and its age."""
    rules = rules or probe_rules.RULES
    chosen = result.chosen_attempt
    out = [] if chosen is not None and chosen.verdict == "valid" else ["its chosen attempt is not valid"]
    out += probe_rules.spread_reasons(result.bandwidth, result.gemm, rules)
    if not result.device.startswith("cuda"):
        out += probe_rules.copy_reasons(result.sizes.get("copy_bytes", 0), result.sizes.get("llc_bytes"), rules)
    return out + probe_rules.age_reasons(_age_s(result.measured_at, now or datetime.now(timezone.utc)), rules)


@dataclass(frozen=True)
class ProbeLookup:
    """The probe a run may use, or why there is none."""

    probe: ProbeResult | None
    path: Path
    note: str | None  # why ``probe`` is None


def _missing_note(device_name: str, threads: int, path: Path, root: Path | None) -> str:
    at = "a GPU" if threads == 0 else f"{threads} thread{'s' * (threads != 1)}"
    note = f"no probe of {device_name} at {at} ({path}); {REPROBE}"
    others = [t for t in _saved_threads(device_name, root) if t != threads]
    if others:
        note += (
            f" (probes at {', '.join(map(str, others))} threads are not used: a probe counts at its own threads only)"
        )
    return note + _legacy_note(device_name, root)


def _legacy_note(device_name: str, root: Path | None) -> str:
    legacy = legacy_probe_path(device_name, root)
    if legacy.is_file():
        return f"; ignored {legacy}: a probe from before rooflens judged probes (re-probe)"
    return ""


def lookup_probe(
    device_name: str,
    threads: int,
    root: Path | None = None,
    *,
    now: datetime | None = None,
) -> ProbeLookup:
    """The saved probe at ``threads`` (0: a GPU) if it validates now, else None and why."""
    path = probe_path(device_name, threads, root)
    try:
        found = load_probe(device_name, threads, root)
    except ValueError as err:
        return ProbeLookup(None, path, f"refused {err}; {REPROBE}")
    if found is None:
        return ProbeLookup(None, path, _missing_note(device_name, threads, path, root))
    reasons = saved_reasons(found, now)
    if reasons:
        return ProbeLookup(None, path, f"the probe {path} no longer validates ({'; '.join(reasons)}); {REPROBE}")
    return ProbeLookup(found, path, None)


def best_probe(device_name: str, root: Path | None = None, *, now: datetime | None = None) -> ProbeLookup:
    """The valid probe of ``device_name`` at the most threads (a GPU's at 0): for projections, not runs."""
    lookups = [lookup_probe(device_name, t, root, now=now) for t in reversed(_saved_threads(device_name, root))]
    for found in lookups:
        if found.probe is not None:
            return found
    if lookups:
        return ProbeLookup(None, lookups[0].path, "; ".join(str(found.note) for found in lookups))
    folder = home_dir(root) / "probes"
    return ProbeLookup(
        None, folder, f"no probe of {device_name} in {folder}; {REPROBE}{_legacy_note(device_name, root)}"
    )
