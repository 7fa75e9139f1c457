"""The summary table shared by the terminal, HTML and markdown outputs: one row per cell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rooflens.results.derived import speedup
from rooflens.results.record import CeilingRef, Record
from rooflens.roofline.probe_rules import ref_reasons


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    unit: str = ""
    digits: int = 1
    scale: float = 1.0
    numeric: bool = True


COLUMNS = (
    Column("engine", "engine", numeric=False),
    Column("batch", "batch", digits=0),
    Column("workload", "prompt/gen", numeric=False),
    Column("ttft_ms", "TTFT", "ms"),
    Column("tpot_ms", "TPOT", "ms", digits=2),
    Column("decode_tok_s", "decode", "tok/s"),
    Column("decode_cv_pct", "CV", "%"),
    Column("e2e_tok_s", "e2e", "tok/s"),
    Column("speedup", "speedup", "x", digits=2),
    Column("tok_per_j", "tok/J", digits=2),
    Column("peak_mem_mb", "peak mem", "MB", digits=0),
    Column("agreement_pct", "agreement", "%"),
    Column("rouge_l", "ROUGE-L", digits=3),
    Column("perplexity", "ppl", digits=2),
    Column("task_rouge_l", "task ROUGE-L", digits=3),  # against the prompt set's reference answers
    Column("task_rouge_l_base", "task vs base", digits=3),  # the same answers against the baseline's
    Column("roofline_eff_pct", "roofline eff.", "%"),
    Column("roofline_probe", "probe", numeric=False),  # "invalid": eff. against a probe that no longer validates
    Column("reps", "reps", digits=0),
    Column("validity", "valid", numeric=False),
    Column("status", "status", numeric=False),
)


def _median(r: Record, name: str, scale: float = 1.0) -> float | None:
    m = r.metrics.get(name)
    return None if m is None else m.median * scale


def cell_row(r: Record, records: list[Record]) -> dict[str, Any]:
    """Raw values of one row (None where a figure does not exist)."""
    e, q = r.energy, r.quality
    decode = r.metrics.get("decode_tok_s")
    eff = r.roofline.decode.efficiency_pct() if r.roofline and r.roofline.decode else None
    return {
        "engine": r.cell.engine_label,
        "batch": r.cell.batch_size,
        "workload": f"{r.cell.prompt_len}/{r.cell.gen_len}",
        "ttft_ms": _median(r, "ttft_s", 1e3),
        "tpot_ms": _median(r, "tpot_s", 1e3),
        "decode_tok_s": _median(r, "decode_tok_s"),
        "decode_cv_pct": 100 * decode.cv if decode else None,
        "e2e_tok_s": _median(r, "e2e_tok_s"),
        "speedup": speedup(r, records),
        "tok_per_j": e.tokens_per_joule.value if e and e.tokens_per_joule else None,
        "peak_mem_mb": r.memory.peak_bytes.value / 1e6 if r.memory and r.memory.peak_bytes.value else None,
        "agreement_pct": 100 * q.agreement.value if q and q.agreement and q.agreement.value is not None else None,
        "rouge_l": q.rouge_l.value if q and q.rouge_l else None,
        "perplexity": q.perplexity.value if q and q.perplexity else None,
        "task_rouge_l": q.task.vs_reference["rouge_l"].mean if q and q.task else None,
        "task_rouge_l_base": q.task.vs_baseline["rouge_l"].mean if q and q.task and q.task.vs_baseline else None,
        "roofline_eff_pct": eff,
        "roofline_probe": "invalid" if probe_reasons(r) else None,
        "reps": r.repetitions.measured if r.repetitions else None,
        "validity": None if r.validity.status == "n/a" else r.validity.summary(),
        "status": r.status,  # the reasons: the summary's sentences, the report's problem table, the record
    }


def format_value(col: Column, value: Any) -> str:
    if value is None:
        return "-"
    if not col.numeric:
        return str(value)
    return f"{value * col.scale:.{col.digits}f}"


def header(col: Column) -> str:
    return f"{col.title} {col.unit}".strip()


def energy_notes(records: list[Record]) -> list[str]:
    """Why tokens/J is missing, once per distinct reason."""
    reasons = {r.energy.reason for r in records if r.energy is not None and not r.energy.measured and r.energy.reason}
    return [f"tok/J n/a: {reason}" for reason in sorted(reasons)]


def validity_notes(records: list[Record]) -> list[str]:
    """What the valid column means, once some cell has been judged."""
    if not any(r.validity.status != "n/a" for r in records):
        return []
    return [
        "valid: the cell passed its checks (CV, repetitions, seconds, load, clocks); invalid cells are never ranked"
    ]


def _measured_ceiling(r: Record) -> CeilingRef | None:
    """The measured ceilings the record's roofline efficiency is computed against, if it is."""
    if r.roofline is None or r.roofline.decode is None or "measured" not in r.roofline.decode.efficiency:
        return None
    return next((c for c in r.roofline.ceilings if c.source == "measured"), None)


def probe_reasons(r: Record) -> list[str]:
    """Why the probe behind the record's roofline efficiency no longer validates (empty: it does, or none)."""
    ceiling = _measured_ceiling(r)
    return ref_reasons(ceiling) if ceiling is not None else []


def probe_notes(records: list[Record]) -> list[str]:
    """Once per probe that no longer validates: which, why, and how many cells' efficiency it is behind."""
    found: dict[str, tuple[list[str], int]] = {}
    for r in records:
        reasons = probe_reasons(r)
        ceiling = _measured_ceiling(r)
        if reasons and ceiling is not None:
            name = ceiling.probe.file if ceiling.probe else ceiling.ref
            found[name] = (reasons, found.get(name, (reasons, 0))[1] + 1)
    return [
        f"probe invalid: the roofline eff. of {n} cell{'s' * (n != 1)} is against {name}, which no longer "
        f"validates ({'; '.join(reasons)}); `rooflens hw probe` on a quiet machine, then run again"
        for name, (reasons, n) in sorted(found.items())
    ]


def task_notes(records: list[Record]) -> list[str]:
    """What the task columns hold, once per prompt set, and the caveat of a model whose weights were quantized
    before rooflens saw them."""
    notes = []
    for name in sorted({r.quality.task.prompt_set for r in records if r.quality and r.quality.task}):
        tasks = [r.quality.task for r in records if r.quality and r.quality.task and r.quality.task.prompt_set == name]
        n = max(len(t.items) for t in tasks if t is not None)
        notes.append(
            f"task ROUGE-L: the engine's answers to {n} item{'s' * (n != 1)} of the prompt set {name} against its "
            "reference answers (task vs base: against the baseline engine's answers); greedy, cut at EOS, untimed; "
            "intervals, token F1 and exact match in the records"
        )
    if notes:
        notes += sorted({f"quality caveat: {r.model.weights_note}" for r in records if r.model and _pre_quantized(r)})
    return notes


def _pre_quantized(r: Record) -> bool:
    return r.model is not None and (r.model.weights_origin or "").startswith("dequantized")


def table_notes(records: list[Record]) -> list[str]:
    """Every note a summary table carries under it: energy, validity, probes that no longer validate, tasks."""
    return energy_notes(records) + validity_notes(records) + probe_notes(records) + task_notes(records)


def visible_columns(rows: list[dict[str, Any]]) -> list[Column]:
    """Columns that have at least one value (quality and roofline appear once some cell has them)."""
    always = {"engine", "batch", "workload", "decode_tok_s", "tok_per_j", "status"}
    return [c for c in COLUMNS if c.key in always or any(row[c.key] is not None for row in rows)]
