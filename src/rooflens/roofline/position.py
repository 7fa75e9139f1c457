"""Place a measured run on the roofline: analytic FLOPs/bytes + measured times -> achieved rates, efficiency.

Inputs are the model config, the cell (batch, prompt and generation lengths), the measured
medians of TTFT and TPOT, the engine's :class:`RooflineHints`, and the ceilings (datasheet
from the hardware profile, measured from `rooflens hw probe` when a valid probe at the run's thread
count exists: the record names that probe, its spread and its age).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rooflens.results.record import CeilingRef, PhasePosition, ProbeRef, Quantity, RooflineResult
from rooflens.roofline.analytic import ModelShape, PhaseCost, Precision, decode_context, decode_cost, prefill_cost
from rooflens.roofline.hardware import HardwareProfile
from rooflens.roofline.hints import RooflineHints
from rooflens.roofline.probe_file import ProbeResult, probe_path, saved_reasons
from rooflens.roofline.probe_rules import RULES

ANALYTIC = "rooflens.roofline.analytic (per-op FLOPs and bytes from the model config; attention as the model runs it)"
DTYPE_KEYS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DTYPE_BITS = {"float32": 32.0, "bfloat16": 16.0, "float16": 16.0}


def _q(value: float | None, unit: str, source: str, how: str) -> Quantity:
    return Quantity(value=value, unit=unit, source=source, how=how)


def probe_ref(probe: ProbeResult, dtype: str, at: datetime | None = None) -> ProbeRef:
    """What a record says of the probe its measured ``dtype`` ceilings come from, judged at ``at`` (now)."""
    at = at or datetime.now(timezone.utc)
    bw, gemm = probe.bandwidth, probe.gemm[dtype]
    return ProbeRef(
        file=probe_path(probe.device_name, probe.key_threads).name,
        device_name=probe.device_name,
        threads=probe.key_threads,
        measured_at=probe.measured_at,
        age_s=round((at - datetime.fromisoformat(probe.measured_at)).total_seconds(), 1),
        bandwidth_cv=bw.cv,
        peak_flops_cv=gemm.cv,
        bandwidth_median_to_best=bw.median / bw.max,
        peak_flops_median_to_best=gemm.median / gemm.max,
        valid=not saved_reasons(probe, at),
        rules=RULES.as_dict(),
    )


def ceilings_for(
    profile: HardwareProfile, dtype: str, probe: ProbeResult | None = None, *, at: datetime | None = None
) -> list[CeilingRef]:
    """Datasheet ceilings (when the profile has both numbers) and measured ones (when probed, naming the probe)."""
    key = DTYPE_KEYS.get(dtype, dtype)
    out = []
    bw, peak = profile.bandwidth_si(), profile.peak_flops_si(key)
    if bw and peak:
        out.append(
            CeilingRef(
                source="datasheet",
                ref=f"hardware profile {profile.name}",
                dtype=key,
                bandwidth=_q(bw, "B/s", "datasheet", profile.memory_bandwidth.source),
                peak_flops=_q(peak, "FLOP/s", "datasheet", profile.peak_flops[key].source),
            )
        )
    if probe is not None and key in probe.gemm:
        ref = probe_ref(probe, key, at)
        out.append(
            CeilingRef(
                source="measured",
                ref=f"rooflens hw probe, {probe.measured_at}, {ref.file}",
                dtype=key,
                bandwidth=_q(probe.bandwidth.max, "B/s", "measured", probe.bandwidth.how),
                peak_flops=_q(probe.gemm[key].max, "FLOP/s", "measured", probe.gemm[key].how),
                probe=ref,
            )
        )
    return out


def why_unmeasured(probe: ProbeResult | None, dtype: str, note: str | None) -> str | None:
    """Why a record in ``dtype`` has no measured ceilings: ``note`` (no valid probe at its threads, a
    refused probe), or the probe lacks the dtype; None when it has them."""
    key = DTYPE_KEYS.get(dtype, dtype)
    if probe is None:
        return note
    if key in probe.gemm:
        return None
    file = probe_path(probe.device_name, probe.key_threads).name
    return f"the probe {file} has no {key} GEMM ({probe.skipped.get(key, 'not measured')})"


def _position(
    phase: str,
    cost: PhaseCost,
    per: float,
    time_s: float,
    how_time: str,
    ceilings: list[CeilingRef],
    weight_bits: float,
) -> PhasePosition:
    """``cost`` divided by ``per`` (tokens per pass) is the work done in ``time_s``."""
    a = "analytic"
    flops, wb, kb, ab = cost.flops / per, cost.weight_bytes / per, cost.kv_bytes / per, cost.act_bytes / per
    total = wb + kb + ab
    intensity = flops / total
    achieved_f, achieved_b = flops / time_s, total / time_s
    pos = PhasePosition(
        phase=phase,
        weight_bits=weight_bits,
        flops=_q(flops, "FLOP", "modelled", a),
        weight_bytes=_q(wb, "B", "modelled", a),
        kv_bytes=_q(kb, "B", "modelled", a),
        act_bytes=_q(ab, "B", "modelled", a),
        bytes=_q(total, "B", "modelled", a),
        intensity=_q(intensity, "FLOP/B", "modelled", "analytic FLOPs / analytic bytes"),
        time_s=_q(time_s, "s", "measured", how_time),
        achieved_flops=_q(achieved_f, "FLOP/s", "derived", "analytic FLOPs / measured time"),
        achieved_bandwidth=_q(achieved_b, "B/s", "derived", "analytic bytes / measured time"),
    )
    for c in ceilings:
        bw, peak = c.bandwidth.value, c.peak_flops.value
        attainable = min(peak, intensity * bw)
        pos.attainable_flops[c.source] = _q(
            attainable, "FLOP/s", "derived", f"min(peak, intensity x bandwidth), {c.ref}"
        )
        pos.efficiency[c.source] = _q(achieved_f / attainable, "fraction", "derived", "achieved / attainable FLOP/s")
        pos.bound[c.source] = "memory" if intensity * bw < peak else "compute"
    return pos


def phase_costs(
    config: Any, dtype: str, *, batch: int, prompt_len: int, gen_len: int, hints: RooflineHints
) -> tuple[PhaseCost, PhaseCost]:
    """The analytic prefill pass and decode pass (at the mean decode context) of a cell as its engine ran it:
    each phase's weight bits, the tokens a decode pass verifies, the layers it runs, the engine's extra ops.
    An unsupported architecture raises ``ValueError``."""
    shape = ModelShape.from_config(config)
    bits = DTYPE_BITS.get(dtype, 16.0)
    p_prefill = Precision(weight_bits=hints.bits_for("prefill") or bits, act_bits=bits, kv_bits=bits)
    precision = Precision(weight_bits=hints.bits_for("decode") or bits, act_bits=bits, kv_bits=bits)
    verified = max(1, round(hints.tokens_verified_per_pass or hints.tokens_per_pass or 1.0))
    prefill = prefill_cost(shape, batch=batch, prompt_len=prompt_len, precision=p_prefill)
    decode = decode_cost(
        shape,
        batch=batch,
        context_len=decode_context(prompt_len, gen_len),
        precision=precision,
        new_tokens=verified,
        layers_executed=hints.layers_executed,
        extra_ops=hints.extra_ops,
    )
    return prefill, decode


def roofline_position(
    config: Any,
    dtype: str,
    *,
    batch: int,
    prompt_len: int,
    gen_len: int,
    ttft_s: float,
    tpot_s: float,
    hints: RooflineHints,
    ceilings: list[CeilingRef],
    probe_note: str | None = None,
) -> RooflineResult:
    """The record's roofline section; an unsupported architecture gives a result with a reason.

    ``probe_note`` says why there are no measured ceilings; kept only when there are none.
    """
    if any(c.source == "measured" for c in ceilings):
        probe_note = None
    try:
        prefill, decode = phase_costs(config, dtype, batch=batch, prompt_len=prompt_len, gen_len=gen_len, hints=hints)
    except ValueError as err:
        return RooflineResult(analytic_model=ANALYTIC, reason=str(err), probe_note=probe_note)
    bits = DTYPE_BITS.get(dtype, 16.0)
    w_prefill, w_decode = hints.bits_for("prefill") or bits, hints.bits_for("decode") or bits
    k = hints.tokens_per_pass or 1.0  # tokens kept per decode pass
    return RooflineResult(
        analytic_model=ANALYTIC,
        weight_bits=w_decode,
        act_bits=bits,
        kv_bits=bits,
        decode_context=decode_context(prompt_len, gen_len),
        tokens_per_pass=k,
        layers_executed=decode.layers_executed,
        engine_note=hints.note,
        ceilings=ceilings,
        probe_note=probe_note,
        prefill=_position("prefill", prefill, 1.0, ttft_s, "median TTFT", ceilings, w_prefill),
        decode=_position("decode", decode, k, tpot_s, "median TPOT", ceilings, w_decode),
    )
