"""What a report says of the per-operator attribution (``record.attribution``): operator classes grouped into a few
families for the eye, the sentences that name the biggest lever and the analytic model's error, and the
terminal table of one phase (`rooflens show --ops`), in the columns of `rooflens roofline`'s per-op table."""

from __future__ import annotations

import statistics
from collections import defaultdict

from rich.table import Table
from rich.text import Text

from rooflens.results.record import OpClassRow, PhaseAttribution, Record
from rooflens.roofline.op_classes import OUTSIDE

FAMILIES: dict[str, tuple[str, ...]] = {
    "linear layers": (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "c_attn",
        "c_proj",
        "c_fc",
        "mlp_c_proj",
    ),
    "LM head": ("lm_head",),
    "attention": ("attention",),
    "KV cache": ("kv_cache",),
    "norms": ("input_norm", "post_attn_norm", "final_norm", "ln_1", "ln_2"),
    "rotary": ("rotary",),
    "activation, residual, embedding": ("act_mul", "gelu", "residual_add", "embedding", "wpe"),
    "sampling and loop": ("sampling", "loop", "setup"),
    OUTSIDE: (OUTSIDE,),
}
_FAMILY_OF = {name: family for family, names in FAMILIES.items() for name in names}
MODELLED_FAMILIES = ("linear layers", "LM head", "attention", "norms")


def family_of(row: OpClassRow) -> str:
    """The family a class is drawn in; an engine's own work is its own (``engine: draft``)."""
    if row.kind == "engine":
        return f"engine: {row.name}"
    return _FAMILY_OF.get(row.name, "activation, residual, embedding")


def family_shares(phase: PhaseAttribution) -> dict[str, float]:
    """Share of the pass time per family (they add up to 1)."""
    out: dict[str, float] = defaultdict(float)
    for row in phase.rows:
        out[family_of(row)] += row.share
    return dict(out)


def phase_of(r: Record, name: str) -> PhaseAttribution | None:
    if r.attribution is None:
        return None
    return next((p for p in r.attribution.phases if p.phase == name), None)


def first_per_engine(records: list[Record]) -> list[Record]:
    """Per engine, its attributed record of the first workload at the smallest batch."""
    chosen: dict[str, Record] = {}
    for r in sorted(records, key=lambda r: (r.cell.batch_size,)):
        if phase_of(r, "decode") is not None and r.cell.engine_label not in chosen:
            chosen[r.cell.engine_label] = r
    return list(chosen.values())


def _lever(r: Record, phase: PhaseAttribution) -> str:
    shares = family_shares(phase)
    family, share = max(shares.items(), key=lambda kv: kv[1])
    who = f"{r.cell.engine_label}'s decode pass (batch {r.cell.batch_size})"
    if family == OUTSIDE:
        return (
            f"{share:.0%} of {who} is outside operators (Python, dispatch, framework): a compiled or graph-captured "
            "step would matter more than any kernel here"
        )
    if family.startswith("engine: "):
        return f"{share:.0%} of {who} is the engine's own {family[8:]}: that, not the model, is the lever"
    eff = _family_ratio(phase, family)
    at = f", running at {eff:.0%} of what the roof allows" if eff is not None else ""
    return f"{share:.0%} of {who} is in {family}{at}: the kernels there are the lever"


def _family_ratio(phase: PhaseAttribution, family: str) -> float | None:
    """Analytic time at the ceilings over the measured time, summed over a family's modelled classes."""
    predicted = measured = 0.0
    for row in phase.rows:
        if family_of(row) != family or not row.predicted_s:
            continue
        source = "measured" if "measured" in row.predicted_s else next(iter(row.predicted_s))
        value = row.predicted_s[source].value
        if value is None or row.time_s.value is None:
            continue
        predicted += value
        measured += row.time_s.value
    return predicted / measured if measured > 0 else None


