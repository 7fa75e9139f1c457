"""The verdict of ``rooflens ab``: each side's repetitions paired round by round.

Per cell and metric, each round gives one ratio: the median of HEAD's block over the median of BASE's
block in that round (measured minutes apart at most, in alternating order), so the machine's drift between
rounds cancels. The change is the median ratio; its p-value a one-sided Wilcoxon signed-rank test of the
log ratios; and "unchanged" is said only when the rounds could have shown the threshold
(:mod:`rooflens.results.power`), else "inconclusive". Every engine is judged, the baseline engine too. A
cell ok in BASE and not ok in HEAD is lost (a regression whatever the metrics say); a cell measured
invalid on either side gets ``invalid``, except for the CV rule: a side's CV spans all its rounds, so it
holds the drift that the pairing cancels; the noise that matters here is the paired ratios', which the
power check weighs (a side's CV is still in its record).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from scipy.stats import wilcoxon

from rooflens.results.compare import BETTER, CompareResult, LostCell, Row, check_metrics, verdict_of
from rooflens.results.power import median_log_variance, power_gap
from rooflens.results.record import Record

AB_METRICS = ("decode_tok_s", "ttft_s")


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


def paired_row(base: Record, head: Record, metric: str, threshold: float, alpha: float) -> Row | None:
    """One metric of one cell, paired by round; None where a side has no rounds of it."""
    better = BETTER[metric]
    b, h = round_medians(base, metric), round_medians(head, metric)
    rounds = sorted(set(b) & set(h))
    ratios = [h[k] / b[k] for k in rounds if b[k] > 0 and h[k] > 0]
    if not ratios:
        return None
    logs = [math.log(x) if better == "higher" else -math.log(x) for x in ratios]  # > 0: head better
    n = len(logs)
    change = math.expm1(statistics.median(logs))
    gap = power_gap(median_log_variance(ratios), n, alpha, threshold, floor=0.5**n, unit="paired rounds")
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


def ab_verdict(
    base: list[Record],
    head: list[Record],
    *,
    metrics: tuple[str, ...] = AB_METRICS,
    threshold: float = 0.05,
    alpha: float = 0.05,
) -> CompareResult:
    """Every cell of the two sides, paired by round."""
    check_metrics(metrics, relative=False)
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
        rows += [row for m in metrics if (row := paired_row(rb, rh, m, threshold, alpha)) is not None]
    only_head = [_describe(r) for r in head if _key(r) not in {_key(x) for x in base}]
    return CompareResult(rows=rows, lost=lost, only_in_current=only_head, notes=[])
