"""The analytic model's ops grouped into the classes a profiled pass is attributed to, and each class placed on the
roofline: measured time per pass beside the analytic FLOPs and bytes of the same ops at the engine's precision,
hence achieved FLOP/s and B/s, efficiency against each set of ceilings, and the analytic model's own error (its
time at the ceilings over the measured time).

Most classes are one analytic op of the same name (``q_proj``, ``lm_head``, an engine's extra op such as
``exit_predictors``); ``attention`` is the analytic model's attention ops (fused SDPA, or the eager
scores/softmax/values); some classes have no analytic counterpart (:data:`NOT_MODELLED`), and say so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rooflens.results.record import CeilingRef, OpClassRow, PhaseAttribution, Quantity
from rooflens.roofline.analytic import OpCost, PhaseCost

OUTSIDE = "outside operators"
CATCH_ALL = ("setup", "loop")  # classes that only say where an operator ran, not what it is
ALIASES: dict[str, tuple[str, ...]] = {
    "attention": ("attention", "attn_scores", "softmax", "attn_values"),
    "exit_heads": ("failed_exit_heads",),  # a passing exit head stands in for the final one (lm_head)
    "draft": ("draft_forward", "draft_lm_head"),  # a speculative draft model's forwards (its module's class)
}
NOT_MODELLED: dict[str, str] = {
    "kv_cache": "the cache update (the model counts the K, V writes in k_proj and v_proj)",
    "setup": "masks, positions and cache set-up around the layers",
    "loop": "the decoding loop's own tensor work",
    "sampling": "argmax or sampling over the logits",
    OUTSIDE: "framework and Python time between operators",
}


def class_of_op(name: str) -> str:
    """The attribution class an analytic op belongs to."""
    for cls, names in ALIASES.items():
        if name in names:
            return cls
    return name


def modelled_ops(cls: str, cost: PhaseCost) -> list[OpCost]:
    """The analytic ops of ``cost`` that class ``cls`` is compared with (empty: none)."""
    names = ALIASES.get(cls, (cls,))
    return [op for op in cost.ops if op.name in names]


def _q(value: float | None, unit: str, source: str, how: str) -> Quantity:
    return Quantity(value=value, unit=unit, source=source, how=how)  # type: ignore[arg-type]


def class_row(
    name: str,
    kind: str,
    seconds: float,
    share: float,
    calls: float | None,
    cost: PhaseCost | None,
    ceilings: Iterable[CeilingRef],
) -> OpClassRow:
    """One class of a pass: ``seconds`` measured per pass, compared with its analytic ops in ``cost`` (per pass;
    None: an architecture the analytic model does not know)."""
    how = "torch.profiler, the phase's median profiled repetition; mean per pass"
    row = OpClassRow(name=name, kind=kind, time_s=_q(seconds, "s", "measured", how), share=share, calls=calls)  # type: ignore[arg-type]
    ops = modelled_ops(name, cost) if kind != "outside" and cost is not None else []
    if not ops or cost is None:
        return row
    flops = sum(op.flops * cost.count(op) for op in ops)
    moved = sum(op.bytes * cost.count(op) for op in ops)
    a = "analytic, at the engine's precision"
    row.modelled = [op.name for op in ops]
    row.flops, row.bytes = _q(flops, "FLOP", "modelled", a), _q(moved, "B", "modelled", a)
    row.intensity = flops / moved if moved else None
    if seconds > 0:
        row.achieved_flops = _q(flops / seconds, "FLOP/s", "derived", "analytic FLOPs / measured time")
        row.achieved_bandwidth = _q(moved / seconds, "B/s", "derived", "analytic bytes / measured time")
    for c in ceilings:
        bw, peak = c.bandwidth.value, c.peak_flops.value
        if not bw or not peak:
            continue
        predicted = sum(op.time_at_roofline(bw, peak) * cost.count(op) for op in ops)
        row.predicted_s[c.source] = _q(predicted, "s", "derived", f"analytic ops at the ceilings, {c.ref}")
        if seconds > 0:
            row.predicted_to_measured[c.source] = _q(
                predicted / seconds, "fraction", "derived", "analytic time at the ceilings / measured time"
            )
            attainable = min(peak, (flops / moved) * bw) if moved else peak
            if attainable > 0 and flops > 0:
                row.efficiency[c.source] = _q(
                    flops / seconds / attainable, "fraction", "derived", "achieved / attainable FLOP/s"
                )
    return row


@dataclass(frozen=True)
class ProfiledPhase:
    """One phase of a profiled repetition, totals over its passes (seconds): the passes' wall time, the estimated
    cost of the profiler and instrumentation in it, and per class the time inside its top-level operators (that
    cost removed) and their count."""

    passes: int
    wall_s: float
    removed_s: float
    inside_s: dict[str, float]
    calls: dict[str, int]
    engine_classes: frozenset[str] = frozenset()
    removed_how: str = ""
    of_runs: int = 1  # profiled repetitions this phase's (median) one was chosen from

    def removed_per_pass_s(self) -> float:
        """The profiler's estimated cost per pass, never more than the time outside operators (a busy machine's
        estimate can exceed it), so that the rows still add up and inside operators stays <= 1."""
        raw, inside = self.wall_s / self.passes, sum(self.inside_s.values()) / self.passes
        return min(self.removed_s / self.passes, max(raw - inside, 0.0))

    def attributed_s(self) -> float:
        """What a pass's rows add up to: the profiled pass less the profiler's estimated cost."""
        return self.wall_s / self.passes - self.removed_per_pass_s()


def phase_attribution(
    phase: str,
    profiled: ProfiledPhase,
    cost: PhaseCost | None,
    ceilings: list[CeilingRef],
    timed_pass_s: float | None,
    pairs: list[tuple[float, float]] | None = None,
) -> PhaseAttribution:
    """A phase's table: per class its time per pass against its analytic ops, and the time outside operators; the
    rows add up to the profiled pass less the profiler's estimated cost. That is compared with the timed pass, and,
    given ``pairs`` (bare pass, attributed profiled pass, run one after the other), with the bare pass of each pair:
    the ``agreement`` is then their median (the check that the parts add up, free of the machine's drift)."""
    n = profiled.passes
    raw = profiled.wall_s / n
    inside = sum(profiled.inside_s.values()) / n
    removed = profiled.removed_per_pass_s()
    attributed = raw - removed
    rows = [
        class_row(
            cls,
            "engine" if cls in profiled.engine_classes else "operator",
            t / n,
            t / n / attributed,
            profiled.calls.get(cls, 0) / n,
            cost,
            ceilings,
        )
        for cls, t in sorted(profiled.inside_s.items(), key=lambda kv: -kv[1])
    ]
    outside = max(attributed - inside, 0.0)
    rows.append(class_row(OUTSIDE, "outside", outside, outside / attributed, None, cost, ceilings))
    catch_all = sum(profiled.inside_s.get(k, 0.0) for k in CATCH_ALL) / n
    how = f"torch.profiler, the step ranges of the median of {profiled.of_runs} profiled repetitions; mean per pass"
    timed = overhead = None
    agreement = paired_agreement(pairs) if pairs else None
    if timed_pass_s:
        timed = _q(timed_pass_s, "s", "measured", "the timed repetitions' median")
        overhead = _q(raw / timed_pass_s - 1, "fraction", "derived", "profiled pass / timed pass - 1")
        if agreement is None:
            agreement = _q(attributed / timed_pass_s - 1, "fraction", "derived", "attributed pass / timed pass - 1")
    return PhaseAttribution(
        phase=phase,  # type: ignore[arg-type]
        passes=n,
        pass_time_s=_q(raw, "s", "measured", how),
        removed_s=_q(removed, "s", "derived", profiled.removed_how or "none removed"),
        attributed_pass_time_s=_q(attributed, "s", "derived", "profiled pass less the profiler's estimated cost"),
        timed_pass_time_s=timed,
        profiler_overhead=overhead,
        agreement=agreement,
        agreement_pairs=[list(p) for p in pairs or []],
        inside_operators=inside / attributed,
        coverage=(1 - catch_all / inside) if inside else 0.0,
        rows=rows,
    )


def paired_agreement(pairs: list[tuple[float, float]]) -> Quantity:
    """The median over ``pairs`` of attributed / bare - 1, with their range."""
    ratios = sorted(a / b - 1 for b, a in pairs)
    mid = len(ratios) // 2
    median = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
    how = (
        f"attributed profiled pass / the bare generation's run just before it - 1; median of {len(ratios)} pairs "
        f"(range {ratios[0]:+.1%} to {ratios[-1]:+.1%})"
    )
    return _q(median, "fraction", "derived", how)
