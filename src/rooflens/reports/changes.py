"""What changed between two sets of records, cell by cell and metric by metric (the data of `report A B`).

Metrics with repetitions are judged by the regression gate's own test (``results.compare``): a
one-sided Mann-Whitney U on the raw repetitions, a bootstrap for the speedup over the run's baseline
engine. Tokens/J and quality are one value per cell: their change is shown and never called significant.
A cell measured invalid on either side gets the gate's ``invalid`` verdict, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rooflens.results.compare import compare_records, latest_by_cell
from rooflens.results.derived import CellKey, baseline_of
from rooflens.results.identity import SETTINGS
from rooflens.results.record import Quantity, Record
from rooflens.results.runs import newest_complete_runs

ANY = frozenset(SETTINGS)  # a report shows every matched cell; differing settings are notes, not refusals

Verdict = Literal["regression", "improvement", "unchanged", "inconclusive", "invalid", "one value"]


@dataclass(frozen=True)
class MetricSpec:
    key: str  # a record metric name, "speedup:<metric>", or a single-value field (tok_per_j, agreement, rouge_l)
    title: str
    unit: str
    scale: float = 1.0
    digits: int = 1
    better: Literal["higher", "lower"] = "higher"


REPEATED = (
    MetricSpec("decode_tok_s", "decode", "tok/s"),
    MetricSpec("prefill_tok_s", "prefill", "tok/s"),
    MetricSpec("ttft_s", "TTFT", "ms", 1e3, 2, "lower"),
    MetricSpec("tpot_s", "TPOT", "ms", 1e3, 3, "lower"),
    MetricSpec("speedup:decode_tok_s", "decode speedup over the run's baseline", "x", digits=3),
)
SINGLE = (
    MetricSpec("tok_per_j", "tokens/J", "tok/J", digits=3),
    MetricSpec("agreement", "token agreement", "%", 100.0),
    MetricSpec("rouge_l", "ROUGE-L", "", digits=3),
)
METRICS = REPEATED + SINGLE


@dataclass(frozen=True)
class Change:
    metric: MetricSpec
    base: float
    current: float
    change: float | None  # (current - base) / base; None when the base is 0
    p_value: float | None
    verdict: Verdict
    source: str  # provenance of the values: measured, derived
    test: str  # how significance was judged, or why it was not


@dataclass(frozen=True)
class CellChanges:
    cell: str
    changes: list[Change]


@dataclass(frozen=True)
class StatusChange:
    cell: str
    base: str
    current: str
    reason: str


@dataclass(frozen=True)
class Side:
    label: str
    runs: list[str]
    commits: list[str]
    records: int


@dataclass(frozen=True)
class ChangeReport:
    base: Side
    current: Side
    cells: list[CellChanges]
    status_changes: list[StatusChange]
    only_base: list[str]
    only_current: list[str]
    notes: list[str]
    threshold: float
    alpha: float

    def count(self, verdict: str) -> int:
        return sum(1 for c in self.cells for ch in c.changes if ch.verdict == verdict)


def _namer(keys: list[CellKey]) -> dict[CellKey, str]:
    """Short cell names: engine, workload and batch, prefixed by experiment/model only when those vary."""
    prefix = len({(k.experiment, k.model) for k in keys}) > 1
    devices = len({k.device for k in keys}) > 1
    out = {}
    for k in keys:
        name = f"{k.engine} {k.workload} b{k.batch}"
        if prefix:
            name = f"{k.experiment}/{k.model}: {name}"
        if devices:
            name += f" ({k.device})"
        out[k] = name
    return out


def _side(label: str, records: list[Record]) -> Side:
    commits = sorted(
        {
            (r.environment.get("rooflens_git", {}).get("commit") or "unknown")[:12]
            + (" (dirty)" if r.environment.get("rooflens_git", {}).get("dirty") else "")
            for r in records
        }
    )
    return Side(label, sorted({str(r.experiment.get("run_id")) for r in records}), commits, len(records))


def _single(r: Record, key: str) -> Quantity | None:
    if key == "tok_per_j":
        return r.energy.tokens_per_joule if r.energy and r.energy.measured else None
    return getattr(r.quality, key) if r.quality else None


def _repeated(
    rb: Record, rc: Record, base: list[Record], current: list[Record], threshold: float, alpha: float
) -> tuple[list[Change], list[str]]:
    """The repeated metrics of one matched cell, through the regression gate's comparison."""
    specs = {m.key: m for m in REPEATED}
    absolute = tuple(k for k in specs if ":" not in k and k in rb.metrics and k in rc.metrics)
    rows, notes = [], []
    if absolute:
        res = compare_records(
            [rb],
            [rc],
            metrics=absolute,
            threshold=threshold,
            alpha=alpha,
            allow_hardware_mismatch=True,
            allow_mismatch=ANY,
        )
        rows += res.rows
        notes += res.notes
    bb, bc = baseline_of(rb, base), baseline_of(rc, current)
    if bb is not None and bc is not None and bb.cell.engine_label != rb.cell.engine_label:
        res = compare_records(
            [rb, bb],
            [rc, bc],
            metrics=("speedup:decode_tok_s",),
            threshold=threshold,
            alpha=alpha,
            allow_hardware_mismatch=True,
            allow_mismatch=ANY,
        )
        rows += res.rows  # the baseline's own cell has no relative row: these are rb's
        notes += res.notes
    out = []
    for row in rows:
        spec = specs[row.metric]
        relative = ":" in row.metric
        if row.verdict == "invalid":
            test = f"not judged, measurement invalid ({row.reason})"
        elif row.verdict == "inconclusive":
            test = f"inconclusive: {row.reason}"
        elif relative:
            test = f"bootstrap of the speedup, paired rounds where interleaved (n={row.n_base} vs {row.n_current})"
        else:
            test = f"one-sided Mann-Whitney U (n={row.n_base} vs {row.n_current})"
        source = "derived" if relative else rc.metrics[row.metric].source
        raw = (row.current_median - row.base_median) / row.base_median if row.base_median else None
        out.append(Change(spec, row.base_median, row.current_median, raw, row.p_value, row.verdict, source, test))
    order = list(specs)
    return sorted(out, key=lambda c: order.index(c.metric.key)), notes


