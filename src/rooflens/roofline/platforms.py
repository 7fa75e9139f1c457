"""Platform comparison: bound-limited decode tokens/s and a TDP-modelled tokens/J of one model on many profiles.

The hardware survey compares cloud GPUs, PC GPUs and CPUs/edge SoCs at batch 1 and 8 by tokens/s and tokens/J.
Every number in a :class:`PlatformRow` is *modelled*: the analytic bytes and FLOPs of one decode step (at the mean
decode context, as :func:`rooflens.roofline.analytic.project` uses) timed at the roofline of the profile's datasheet
ceilings, and an energy estimate that assumes the device draws its full TDP while it decodes at the roof. Measured
records are turned into :class:`MeasuredPoint` by :func:`measured_points` and kept apart, never mixed into the rows.

Nothing here imports torch, transformers, engines or the runner: ``rooflens roofline --hw all`` must answer at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rooflens.roofline.analytic import ModelShape, decode_context, decode_cost, kv_cache_bytes, weight_storage_bytes
from rooflens.roofline.hardware import HardwareProfile, UnknownProfileError, get_profile, list_profiles
from rooflens.roofline.whatif import precision_for

__all__ = [
    "CLASSES",
    "MeasuredPoint",
    "PlatformRow",
    "measured_points",
    "platform_class",
    "platform_rows",
]

#: The survey's three platform classes, in display order.
CLASSES: tuple[str, ...] = ("cloud GPU", "PC GPU", "CPU/edge")
_CLASS_OF_CATEGORY = {"cloud_gpu": "cloud GPU", "pc_gpu": "PC GPU", "cpu": "CPU/edge", "edge": "CPU/edge"}

NO_CEILINGS = "no datasheet ceilings"
BANDWIDTH_ONLY = "bandwidth only"
NO_TDP = "no TDP"


def platform_class(category: str) -> str:
    """The survey class of a profile category (``edge`` SoCs are compared with CPUs: both are on-device)."""
    try:
        return _CLASS_OF_CATEGORY[category]
    except KeyError:
        raise ValueError(f"unknown profile category {category!r}; known: {', '.join(_CLASS_OF_CATEGORY)}") from None


@dataclass(frozen=True)
class PlatformRow:
    """One profile at one batch size: modelled decode tokens/s and tokens/J, and where each number comes from.

    ``tokens_per_s`` is ``None`` when the datasheet has no memory bandwidth (the profile is listed, not dropped);
    ``tokens_per_joule`` is ``None`` without tokens/s or without a TDP. ``flags`` are short reasons for the
    table: :data:`NO_CEILINGS`, :data:`BANDWIDTH_ONLY` (no peak FLOP/s for the compute dtype: compute time is
    left out, so tokens/s is an upper bound), :data:`NO_TDP`, ``does not fit``.
    """

    profile: str
    display_name: str
    platform_class: str
    category: str
    batch: int
    weight_bits: float
    tokens_per_s: float | None
    bound: str  # "memory" | "compute" | "n/a"
    tokens_per_joule: float | None
    provenance: str  # how tokens_per_s was obtained, or why it is absent
    energy_provenance: str  # how tokens_per_joule was obtained, or why it is absent
    bandwidth: float | None  # B/s, datasheet
    peak_flops: float | None  # FLOP/s of compute_dtype, datasheet; None = not on the datasheet
    compute_dtype: str | None
    tdp_w: float | None
    decode_context: int
    decode_bytes: float  # bytes one decode step moves (whole batch)
    decode_flops: float
    memory_needed: float  # weights + KV cache at the end of the generation, bytes
    memory_capacity: float | None  # bytes, datasheet (the largest configuration for SoCs)
    flags: tuple[str, ...] = ()

    @property
    def fits(self) -> bool | None:
        """Whether weights + KV cache fit in the device memory; ``None`` when the capacity is not on the datasheet."""
        return None if self.memory_capacity is None else self.memory_needed <= self.memory_capacity


def _shape(model: Any) -> ModelShape:
    return model if isinstance(model, ModelShape) else ModelShape.from_config(model)


def _gb(value: float) -> str:
    return f"{value / 1e9:.4g} GB"


def platform_rows(
    model: Any,
    profiles: Iterable[HardwareProfile] | None = None,
    *,
    batches: Sequence[int] = (1, 8),
    bits: int = 16,
    prompt_len: int = 512,
    gen_len: int = 128,
    group_size: int = 128,
    kv_bits: int | None = None,
    compute_dtypes: Sequence[str] | None = None,
) -> list[PlatformRow]:
    """Rows for every profile (default: all shipped) and batch, grouped by :data:`CLASSES`, fastest first.

    ``model`` is a transformers config or a :class:`ModelShape`. Decode is one step at the mean context
    (:func:`~rooflens.roofline.analytic.decode_context`); its time is ``sum over ops of max(flops / peak, bytes / bandwidth)`` with the
    first of ``compute_dtypes`` (default bf16 then fp16; fp32 for 32-bit weights) that the datasheet has. A
    profile without that peak is projected on bandwidth alone (flag :data:`BANDWIDTH_ONLY`); one without
    bandwidth gets no tokens/s (flag :data:`NO_CEILINGS`). Modelled tokens/J = tokens/s / TDP.
    """
    shape = _shape(model)
    precision = precision_for(bits, group_size, kv_bits)
    dtypes = tuple(compute_dtypes) if compute_dtypes else (("fp32",) if bits == 32 else ("bf16", "fp16"))
    context = decode_context(prompt_len, gen_len)
    costs = {b: decode_cost(shape, batch=b, context_len=context, precision=precision) for b in batches}
    needed = {
        b: weight_storage_bytes(shape, precision)
        + kv_cache_bytes(shape, batch=b, seq_len=prompt_len + gen_len, precision=precision)
        for b in batches
    }
    rows: list[PlatformRow] = []
    for profile in list_profiles() if profiles is None else profiles:
        bandwidth = profile.bandwidth_si()
        dtype = next((d for d in dtypes if profile.peak_flops_si(d) is not None), None)
        peak = profile.peak_flops_si(dtype) if dtype is not None else None
        tdp = profile.tdp.si if profile.tdp is not None else None
        for b in batches:
            cost = costs[b]
            flags: list[str] = []
            if bandwidth is None:
                tok_s, bound = None, "n/a"
                flags.append(NO_CEILINGS)
                how = f"{NO_CEILINGS}: no memory bandwidth on the datasheet (`rooflens hw probe` measures it)"
            else:
                # math.inf as the peak: every op then takes bytes / bandwidth, the compute time is left out
                roof_peak = peak if peak is not None else math.inf
                tok_s = b * cost.tokens / cost.time_at_roofline(bandwidth, roof_peak)
                bound = cost.bound(bandwidth, roof_peak)
                how = (
                    f"modelled: analytic decode step (batch {b}, context {context}, {precision.weight_bits:g} bits/weight) "
                    f"at datasheet bandwidth {_gb(bandwidth)}/s"
                )
                if peak is not None:
                    how += f" and {dtype} dense peak {peak / 1e12:.4g} TFLOP/s"
                else:
                    flags.append(BANDWIDTH_ONLY)
                    how += (
                        f"; no {'/'.join(dtypes)} peak on the datasheet, so compute time is left out (an upper bound)"
                    )
            if tok_s is None:
                tok_j, energy_how = None, "no tokens/s to divide"
            elif tdp is None:
                tok_j, energy_how = None, "no TDP on the datasheet"
                flags.append(NO_TDP)
            else:
                tok_j = tok_s / tdp
                energy_how = (
                    f"modelled, not measured: bound tokens/s / TDP {tdp:g} W (assumes the full TDP is drawn while "
                    "decoding at the roof; host, idle and cooling power left out)"
                )
            capacity = profile.capacity_si()
            if capacity is not None and needed[b] > capacity:
                flags.append(f"does not fit: needs {_gb(needed[b])} of {_gb(capacity)}")
            rows.append(
                PlatformRow(
                    profile=profile.name,
                    display_name=profile.display_name,
                    platform_class=platform_class(profile.category),
                    category=profile.category,
                    batch=b,
                    weight_bits=precision.weight_bits,
                    tokens_per_s=tok_s,
                    bound=bound,
                    tokens_per_joule=tok_j,
                    provenance=how,
                    energy_provenance=energy_how,
                    bandwidth=bandwidth,
                    peak_flops=peak,
                    compute_dtype=dtype,
                    tdp_w=tdp,
                    decode_context=context,
                    decode_bytes=cost.bytes,
                    decode_flops=cost.flops,
                    memory_needed=needed[b],
                    memory_capacity=capacity,
                    flags=tuple(flags),
                )
            )
    return _grouped(rows, batches[0] if batches else None)


def _grouped(rows: list[PlatformRow], first_batch: int | None) -> list[PlatformRow]:
    """Class order, then fastest at the first batch first (profiles without tokens/s last), then batch order."""
    speed = {r.profile: r.tokens_per_s or 0.0 for r in rows if r.batch == first_batch}
    order = {b: i for i, b in enumerate(dict.fromkeys(r.batch for r in rows))}
    return sorted(
        rows, key=lambda r: (CLASSES.index(r.platform_class), -speed.get(r.profile, 0.0), r.profile, order[r.batch])
    )


# --------------------------------------------------------------------------- measured records


@dataclass(frozen=True)
class MeasuredPoint:
    """One measured record, for showing beside the modelled rows (never averaged into them).

    ``tokens_per_s`` is the record's median decode tokens/s (timers); ``tokens_per_joule`` only when the record
    has measured energy (NVML/RAPL), else ``None``.
    """

    profile: str
    display_name: str
    platform_class: str
    batch: int
    tokens_per_s: float
    tokens_per_joule: float | None
    engine: str
    dtype: str | None
    model: str | None
    record_id: str


def _record_class(hardware_profile: dict[str, Any], device: str) -> str:
    category = (hardware_profile.get("profile") or {}).get("category")
    if category is None:
        try:
            category = get_profile(str(hardware_profile.get("name", ""))).category
        except UnknownProfileError:
            category = None
    if category in _CLASS_OF_CATEGORY:
        return platform_class(category)
    if device.startswith("cpu"):
        return "CPU/edge"
    # the rule hardware.py uses for a GPU without a profile
    name = str(hardware_profile.get("display_name", "")).lower()
    return "PC GPU" if "geforce" in name or "radeon rx" in name else "cloud GPU"


def _same_architecture(info: Any, shape: ModelShape) -> bool:
    """Decode speed depends on the architecture, not on the weights: compare the shape fields records carry."""
    pairs = [
        (getattr(info, "num_layers", None), shape.num_layers),
        (getattr(info, "hidden_size", None), shape.hidden),
        (getattr(info, "vocab_size", None), shape.vocab),
    ]
    known = [(a, b) for a, b in pairs if a is not None]
    return bool(known) and all(a == b for a, b in known)


def measured_points(records: Iterable[Any], model: Any = None) -> tuple[list[MeasuredPoint], list[str]]:
    """Measured decode tokens/s (and measured tokens/J where there is energy) of successful records.

    With ``model`` (a config or :class:`ModelShape`) only records of the same architecture are kept. Returns the
    points and notes saying which records were left out and why.
    """
    shape = _shape(model) if model is not None else None
    points: list[MeasuredPoint] = []
    skipped: dict[str, int] = {}
    for r in records:
        metric = r.metrics.get("decode_tok_s") if r.status == "ok" else None
        if metric is None:
            reason = f"status {r.status}" if r.status != "ok" else "no decode tokens/s"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        if shape is not None and (r.model is None or not _same_architecture(r.model, shape)):
            label = r.model.label if r.model is not None else "unknown model"
            key = f"another model ({label})"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        energy = r.energy
        tok_j = None
        if energy is not None and energy.measured and energy.tokens_per_joule is not None:
            tok_j = energy.tokens_per_joule.value
        hp = r.hardware_profile
        points.append(
            MeasuredPoint(
                profile=str(hp.get("name", "unknown")),
                display_name=str(hp.get("display_name") or hp.get("name", "unknown")),
                platform_class=_record_class(hp, str(r.device)),
                batch=r.cell.batch_size,
                tokens_per_s=metric.median,
                tokens_per_joule=tok_j,
                engine=r.cell.engine_label,
                dtype=r.model.dtype if r.model is not None else None,
                model=r.model.label if r.model is not None else None,
                record_id=r.record_id,
            )
        )
    notes = [f"{n} record(s) left out: {why}" for why, n in skipped.items()]
    return points, notes
