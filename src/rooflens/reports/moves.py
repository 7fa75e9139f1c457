"""Where a technique moved a run on the roofline: the baseline's point -> the engine's, and why.

A move joins the baseline engine's position to another engine's, for the same run, workload, batch
size and phase. Its reasons are read from the records: tokens per target pass (speculation) and
layers run per token (early exit) as the engines measured them, weight bits and bytes per token from
the analytic model, and the measured change of tokens/s.
"""

from __future__ import annotations

from dataclasses import dataclass

from rooflens.results.derived import baseline_of, speedup
from rooflens.results.record import PhasePosition, Record

# what each reason is, for captions: every number on the chart says where it came from
REASON_SOURCES = (
    "tok/pass and layers: measured by the engine; bits and bytes/tok: analytic model (modelled); "
    "× tok/s: measured medians"
)
SPEED_METRIC = {"decode": "decode_tok_s", "prefill": "prefill_tok_s"}


@dataclass(frozen=True)
class Move:
    engine: str
    baseline: str
    workload: str
    batch: int
    phase: str
    start: tuple[float, float]  # the baseline's (intensity FLOP/B, achieved FLOP/s)
    end: tuple[float, float]  # this engine's
    reasons: tuple[str, ...]

    def label(self) -> str:
        return f"{self.engine}: " + "; ".join(self.reasons) if self.reasons else self.engine


def _position(r: Record, phase: str) -> PhasePosition | None:
    if r.status != "ok" or r.roofline is None:
        return None
    pos = r.roofline.decode if phase == "decode" else r.roofline.prefill
    if pos is None or pos.intensity.value is None or pos.achieved_flops.value is None:
        return None
    return pos


def _stat(r: Record, name: str) -> float | None:
    s = r.engine_stats.get(name)
    return float(s.value) if s is not None and isinstance(s.value, (int, float)) else None


def reasons(base: Record, r: Record, phase: str, records: list[Record]) -> tuple[str, ...]:
    """The short explanations of a move, most specific first; empty when the records say nothing."""
    out = []
    rb, rr = base.roofline, r.roofline
    assert rb is not None and rr is not None
    if phase == "decode":
        tpp = rr.tokens_per_pass or _stat(r, "tokens_per_verify_pass")
        if tpp is not None and tpp > 1.005:
            out.append(f"{tpp:.2f} tok/pass")
        layers = rr.layers_executed or _stat(r, "layers_executed_per_token")
        full = rb.layers_executed or (r.model.num_layers if r.model else None)
        if layers is not None and full and layers < full - 1e-3:
            out.append(f"{layers:.1f}/{full:g} layers")
    pb, pr = _position(base, phase), _position(r, phase)
    assert pb is not None and pr is not None
    if pb.weight_bits and pr.weight_bits and abs(pr.weight_bits - pb.weight_bits) > 0.05:
        out.append(f"{pr.weight_bits:.3g}-bit weights")
    if pb.bytes.value and pr.bytes.value:
        ratio = pr.bytes.value / pb.bytes.value
        if abs(ratio - 1) > 0.01:
            out.append(f"bytes/tok ×{ratio:.2f}")
    s = speedup(r, records, SPEED_METRIC[phase])
    if s is not None:
        out.append(f"{s:.2f}× tok/s")
    return tuple(out)


def phase_moves(records: list[Record], phase: str = "decode") -> list[Move]:
    """One move per ok non-baseline record with a roofline position and a positioned baseline in its run."""
    moves = []
    for r in records:
        end = _position(r, phase)
        base = baseline_of(r, records) if end is not None else None
        start = _position(base, phase) if base is not None else None
        if end is None or base is None or start is None or base.cell.engine_label == r.cell.engine_label:
            continue
        moves.append(
            Move(
                engine=r.cell.engine_label,
                baseline=base.cell.engine_label,
                workload=r.cell.workload,
                batch=r.cell.batch_size,
                phase=phase,
                start=(start.intensity.value, start.achieved_flops.value),  # type: ignore[arg-type]
                end=(end.intensity.value, end.achieved_flops.value),  # type: ignore[arg-type]
                reasons=reasons(base, r, phase, records),
            )
        )
    return moves
