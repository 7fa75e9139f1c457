"""`rooflens roofline`: bound-limited projections of a model on any hardware, without running it.

The model comes as data (a config with the attributes :meth:`ModelShape.from_config` reads, or a
:class:`ModelShape`): resolving a model name to its config is the caller's (``rooflens.models.catalog``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rooflens.roofline.analytic import (
    ModelShape,
    PhaseCost,
    Precision,
    Projection,
    bits_per_weight,
    decode_context,
    decode_cost,
    prefill_cost,
    project,
)
from rooflens.roofline.hardware import HardwareProfile, resolve_profile
from rooflens.roofline.probe_file import best_probe


class WhatIfError(ValueError):
    """Bad input for a projection; the message names what is allowed."""


class NoCeilingsError(WhatIfError):
    """The hardware has no ceilings yet: costs can be shown, bound-limited times cannot."""


@dataclass(frozen=True)
class Ceilings:
    bandwidth: float
    peak_flops: float
    source: str  # "datasheet" | "measured"
    description: str


def ceilings(hw: str, compute_dtypes: tuple[str, ...]) -> tuple[HardwareProfile, Ceilings]:
    """Ceilings of a profile name or ``auto`` (this machine): datasheet numbers, else a probe.

    ``compute_dtypes`` in order of preference (e.g. bf16 then fp16 for a GPU without bf16).
    """
    try:
        resolved = resolve_profile(hw, "auto")
    except ValueError as err:
        raise WhatIfError(str(err)) from None
    profile = resolved.profile
    found = best_probe(resolved.device_name) if resolved.device_name else None  # the most threads: a projection
    probe = found.probe if found else None
    for dtype in compute_dtypes:
        bw, peak = profile.bandwidth_si(), profile.peak_flops_si(dtype)
        if bw and peak:
            return profile, Ceilings(bw, peak, "datasheet", f"{profile.display_name} datasheet, {dtype} dense peak")
        if probe is not None and dtype in probe.gemm:
            return profile, Ceilings(
                probe.bandwidth.max,
                probe.gemm[dtype].max,
                "measured",
                f"{resolved.device_name}, {dtype}, measured by rooflens hw probe at {probe.measured_at}"
                f"{f', {probe.key_threads} threads' if probe.key_threads else ''}",
            )
    raise NoCeilingsError(
        f"no {'/'.join(compute_dtypes)} ceilings for '{profile.name}' ({resolved.reason}); run `rooflens hw probe` "
        "on this machine or pass --hw <profile> (see `rooflens hw list`)"
        f"{f' [{found.note}]' if found and found.note else ''}"
    )


ACT_BITS = {8: "int8", 4: "int4"}  # integer activations (W8A8, W4A4): the matmuls run at that peak


def precision_for(bits: int, group_size: int, kv_bits: int | None = None, act_bits: int | None = None) -> Precision:
    """16/32 bits: plain weights; 8/4/3/2: group-wise weights with one fp16 scale per group.

    Activations are 32-bit with 32-bit weights, else 16-bit, or ``act_bits`` (8, 4: integer activations, as
    W8A8/W4A4 formats run them); the KV cache is 32-bit with 32-bit weights, else 16-bit, unless ``kv_bits``
    says otherwise.
    """
    if bits not in (32, 16, 8, 4, 3, 2):
        raise WhatIfError(f"--bits {bits}: allowed 32, 16, 8, 4, 3, 2")
    if act_bits is not None and act_bits not in ACT_BITS:
        raise WhatIfError(f"--act-bits {act_bits}: allowed {', '.join(map(str, ACT_BITS))} (or leave it out)")
    weight_bits = float(bits) if bits >= 16 else bits_per_weight(bits, group_size)
    wide = 32.0 if bits == 32 else 16.0
    return Precision(
        weight_bits=weight_bits,
        act_bits=wide if act_bits is None else float(act_bits),
        kv_bits=wide if kv_bits is None else float(kv_bits),
    )


def compute_dtypes(bits: list[int], act_bits: int | None) -> tuple[str, ...]:
    """The peaks a projection uses, in order of preference: int8/int4 with integer activations, fp32 when every
    weight is 32-bit, else bf16 (fp16 where there is no bf16). None for act_bits it does not know: the costs then
    say why (:func:`precision_for`)."""
    if act_bits is not None:
        return (ACT_BITS[act_bits],) if act_bits in ACT_BITS else ()
    return ("fp32",) if bits == [32] else ("bf16", "fp16")


def _shape(config: Any) -> ModelShape:
    if isinstance(config, ModelShape):
        return config
    try:
        return ModelShape.from_config(config)
    except ValueError as err:
        raise WhatIfError(str(err)) from None


def phase_costs(
    config: Any,
    *,
    batches: list[int],
    bits: list[int],
    prompt_len: int,
    gen_len: int,
    group_size: int = 128,
    kv_bits: int | None = None,
    act_bits: int | None = None,
) -> list[tuple[int, int, PhaseCost, PhaseCost]]:
    """FLOPs and bytes of the prefill pass and of a decode step at the mean context: no ceilings needed."""
    shape = _shape(config)
    out = []
    for b in batches:
        for w in bits:
            p = precision_for(w, group_size, kv_bits, act_bits)
            out.append(
                (
                    b,
                    w,
                    prefill_cost(shape, batch=b, prompt_len=prompt_len, precision=p),
                    decode_cost(shape, batch=b, context_len=decode_context(prompt_len, gen_len), precision=p),
                )
            )
    return out


def projections(
    config: Any,
    c: Ceilings,
    *,
    batches: list[int],
    bits: list[int],
    prompt_len: int,
    gen_len: int,
    group_size: int = 128,
    kv_bits: int | None = None,
    act_bits: int | None = None,
) -> list[tuple[int, int, Projection]]:
    shape = _shape(config)
    return [
        (
            b,
            w,
            project(
                shape,
                batch=b,
                prompt_len=prompt_len,
                gen_len=gen_len,
                precision=precision_for(w, group_size, kv_bits, act_bits),
                bandwidth=c.bandwidth,
                peak_flops=c.peak_flops,
            ),
        )
        for b in batches
        for w in bits
    ]


def _cost_dict(ph: PhaseCost) -> dict[str, Any]:
    return {"tokens": ph.tokens, "context": ph.context, **ph.totals(), "intensity": ph.intensity}


@dataclass(frozen=True)
class WhatIf:
    """A model on one hardware: bound-limited projections, or, without ceilings, the costs alone and why."""

    model: str
    projections: list[tuple[int, int, Projection]] = field(default_factory=list)
    profile: HardwareProfile | None = None
    ceilings: Ceilings | None = None
    costs: list[tuple[int, int, PhaseCost, PhaseCost]] = field(default_factory=list)
    why: str = ""  # why there are no ceilings

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the projections with their ceilings, or the costs per phase (FLOPs and bytes, no times)."""
        if self.ceilings is None:
            costs = [
                {"batch": b, "bits": w, "prefill": _cost_dict(pre), "decode": _cost_dict(dec)}
                for b, w, pre, dec in self.costs
            ]
            return {"model": self.model, "ceilings": None, "why": self.why, "costs": costs}
        return {
            "model": self.model,
            "hardware": self.profile.name if self.profile else None,
            "ceilings": asdict(self.ceilings),
            "projections": [p.to_dict() for _, _, p in self.projections],
        }


def what_if(
    model: str,
    config: Any,
    hw: str,
    *,
    batches: list[int],
    bits: list[int],
    prompt_len: int,
    gen_len: int,
    group_size: int = 128,
    kv_bits: int | None = None,
    act_bits: int | None = None,
) -> WhatIf:
    """``config`` (the shape of the model called ``model``) on the ceilings of ``hw`` (a profile name or
    ``auto``), at bf16 (fp16 without bf16; fp32 when every weight is 32-bit; int8/int4 with ``act_bits`` 8/4)
    peak; without ceilings the costs only. Raises :class:`WhatIfError` for bad input."""
    workload = dict(
        batches=batches,
        bits=bits,
        prompt_len=prompt_len,
        gen_len=gen_len,
        group_size=group_size,
        kv_bits=kv_bits,
        act_bits=act_bits,
    )
    try:
        profile, c = ceilings(hw, compute_dtypes(bits, act_bits))
    except NoCeilingsError as err:
        return WhatIf(model, costs=phase_costs(config, **workload), why=str(err))
    return WhatIf(model, projections(config, c, **workload), profile, c)
