"""When measured ceilings can be trusted: a small spread, a quiet machine, a copy beyond the caches, recent.

A probe's ceilings divide every later run's achieved rates, so a noisy probe is worse than none:
a ceiling measured 2.6x too low makes every efficiency 2.6x too high, for good. A probe attempt is
**valid** only when all of these hold (the limits are the module constants below):

* every statistic has at least :data:`MIN_REPS` reps, and its spread is small: CV at most
  :data:`BANDWIDTH_MAX_CV` for the copy bandwidth, :data:`GEMM_MAX_CV` for each GEMM, and the
  median rep at least :data:`MIN_MEDIAN_TO_BEST` of the best (the best rep is the ceiling: it must
  not be a lucky outlier);
* the copy streams at least :data:`MIN_COPY_TO_LLC` times the last-level cache (CPU, where the
  cache size is readable), or it measures the cache;
* the machine was quiet (CPU probes): the 1-minute load average at most :data:`MAX_LOAD_PER_CORE`
  per logical core when the probe starts, and other processes' CPU time at most
  :data:`MAX_OTHER_CPU_SHARE` of the machine's core-seconds, both in a short window before the
  measurement and during it (``rooflens.device.activity``).

A saved probe is judged again when a run loads it (the rules may have changed; it may be older than
:data:`MAX_AGE_DAYS`), and a record's :class:`~rooflens.results.record.ProbeRef` is judged again by
``rooflens show``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from rooflens.results.record import CeilingRef

#: Largest coefficient of variation of the copy bandwidth's reps.
BANDWIDTH_MAX_CV = 0.10
#: Largest coefficient of variation of a GEMM's reps. Measured on a quiet 2-vCPU cloud VM (AMD EPYC,
#: 2026-12-03): GEMM CVs of 2.8-11 % over 20 reps of n=2048 with nothing else running, so the 5 % first
#: proposed would refuse a quiet machine; under load the issue saw 73 %.
GEMM_MAX_CV = 0.10
#: Smallest median rep / best rep of any statistic (the same quiet VM: 0.77-0.98).
MIN_MEDIAN_TO_BEST = 0.80
#: Fewest measured reps a spread is computed from.
MIN_REPS = 10
#: Largest 1-minute load average per logical core when a CPU probe starts. Lenient on purpose: the average
#: lags by minutes (after a run it still counts that run's threads: 1.08 on 2 idle cores here), so the
#: direct check, other processes' CPU time in a window before and during the probe, is the strict one.
MAX_LOAD_PER_CORE = 1.0
#: Largest share of the machine's core-seconds other processes may use before and during a CPU probe.
MAX_OTHER_CPU_SHARE = 0.10
#: Smallest copy size as a multiple of the last-level cache (CPU).
MIN_COPY_TO_LLC = 4.0
#: Oldest a probe may be when a run uses it, in days.
MAX_AGE_DAYS = 90.0


@dataclass(frozen=True)
class ProbeRules:
    """The limits a probe is judged by (defaults: the module constants)."""

    bandwidth_max_cv: float = BANDWIDTH_MAX_CV
    gemm_max_cv: float = GEMM_MAX_CV
    min_median_to_best: float = MIN_MEDIAN_TO_BEST
    min_reps: int = MIN_REPS
    max_load_per_core: float = MAX_LOAD_PER_CORE
    max_other_cpu_share: float = MAX_OTHER_CPU_SHARE
    min_copy_to_llc: float = MIN_COPY_TO_LLC
    max_age_days: float = MAX_AGE_DAYS

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


#: The rules probes are judged by now (read at call time: a test may replace it).
RULES = ProbeRules()


class Spread(Protocol):
    """What the rules read of one statistic (a ``ProbeStat``)."""

    cv: float
    median: float
    max: float
    samples: list[float]


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def stat_reasons(name: str, stat: Spread, max_cv: float, rules: ProbeRules) -> list[str]:
    """Why one statistic's spread is too large to call its best rep a ceiling (empty: it is not)."""
    out = []
    if len(stat.samples) < rules.min_reps:
        out.append(f"{name}: {len(stat.samples)} reps < {rules.min_reps}")
    if stat.cv > max_cv:
        out.append(f"{name}: CV {_pct(stat.cv)} > {_pct(max_cv)}")
    ratio = stat.median / stat.max if stat.max > 0 else 0.0
    if ratio < rules.min_median_to_best:
        out.append(f"{name}: median {_pct(ratio)} of best < {_pct(rules.min_median_to_best)}")
    return out