def _model_error(records: list[Record]) -> list[str]:
    """Per engine, how much of each family's measured decode time the analytic model predicts at the ceilings."""
    out = []
    for r in first_per_engine(records):
        phase = phase_of(r, "decode")
        assert phase is not None
        parts = [
            f"{family} {ratio:.0%}" if ratio >= 0.1 else f"{family} {ratio:.1%}"
            for family in MODELLED_FAMILIES
            if (ratio := _family_ratio(phase, family)) is not None
        ]
        if parts:
            out.append(
                f"The analytic model at the ceilings predicts this share of {r.cell.engine_label}'s measured decode "
                f"time (1 = exact; below 1: the kernels run under the roof): {', '.join(parts)}"
            )
    return out


def attribution_sentences(records: list[Record]) -> list[str]:
    """Where the decode time goes per engine (the biggest lever), and the analytic model's error."""
    out = []
    for r in first_per_engine(records):
        phase = phase_of(r, "decode")
        assert phase is not None
        out.append(_lever(r, phase))
    phases = [p for r in records if r.attribution for p in r.attribution.phases]
    raw = [p.profiler_overhead.value for p in phases if p.profiler_overhead and p.profiler_overhead.value is not None]
    # the decode passes calibrate the profiler's cost per operator on a CPU (they agree by construction there):
    # the prefill is the independent check, each profiled prefill against a bare one run just before it
    prefills = [p for p in phases if p.phase == "prefill" and p.agreement and p.agreement.value is not None]
    left = [abs(p.agreement.value) for p in prefills if p.agreement and p.agreement.value is not None]
    if raw and left:
        against = "a bare prefill run just before it" if all(p.agreement_pairs for p in prefills) else "the timed one"
        out.append(
            f"The profiled passes took {statistics.median(raw):+.0%} (median) against the timed ones; with the "
            f"profiler's estimated cost taken out, the attributed prefill is within {statistics.median(left):.1%} "
            f"(median over cells; worst {max(left):.1%}) of {against}"
        )
    return [s + "." for s in [*out, *_model_error(records)]]


def _num(value: float | None, scale: float, fmt: str) -> str:
    return "" if value is None else format(value * scale, fmt)


def attribution_table(phase: PhaseAttribution, title: str) -> Table:
    """One row per class of a measured pass: time, share, the analytic FLOPs and bytes, achieved rates, and the
    analytic time at the ceilings over the measured time."""
    table = Table(title=Text(title))
    for col in ("class", "kind", "time us", "share", "GFLOP", "MB", "GFLOP/s", "GB/s", "model/measured"):
        table.add_column(col, justify="left" if col in ("class", "kind") else "right")
    for row in phase.rows:
        ratio = row.predicted_to_measured.get("measured") or row.predicted_to_measured.get("datasheet")
        table.add_row(
            row.name,
            row.kind,
            _num(row.time_s.value, 1e6, ".1f"),
            f"{row.share:.1%}",
            _num(row.flops.value if row.flops else None, 1e-9, ".4f"),
            _num(row.bytes.value if row.bytes else None, 1e-6, ".3f"),
            _num(row.achieved_flops.value if row.achieved_flops else None, 1e-9, ".2f"),
            _num(row.achieved_bandwidth.value if row.achieved_bandwidth else None, 1e-9, ".2f"),
            _num(ratio.value if ratio else None, 1, ".2f"),
        )
    timed = phase.timed_pass_time_s.value if phase.timed_pass_time_s else None
    table.caption = (
        f"{phase.passes} pass(es) profiled, {_num(phase.pass_time_s.value, 1e6, '.1f')} us per pass, "
        f"{_num(phase.removed_s.value, 1e6, '.1f')} us of it the profiler's cost: "
        f"{_num(phase.attributed_pass_time_s.value, 1e6, '.1f')} us attributed (timed: {_num(timed, 1e6, '.1f')} us); "
        f"{phase.inside_operators:.0%} inside operators, {phase.coverage:.0%} of that in named classes"
    )
    return table
