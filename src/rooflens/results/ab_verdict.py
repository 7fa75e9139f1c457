"""The verdict of ``rooflens ab``: each side's repetitions paired round by round.

Per cell and metric, each round gives one log ratio: HEAD's block median over BASE's block median in that
round (measured seconds apart, in alternating order), so the machine's drift between rounds cancels. The
change is the Hodges-Lehmann estimate of those log ratios (the median of their pairwise means), its p-value
a one-sided Wilcoxon signed-rank test; a regression is a significant change worse than the threshold.

A design is *powered* when a slowdown of ``detect`` (by default twice the threshold) would be flagged at
least 95 % of the time with the noise the paired rounds showed (:func:`catch_chance`): ab adds rounds to a
cell until it is (:func:`powered`), and a cell that never got there is ``inconclusive`` -- never
"unchanged" -- with how many rounds would have done. Every engine is judged, the baseline engine too. A cell
ok in BASE and not ok in HEAD is lost (a regression whatever the metrics say); a cell measured invalid on
either side gets ``invalid``, except for the CV rule: a side's CV spans all its rounds, so it holds the
drift that the pairing cancels (a side's CV is still in its record).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from scipy.stats import t as student_t
from scipy.stats import wilcoxon

from rooflens.results.compare import BETTER, CompareResult, LostCell, Row, check_metrics, verdict_of
from rooflens.results.record import Record

AB_METRICS = ("decode_tok_s", "ttft_s")
CATCH = 0.95  # how often a design must flag a slowdown of ``detect`` before a cell may be called unchanged
# var(estimate) / var(mean) assumed by the power rule: a median's, pi/2, where the Hodges-Lehmann estimate and
# the signed-rank test would do with pi/3 on normal noise. The margin pays for the rank test's discreteness at
# few rounds and for the noise of the spread estimate (simulated: 97-99 % caught where the rule says 95 %).
EFFICIENCY = math.pi / 2


def _key(r: Record) -> tuple[str, str, int]:
    return (r.cell.engine_label, r.cell.workload, r.cell.batch_size)


def _describe(r: Record) -> str:
    return f"{r.cell.engine_label}/{r.cell.workload}/b{r.cell.batch_size}"


def round_medians(r: Record, metric: str) -> dict[int, float]:
    """The median of ``metric`` in each round of an ab record (empty when it has no rounds)."""
    m, rounds = r.metrics.get(metric), r.repetitions.rounds if r.repetitions else None
    if m is None or not rounds or len(rounds) != len(m.samples):
        return {}
    by_round: dict[int, list[float]] = defaultdict(list)
    for k, x in zip(rounds, m.samples):
        by_round[k].append(x)
    return {k: statistics.median(v) for k, v in by_round.items()}


def hodges_lehmann(xs: list[float]) -> float:
    """The median of all pairwise means (i <= j): the location estimate that goes with a signed-rank test."""
    return statistics.median((a + b) / 2 for i, a in enumerate(xs) for b in xs[i:])


def paired_logs(base: dict[int, float], head: dict[int, float], better: str) -> list[float]:
    """One log ratio per round both sides measured, positive where HEAD is better."""
    rounds = sorted(k for k in set(base) & set(head) if base[k] > 0 and head[k] > 0)
    return [math.log(head[k] / base[k]) * (1 if better == "higher" else -1) for k in rounds]


def _slack(change: float) -> float:
    """A relative worsening (0.1 = 10 %) as a distance in log ratio."""
    return -math.log1p(-change)


def catch_chance(logs: list[float], threshold: float, detect: float, alpha: float) -> float:
    """About how often rounds as noisy as ``logs`` (as many) flag a true slowdown of ``detect``: both the
    signed-rank test must reach ``alpha`` and the estimate must fall beyond ``threshold``."""
    if len(logs) < 2:
        return 0.0
    return _chance(statistics.stdev(logs), len(logs), threshold, detect, alpha)


def _chance(sd: float, n: int, threshold: float, detect: float, alpha: float) -> float:
    """:func:`catch_chance` for n rounds whose log ratios spread with standard deviation ``sd``."""
    if n < 3 or 0.5**n > alpha:  # the smallest p a signed-rank test of n pairs can give
        return 0.0
    se = sd * math.sqrt(EFFICIENCY / n)
    d, t = _slack(detect), _slack(threshold)
    if se == 0:
        return 1.0 if d > t else 0.0
    dist = student_t(n - 1)  # the spread is estimated from the same n rounds
    return float(min(dist.cdf((d - t) / se), dist.cdf(d / se - dist.ppf(1 - alpha))))


def rounds_needed(logs: list[float], threshold: float, detect: float, alpha: float, most: int = 10_000) -> int:
    """About how many paired rounds with this noise would catch ``detect`` with probability ``CATCH``."""
    sd = statistics.stdev(logs) if len(logs) >= 2 else 0.0
    start = len(logs) + 1 if len(logs) >= 2 else 3
    return next((m for m in range(start, most) if _chance(sd, m, threshold, detect, alpha) >= CATCH), most)


def catch_gap(logs: list[float], threshold: float, detect: float, alpha: float) -> str | None:
    """Why these rounds could not vouch for "unchanged" (None when they could)."""
    chance = catch_chance(logs, threshold, detect, alpha)
    if chance >= CATCH:
        return None
    need = rounds_needed(logs, threshold, detect, alpha)
    return (
        f"with this noise {len(logs)} paired rounds catch a {detect:.0%} slowdown {chance:.0%} of the time "
        f"(alpha {alpha:g}); about {need} would catch it {CATCH:.0%}"
    )


def paired_row(base: Record, head: Record, metric: str, threshold: float, alpha: float, detect: float) -> Row | None:
    """One metric of one cell, paired by round; None where a side has no rounds of it."""
    better = BETTER[metric]
    b, h = round_medians(base, metric), round_medians(head, metric)
    logs = paired_logs(b, h, better)
    if not logs:
        return None
    n = len(logs)
    change = math.expm1(hodges_lehmann(logs))
    gap = catch_gap(logs, threshold, detect, alpha)
    p, sig, verdict = None, False, "inconclusive"
    if n >= 3 and any(logs):
        p = float(wilcoxon(logs, alternative="less" if change < 0 else "greater").pvalue)
        sig, verdict = verdict_of(change, p, alpha, threshold, gap)
    elif n >= 3:  # every round identical
        verdict, p = ("inconclusive" if gap else "unchanged"), 1.0
    why = "; ".join(
        f"{side}: {'; '.join(x.message for x in reasons)}"
        for side, r in (("base", base), ("head", head))
        if (reasons := [x for x in r.validity.reasons if x.check != "cv"])
    )
    reason = why or (gap if verdict == "inconclusive" else "") or ""
    rounds = sorted(set(b) & set(h))
    return Row(
        _describe(head),
        metric,
        better,
        statistics.median(b[k] for k in rounds),
        statistics.median(h[k] for k in rounds),
        change,
        p,
        sig,
        "invalid" if why else verdict,  # type: ignore[arg-type]
        n,
        n,
        reason,
    )


def powered(
    base: dict[int, dict[str, list[float]]],
    head: dict[int, dict[str, list[float]]],
    *,
    metrics: tuple[str, ...],
    threshold: float,
    detect: float,
    alpha: float,
) -> bool:
    """Do a cell's rounds so far (per round, each metric's values in that round's block) vouch for every
    metric? What ab asks after each round to decide whether the cell needs another."""
    for metric in metrics:
        b = {k: statistics.median(v[metric]) for k, v in base.items() if v.get(metric)}
        h = {k: statistics.median(v[metric]) for k, v in head.items() if v.get(metric)}
        if catch_chance(paired_logs(b, h, BETTER[metric]), threshold, detect, alpha) < CATCH:
            return False
    return True


def ab_verdict(
    base: list[Record],
    head: list[Record],
    *,
    metrics: tuple[str, ...] = AB_METRICS,
    threshold: float = 0.05,
    alpha: float = 0.05,
    detect: float | None = None,
) -> CompareResult:
    """Every cell of the two sides, paired by round; ``detect`` (default twice the threshold) is the slowdown a
    design must catch 95 % of the time to call a cell unchanged."""
    check_metrics(metrics, relative=False)
    detect = 2 * threshold if detect is None else detect
    heads = {_key(r): r for r in head}
    rows, lost = [], []
    for rb in base:
        rh = heads.get(_key(rb))
        if rb.status != "ok":
            continue
        if rh is None or rh.status != "ok":
            reason = rh.reason.message.splitlines()[0] if rh and rh.reason and rh.reason.message else "no record"
            lost.append(LostCell(_describe(rb), rh.status if rh else "missing", reason))  # type: ignore[arg-type]
            continue
        rows += [row for m in metrics if (row := paired_row(rb, rh, m, threshold, alpha, detect)) is not None]
    only_head = [_describe(r) for r in head if _key(r) not in {_key(x) for x in base}]
    return CompareResult(rows=rows, lost=lost, only_in_current=only_head, notes=[])
