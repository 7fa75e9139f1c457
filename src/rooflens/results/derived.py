"""Figures derived across records: ratios to the baseline engine measured in the same run."""

from __future__ import annotations

from collections.abc import Iterable

from rooflens.results.record import Record


def cell_key(r: Record) -> tuple:
    """Identifies a cell across runs: experiment, model, engine, workload, batch, hardware."""
    c = r.cell
    model = r.model.label if r.model else None
    return (
        r.experiment.get("name"),
        model,
        c.engine_label,
        c.workload,
        c.prompt_len,
        c.gen_len,
        c.batch_size,
        r.hardware_profile.get("name"),
        r.device,
    )


def baseline_of(r: Record, records: Iterable[Record]) -> Record | None:
    """The ok record of the experiment's baseline engine in the same run, workload and batch size."""
    label = r.experiment.get("baseline")
    for other in records:
        if (
            other.status == "ok"
            and other.experiment.get("run_id") == r.experiment.get("run_id")
            and other.cell.engine_label == label
            and other.cell.workload == r.cell.workload
            and other.cell.batch_size == r.cell.batch_size
        ):
            return other
    return None


def speedup(r: Record, records: list[Record], metric: str = "decode_tok_s") -> float | None:
    """Median of ``metric`` over the baseline's median (>1 = faster), or None without a baseline."""
    if r.status != "ok":
        return None
    base = baseline_of(r, records)
    if base is None or metric not in r.metrics or not base.metrics[metric].median:
        return None
    return r.metrics[metric].median / base.metrics[metric].median
