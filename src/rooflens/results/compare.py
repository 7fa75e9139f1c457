"""Regression detection between two sets of records.

A cell that was ``ok`` in the base and is ``failed``, ``unavailable`` or missing now is a
regression whatever the metrics say (a broken engine must fail the gate). A change of a metric
is a regression when it is both *significant* (p <= alpha) and *larger than the threshold*
(relative change of the medians), in the metric's bad direction. Absolute metrics are
tested with a one-sided Mann-Whitney U on the raw repetitions. Relative metrics
(``speedup:<metric>``, :func:`rooflens.results.derived.speedup`: the median of per-round ratios to the
baseline engine where the run interleaved them, else the ratio of the two medians) cancel most
machine-wide drift, so they are the ones to gate on for noisy shared CI machines; their p-value comes
from a bootstrap that resamples the paired rounds (or the engine's and the baseline's repetitions apart)
of both runs.

A change that is not called is ``unchanged`` only when the design could have detected the threshold
(:mod:`rooflens.results.power`: the noise both sides showed, their repetitions, alpha, 80 % power, and a
rank test's smallest attainable p); otherwise it is ``inconclusive``, with what it could detect and how
many repetitions would do (``CompareResult.inconclusive``; ``compare`` exits 3 on them unless
``--allow-inconclusive``). Fewer than 3 repetitions on a side are inconclusive too.

No regression (nor improvement) is called on a cell whose measurement is invalid on either side (for a
``speedup:`` metric, the run's baseline cell counts too): its verdict is ``invalid``, with the reason,
and it does not fail the gate (``CompareResult.invalid`` lists them; ``compare --strict`` fails on them).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import mannwhitneyu

from rooflens.results.derived import CellKey, baseline_of, cell_key, paired_ratios
from rooflens.results.identity import SETTINGS, hardware_id, setting_mismatches
from rooflens.results.power import median_log_variance, power_gap, rank_test_floor
from rooflens.results.record import Record
from rooflens.results.runs import newest_complete_runs

BETTER: dict[str, Literal["higher", "lower"]] = {
    "decode_tok_s": "higher",
    "e2e_tok_s": "higher",
    "prefill_tok_s": "higher",
    "ttft_s": "lower",
    "tpot_s": "lower",
    "e2e_s": "lower",
}
DEFAULT_METRICS = ("decode_tok_s", "ttft_s", "tpot_s")
RELATIVE_PREFIX = "speedup:"


class CompareInputError(ValueError):
    """The two sets cannot be compared (nothing matches, different hardware, unknown metric)."""


@dataclass(frozen=True)
class Row:
    cell: str
    metric: str
    better: str
    base_median: float
    current_median: float
    change: float  # signed relative change of the medians, positive = better
    p_value: float | None
    significant: bool
    verdict: Literal["regression", "improvement", "unchanged", "inconclusive", "invalid"]
    n_base: int
    n_current: int
    reason: str = ""  # why the verdict is invalid (which side, which cell, which rule) or inconclusive


@dataclass(frozen=True)
class LostCell:
    """A cell that was ok in the base and is not ok now."""

    cell: str
    status: Literal["failed", "unavailable", "missing"]
    reason: str


@dataclass(frozen=True)
class CompareResult:
    rows: list[Row]
    lost: list[LostCell]
    only_in_current: list[str]
    notes: list[str]

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "regression"]

    @property
    def invalid(self) -> list[Row]:
        """Comparisons not judged: a cell (or its run's baseline cell) measured invalid on either side."""
        return [r for r in self.rows if r.verdict == "invalid"]

    @property
    def inconclusive(self) -> list[Row]:
        """Comparisons that could not have detected the threshold (too few repetitions for their noise)."""
        return [r for r in self.rows if r.verdict == "inconclusive"]

    @property
    def failed(self) -> bool:
        """The gate's verdict: a lost cell or a significant regression (invalid comparisons never count)."""
        return bool(self.lost or self.regressions)


def check_metrics(metrics: tuple[str, ...], relative: bool) -> None:
    """CompareInputError naming a metric that cannot be compared (``speedup:`` ones only if ``relative``)."""
    allowed = [*BETTER, *(RELATIVE_PREFIX + k for k in BETTER)] if relative else list(BETTER)
    for m in metrics:
        if m not in allowed:
            raise CompareInputError(f"unknown metric {m!r} (allowed: {', '.join(allowed)})")


def parse_threshold(text: str) -> float:
    """``5%`` or ``0.05`` -> 0.05."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise CompareInputError(f"threshold {text!r}: expected a percentage like 5% or a fraction like 0.05") from None
    if not 0 <= value < 1:
        raise CompareInputError(f"threshold {text!r}: must be between 0% and 100%")
    return value


def latest_by_cell(records: list[Record]) -> dict[CellKey, Record]:
    """Each cell's record (from the runs newest_complete_runs chose: the newest of a cell if a run has several)."""
    return {cell_key(r): r for r in sorted(records, key=lambda r: r.started_at)}


def _lost(key: CellKey, now: Record | None) -> LostCell:
    if now is None:
        return LostCell(_describe(key), "missing", "no record of this cell in the current set")
    reason = now.reason.message.splitlines()[0] if now.reason and now.reason.message else "no reason recorded"
    return LostCell(_describe(key), now.status, reason)  # type: ignore[arg-type]


BOOTSTRAP_DRAWS = 4000


def _samples(r: Record, metric: str) -> list[float] | None:
    m = r.metrics.get(metric)
    return list(m.samples) if m and m.samples else None


@dataclass(frozen=True)
class _Ratio:
    """The samples behind an engine's speedup over its run's baseline: the per-round ratios where the two were
    interleaved, else both engines' repetitions (blocks)."""

    paired: list[float] | None
    engine: list[float]
    baseline: list[float]

    @property
    def median(self) -> float:
        if self.paired:
            return statistics.median(self.paired)
        return statistics.median(self.engine) / statistics.median(self.baseline)

    @property
    def n(self) -> int:
        return len(self.paired) if self.paired else min(len(self.engine), len(self.baseline))

    @property
    def log_variance(self) -> float:
        """Variance of the log of the ratio's estimate (power.median_log_variance)."""
        if self.paired:
            return median_log_variance(self.paired)
        return median_log_variance(self.engine) + median_log_variance(self.baseline)

    def draws(self, rng: np.random.Generator) -> np.ndarray:
        """Bootstrap medians of the ratio: rounds resampled as pairs, or each engine's repetitions apart."""
        if self.paired:
            p = np.asarray(self.paired)
            return np.median(rng.choice(p, (BOOTSTRAP_DRAWS, len(p))), axis=1)
        eng, ref = np.asarray(self.engine), np.asarray(self.baseline)
        e = np.median(rng.choice(eng, (BOOTSTRAP_DRAWS, len(eng))), axis=1)
        return e / np.median(rng.choice(ref, (BOOTSTRAP_DRAWS, len(ref))), axis=1)


def _relative(r: Record, records: list[Record], metric: str) -> _Ratio | None:
    """The samples of ``r``'s ratio to its run's baseline engine (None for the baseline itself)."""
    base = baseline_of(r, records)
    if base is None or base.cell.engine_label == r.cell.engine_label:
        return None
    xs, bs = _samples(r, metric), _samples(base, metric)
    return _Ratio(paired_ratios(r, base, metric), xs, bs) if xs and bs else None


def _bootstrap_p(base: _Ratio, cur: _Ratio, better: str) -> tuple[float, float]:
    """One-sided bootstrap p-values (worse, better) of the change of a ratio."""
    rng = np.random.default_rng(0)
    change = cur.draws(rng) / base.draws(rng)
    if better == "lower":
        change = 1 / change
    return float(np.mean(change >= 1)), float(np.mean(change <= 1))


def verdict_of(change: float, p: float, alpha: float, threshold: float, gap: str | None) -> tuple[bool, str]:
    """Significant?, and the verdict of a change (positive = better) with p-value ``p``: a regression or
    improvement only when significant and beyond the threshold; else unchanged, or inconclusive where the
    design could not have seen the threshold (``gap`` says why, :func:`rooflens.results.power.power_gap`)."""
    sig = p <= alpha
    if sig and abs(change) > threshold:
        return sig, "regression" if change < 0 else "improvement"
    return sig, "inconclusive" if gap else "unchanged"


def _invalid_reason(cells: dict[str, Record | None]) -> str:
    """``current: cv 14% > 10%`` for each named record (side, or side's baseline) whose measurement is invalid."""
    return "; ".join(
        f"{side}: {'; '.join(x.message for x in r.validity.reasons)}"
        for side, r in cells.items()
        if r is not None and r.validity.invalid
    )


def _describe(key: CellKey) -> str:
    return key.describe()


_Side = tuple[Record, list[Record]]  # a cell's record, and the set it came from (for the run's baseline cell)


def _row(key: CellKey, metric: str, base: _Side, current: _Side, threshold: float, alpha: float) -> Row | None:
    """One metric of one matched cell; None where either side lacks its samples."""
    (rb, base_set), (rc, current_set) = base, current
    name = metric.removeprefix(RELATIVE_PREFIX)
    better = BETTER[name]
    relative = metric.startswith(RELATIVE_PREFIX)
    if relative:
        pb, pc = _relative(rb, base_set, name), _relative(rc, current_set, name)
        if pb is None or pc is None:
            return None
        mx, my = pb.median, pc.median
        n_x, n_y = pb.n, pc.n
    else:
        xs, ys = _samples(rb, name), _samples(rc, name)
        if not xs or not ys:
            return None
        mx, my = statistics.median(xs), statistics.median(ys)
        n_x, n_y = len(xs), len(ys)
    change = (my - mx) / mx if better == "higher" else (mx - my) / mx
    paired = relative and bool(pb.paired and pc.paired)
    if relative:
        variance, floor = pb.log_variance + pc.log_variance, None
    else:
        variance, floor = median_log_variance(xs) + median_log_variance(ys), rank_test_floor(n_x, n_y)
    gap = power_gap(variance, min(n_x, n_y), alpha, threshold, floor, unit="rounds" if paired else "repetitions a side")
    p, sig, verdict = None, False, "inconclusive"
    if min(n_x, n_y) >= 3:
        if relative:
            p_worse, p_better = _bootstrap_p(pb, pc, better)
        else:
            worse = "less" if better == "higher" else "greater"
            p_worse = float(mannwhitneyu(ys, xs, alternative=worse).pvalue)
            p_better = float(mannwhitneyu(ys, xs, alternative="greater" if worse == "less" else "less").pvalue)
        p = p_worse if change < 0 else p_better
        sig, verdict = verdict_of(change, p, alpha, threshold, gap)
    sides: dict[str, Record | None] = {"base": rb, "current": rc}
    if relative:
        sides |= {"base's baseline": baseline_of(rb, base_set), "current's baseline": baseline_of(rc, current_set)}
    why = _invalid_reason(sides)
    if why:
        verdict = "invalid"
    reason = why or (gap if verdict == "inconclusive" else "") or ""
    return Row(_describe(key), metric, better, mx, my, change, p, sig, verdict, n_x, n_y, reason)


def compare_records(
    base: list[Record],
    current: list[Record],
    *,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    threshold: float = 0.05,
    alpha: float = 0.05,
    allow_hardware_mismatch: bool = False,
    allow_mismatch: frozenset[str] = frozenset(),
) -> CompareResult:
    """Compare the newest complete run of each experiment in ``base`` with the same in ``current``, cell by cell.

    Refused (:class:`CompareInputError`) when no cell matches, when the detected hardware differs (unless
    ``allow_hardware_mismatch``) or when a matched cell's settings differ in a field not in ``allow_mismatch``
    (:data:`rooflens.results.identity.SETTINGS`: dtype, threads, engine_options, kernel, config_hash)."""
    unknown = sorted(set(allow_mismatch) - set(SETTINGS))
    if unknown:
        raise CompareInputError(f"--allow-mismatch {', '.join(unknown)}: allowed {', '.join(SETTINGS)}")
    check_metrics(metrics, relative=True)
    base, base_notes = newest_complete_runs(base, "base")
    current, current_notes = newest_complete_runs(current, "current")
    every_base, every = latest_by_cell(base), latest_by_cell(current)
    b = {k: r for k, r in every_base.items() if r.status == "ok"}
    if not any(k in every for k in b):
        raise CompareInputError(
            f"no matching cells: base has {len(b)} ok cell(s), current {len(every)} cell(s); cells match on experiment, "
            "model, engine label, workload, batch size and device"
        )
    c = {k: r for k, r in every.items() if r.status == "ok"}
    common = [k for k in b if k in c]
    notes = [*base_notes, *current_notes]
    notes += _check_hardware(b, every, allow_hardware_mismatch)
    notes += _check_settings(b, c, common, allow_mismatch)
    rows = [
        row
        for key in common
        for metric in metrics
        if (row := _row(key, metric, (b[key], base), (c[key], current), threshold, alpha)) is not None
    ]
    return CompareResult(
        rows=rows,
        lost=[_lost(k, every.get(k)) for k in b if k not in c],
        only_in_current=[_describe(k) for k in every if k not in b],
        notes=notes,
    )


def _check_hardware(b: dict[CellKey, Record], every: dict[CellKey, Record], allow: bool) -> list[str]:
    """Refuse (or note, when allowed) cells measured on different detected hardware."""
    mismatched = sorted(
        {
            f"{hardware_id(b[k])}  vs  {hardware_id(every[k])}"
            for k in b
            if k in every and hardware_id(b[k]) != hardware_id(every[k])
        }
    )
    if not mismatched:
        return []
    if not allow:
        raise CompareInputError("different hardware: " + "; ".join(mismatched) + " (use --allow-hardware-mismatch)")
    return ["hardware differs (allowed): " + "; ".join(mismatched)]


def _check_settings(
    b: dict[CellKey, Record], c: dict[CellKey, Record], common: list[CellKey], allow: frozenset[str]
) -> list[str]:
    """Refuse matched cells whose settings differ in a field not allowed; note the allowed differences."""
    refused, allowed = [], []
    for key in common:
        for name, (x, y) in setting_mismatches(b[key], c[key]).items():
            text = f"{_describe(key)}: {name} {x} in base, {y} in current"
            (allowed if name in allow else refused).append((name, text))
    if refused:
        names = sorted({name for name, _ in refused})
        shown = "; ".join(text for _, text in refused[:5]) + ("; ..." if len(refused) > 5 else "")
        raise CompareInputError(
            f"the cells were not measured alike ({shown}); "
            f"compare like with like, or allow it with {' '.join(f'--allow-mismatch {n}' for n in names)}"
        )
    return [f"settings differ (allowed): {text}" for _, text in allowed[:5]]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(
    result: CompareResult,
    threshold: float,
    alpha: float,
    command: str = "rooflens compare",
    test: str = "one-sided Mann-Whitney U; bootstrap for speedups",
) -> str:
    lines = [
        f"**{command}**: {len(result.lost)} lost cell(s), {len(result.regressions)} regression(s), "
        f"{len(result.inconclusive)} inconclusive, {len(result.invalid)} invalid comparison(s) "
        f"(threshold {threshold:.0%}, {test}, alpha {alpha})",
        "",
    ]
    if result.lost:
        lines += ["| cell (ok in base) | now | reason |", "|:---|:---|:---|"]
        lines += [f"| {x.cell} | {x.status} | {_md_cell(x.reason)} |" for x in result.lost]
        lines.append("")
    lines += [
        "| cell | metric | base | current | change | p | verdict |",
        "|:---|:---|---:|---:|---:|---:|:---|",
    ]
    for r in result.rows:
        p = "-" if r.p_value is None else f"{r.p_value:.3g}"
        verdict = f"{r.verdict} ({_md_cell(r.reason)})" if r.reason else r.verdict
        lines.append(
            f"| {r.cell} | {r.metric} | {r.base_median:.4g} | {r.current_median:.4g} | {r.change:+.1%} | {p} | {verdict} |"
        )
    lines += [f"_{n}_" for n in result.notes]
    return "\n".join(lines) + "\n"
