"""Figures derived across records: ratios to the baseline engine measured in the same run.

Where the engine and the baseline were measured in the same interleaved rounds
(:mod:`rooflens.bench.rounds`), a speedup is the median of the per-round ratios: the machine's drift
between rounds cancels in each ratio. Otherwise (blocks) it is the ratio of the two medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import NamedTuple

from rooflens.results.record import Record


class CellKey(NamedTuple):
    """Identifies a cell across runs. What it ran on and how (hardware, dtype, threads, options) is checked
    apart (:mod:`rooflens.results.identity`)."""

    experiment: str | None
    model: str | None
    engine: str
    workload: str
    prompt_len: int
    gen_len: int
    batch: int
    device: str

    def describe(self) -> str:
        return f"{self.experiment}/{self.model}/{self.engine}/{self.workload}/b{self.batch}"


def cell_key(r: Record) -> CellKey:
    c = r.cell
    return CellKey(
        r.experiment.get("name"),
        r.model.label if r.model else None,
        c.engine_label,
        c.workload,
        c.prompt_len,
        c.gen_len,
        c.batch_size,
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


def paired_ratios(r: Record, base: Record, metric: str) -> list[float] | None:
    """Per round, ``r``'s ``metric`` over ``base``'s, when both were measured in the same interleaved rounds
    (None otherwise, or for a metric that is not one sample per repetition)."""
    ri, bi = r.repetitions, base.repetitions
    if ri is None or bi is None or not ri.rounds or not bi.rounds or base.cell.engine_label not in ri.rounds_with:
        return None
    if metric not in r.metrics or metric not in base.metrics:
        return None
    xs, bs = r.metrics[metric].samples, base.metrics[metric].samples
    if len(xs) != len(ri.rounds) or len(bs) != len(bi.rounds):
        return None
    by_round = dict(zip(bi.rounds, bs))
    ratios = [x / by_round[k] for k, x in zip(ri.rounds, xs) if by_round.get(k)]
    return ratios or None


def speedup(r: Record, records: list[Record], metric: str = "decode_tok_s") -> float | None:
    """``metric`` over the baseline's (>1 = faster): the median of paired rounds' ratios where the two were
    interleaved, else the ratio of the medians; None without a baseline."""
    if r.status != "ok":
        return None
    base = baseline_of(r, records)
    if base is None or metric not in r.metrics or metric not in base.metrics or not base.metrics[metric].median:
        return None
    paired = paired_ratios(r, base, metric)
    if paired:
        return statistics.median(paired)
    return r.metrics[metric].median / base.metrics[metric].median