def spread_reasons(bandwidth: Spread, gemm: Mapping[str, Spread], rules: ProbeRules) -> list[str]:
    """Every statistic of an attempt: the bandwidth and each GEMM dtype measured."""
    out = stat_reasons("bandwidth", bandwidth, rules.bandwidth_max_cv, rules)
    for dtype, stat in gemm.items():
        out += stat_reasons(f"gemm {dtype}", stat, rules.gemm_max_cv, rules)
    return out


def copy_reasons(copy_bytes: int, llc_bytes: int | None, rules: ProbeRules) -> list[str]:
    """A copy that fits (almost) in the last-level cache measures the cache, not the memory."""
    if llc_bytes and copy_bytes < rules.min_copy_to_llc * llc_bytes:
        return [
            f"bandwidth: a {copy_bytes / 2**20:.0f} MiB copy < {rules.min_copy_to_llc:g}x the "
            f"{llc_bytes / 2**20:.0f} MiB last-level cache"
        ]
    return []


def load_reasons(load_avg: Sequence[float] | None, cores: int, rules: ProbeRules) -> list[str]:
    """The 1-minute load average against the cores (nothing to judge where the OS has none)."""
    limit = rules.max_load_per_core * cores
    if load_avg and load_avg[0] > limit:
        return [f"load average {load_avg[0]:.2f} on {cores} cores > {limit:.2f} ({rules.max_load_per_core:g} per core)"]
    return []


def other_cpu_reasons(share: float | None, when: str, rules: ProbeRules) -> list[str]:
    """Other processes' CPU time in a window (``when``: "before the measurement", "during it")."""
    if share is not None and share > rules.max_other_cpu_share:
        return [f"other processes used {_pct(share)} of the CPU time {when} (limit {_pct(rules.max_other_cpu_share)})"]
    return []


def age_reasons(age_s: float, rules: ProbeRules) -> list[str]:
    if age_s > rules.max_age_days * 86400:
        return [f"{age_s / 86400:.0f} days old (limit {rules.max_age_days:g})"]
    return []


def ref_reasons(ceiling: CeilingRef, rules: ProbeRules | None = None) -> list[str]:
    """Why a record's measured ceilings no longer validate under ``rules`` (default: :data:`RULES`); empty
    when they do, and for datasheet ceilings."""
    if ceiling.source != "measured":
        return []
    rules = rules or RULES
    ref = ceiling.probe
    if ref is None:
        return ["the probe was never judged (a record from before rooflens validated probes)"]
    out = [] if ref.valid else ["invalid when the record was made"]
    for name, cv, ratio, max_cv in (
        ("bandwidth", ref.bandwidth_cv, ref.bandwidth_median_to_best, rules.bandwidth_max_cv),
        (f"gemm {ceiling.dtype}", ref.peak_flops_cv, ref.peak_flops_median_to_best, rules.gemm_max_cv),
    ):
        if cv > max_cv:
            out.append(f"{name}: CV {_pct(cv)} > {_pct(max_cv)}")
        if ratio < rules.min_median_to_best:
            out.append(f"{name}: median {_pct(ratio)} of best < {_pct(rules.min_median_to_best)}")
    return out + [f"{r} at the run" for r in age_reasons(ref.age_s, rules)]