def _singles(rb: Record, rc: Record) -> list[Change]:
    out = []
    for spec in SINGLE:
        qb, qc = _single(rb, spec.key), _single(rc, spec.key)
        if qb is None or qc is None or qb.value is None or qc.value is None:
            continue
        raw = (qc.value - qb.value) / qb.value if qb.value else None
        out.append(Change(spec, qb.value, qc.value, raw, None, "one value", qc.source, "none: one value per cell"))
    return out


def _reason(r: Record | None) -> str:
    if r is None:
        return "no record of this cell"
    return r.reason.message.splitlines()[0] if r.reason and r.reason.message else ""


def changes(
    base: list[Record],
    current: list[Record],
    *,
    base_label: str = "base",
    current_label: str = "current",
    threshold: float = 0.05,
    alpha: float = 0.05,
) -> ChangeReport:
    """Every cell of both sets: matched ok cells metric by metric, status changes, cells on one side only."""
    base, base_notes = newest_complete_runs(base, base_label)
    current, current_notes = newest_complete_runs(current, current_label)
    b, c = latest_by_cell(base), latest_by_cell(current)
    names = _namer(list(dict.fromkeys([*b, *c])))
    cells, status, notes = [], [], [*base_notes, *current_notes]
    for key, rb in b.items():
        rc = c.get(key)
        if rc is None:
            continue
        if rb.status == "ok" and rc.status == "ok":
            repeated, more = _repeated(rb, rc, base, current, threshold, alpha)
            notes += more
            cells.append(CellChanges(names[key], repeated + _singles(rb, rc)))
        else:
            status.append(StatusChange(names[key], rb.status, rc.status, _reason(rc) or _reason(rb)))
    if b and c and not any(k in c for k in b):
        notes.append("no cell matches: cells match on experiment, model, engine label, workload, batch size and device")
    return ChangeReport(
        base=_side(base_label, base),
        current=_side(current_label, current),
        cells=cells,
        status_changes=status,
        only_base=[names[k] for k in b if k not in c],
        only_current=[names[k] for k in c if k not in b],
        notes=sorted(set(notes)),
        threshold=threshold,
        alpha=alpha,
    )
