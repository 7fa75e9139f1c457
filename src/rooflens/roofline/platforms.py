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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from rooflens.roofline.analytic import (
    ModelShape,
    PhaseCost,
    Precision,
    decode_context,
    decode_cost,
    kv_cache_bytes,
    weight_storage_bytes,
)
from rooflens.roofline.hardware import HardwareProfile, UnknownProfileError, get_profile, list_profiles
from rooflens.roofline.whatif import precision_for

__all__ = [
    "CLASSES",
    "MeasuredPoint",
    "PlatformComparison",
    "PlatformRow",
    "compare_platforms",
    "is_platform_comparison",
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


@dataclass(frozen=True)
class _Decode:
    """What every profile's rows share: the decode step's costs and the memory a batch needs."""

    batches: Sequence[int]
    precision: Precision
    dtypes: tuple[str, ...]
    context: int
    costs: dict[int, PhaseCost]  # by batch
    needed: dict[int, float]  # bytes of weights + KV cache at the end of the generation, by batch


def _decode_speed(
    d: _Decode, batch: int, bandwidth: float | None, peak: float | None, dtype: str | None
) -> tuple[float | None, str, str, list[str]]:
    """Bound-limited decode tokens/s, its bound, how it was obtained, and flags (none without bandwidth)."""
    if bandwidth is None:
        how = f"{NO_CEILINGS}: no memory bandwidth on the datasheet (`rooflens hw probe` measures it)"
        return None, "n/a", how, [NO_CEILINGS]
    cost = d.costs[batch]
    # math.inf as the peak: every op then takes bytes / bandwidth, the compute time is left out
    roof_peak = peak if peak is not None else math.inf
    how = (
        f"modelled: analytic decode step (batch {batch}, context {d.context}, {d.precision.weight_bits:g} "
        f"bits/weight) at datasheet bandwidth {_gb(bandwidth)}/s"
    )
    flags: list[str] = []
    if peak is not None:
        how += f" and {dtype} dense peak {peak / 1e12:.4g} TFLOP/s"
    else:
        flags.append(BANDWIDTH_ONLY)
        how += f"; no {'/'.join(d.dtypes)} peak on the datasheet, so compute time is left out (an upper bound)"
    tok_s = batch * cost.tokens / cost.time_at_roofline(bandwidth, roof_peak)
    return tok_s, cost.bound(bandwidth, roof_peak), how, flags


def _energy(tok_s: float | None, tdp: float | None) -> tuple[float | None, str, list[str]]:
    """Modelled tokens/J (tokens/s over the TDP), how it was obtained, and flags."""
    if tok_s is None:
        return None, "no tokens/s to divide", []
    if tdp is None:
        return None, "no TDP on the datasheet", [NO_TDP]
    how = (
        f"modelled, not measured: bound tokens/s / TDP {tdp:g} W (assumes the full TDP is drawn while "
        "decoding at the roof; host, idle and cooling power left out)"
    )
    return tok_s / tdp, how, []


def _profile_rows(profile: HardwareProfile, d: _Decode) -> list[PlatformRow]:
    """One row per batch of ``profile``, with the first of ``d.dtypes`` its datasheet has a peak for."""
    bandwidth = profile.bandwidth_si()
    dtype = next((t for t in d.dtypes if profile.peak_flops_si(t) is not None), None)
    peak = profile.peak_flops_si(dtype) if dtype is not None else None
    tdp = profile.tdp.si if profile.tdp is not None else None
    capacity = profile.capacity_si()
    rows = []
    for b in d.batches:
        cost = d.costs[b]
        tok_s, bound, how, flags = _decode_speed(d, b, bandwidth, peak, dtype)
        tok_j, energy_how, energy_flags = _energy(tok_s, tdp)
        flags += energy_flags
        if capacity is not None and d.needed[b] > capacity:
            flags.append(f"does not fit: needs {_gb(d.needed[b])} of {_gb(capacity)}")
        rows.append(
            PlatformRow(
                profile=profile.name,
                display_name=profile.display_name,
                platform_class=platform_class(profile.category),
                category=profile.category,
                batch=b,
                weight_bits=d.precision.weight_bits,
                tokens_per_s=tok_s,
                bound=bound,
                tokens_per_joule=tok_j,
                provenance=how,
                energy_provenance=energy_how,
                bandwidth=bandwidth,
                peak_flops=peak,
                compute_dtype=dtype,
                tdp_w=tdp,
                decode_context=d.context,
                decode_bytes=cost.bytes,
                decode_flops=cost.flops,
                memory_needed=d.needed[b],
                memory_capacity=capacity,
                flags=tuple(flags),
            )
        )
    return rows


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
    context = decode_context(prompt_len, gen_len)
    decode = _Decode(
        batches=batches,
        precision=precision,
        dtypes=tuple(compute_dtypes) if compute_dtypes else (("fp32",) if bits == 32 else ("bf16", "fp16")),
        context=context,
        costs={b: decode_cost(shape, batch=b, context_len=context, precision=precision) for b in batches},
        needed={
            b: weight_storage_bytes(shape, precision)
            + kv_cache_bytes(shape, batch=b, seq_len=prompt_len + gen_len, precision=precision)
            for b in batches
        },
    )
    rows = [
        row for profile in (list_profiles() if profiles is None else profiles) for row in _profile_rows(profile, decode)
    ]
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


# --------------------------------------------------------------------------- the comparison as a whole


def is_platform_comparison(hw: str) -> bool:
    """Whether a ``--hw`` value asks for the platform comparison: ``all`` or a comma-separated list of profiles."""
    return hw.strip().lower() == "all" or "," in hw


def _named_profiles(hw: str) -> list[HardwareProfile]:
    """Every shipped profile for ``all``, else the comma-separated names (UnknownProfileError for one not shipped)."""
    return list_profiles() if hw.strip().lower() == "all" else [get_profile(n) for n in hw.split(",") if n.strip()]


@dataclass(frozen=True)
class PlatformComparison:
    """The modelled rows of one model on many profiles, and measured records kept apart from them."""

    model: str
    bits: int
    prompt_len: int
    gen_len: int
    rows: list[PlatformRow]
    points: list[MeasuredPoint] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # notes on the records not shown, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "bits": self.bits,
            "prompt_len": self.prompt_len,
            "gen_len": self.gen_len,
            "modelled": [{**asdict(r), "fits": r.fits} for r in self.rows],
            "measured": [asdict(p) for p in self.points],
            "measured_left_out": self.left_out,
        }

    def with_records(self, records: Iterable[Any], config: Any) -> PlatformComparison:
        """This comparison with the ``records`` of ``config``'s architecture as measured points."""
        points, left_out = measured_points(records, config)
        return replace(self, points=points, left_out=left_out)


def compare_platforms(
    model: str,
    config: Any,
    hw: str,
    *,
    batches: Sequence[int],
    bits: int,
    prompt_len: int,
    gen_len: int,
    group_size: int = 128,
    kv_bits: int | None = None,
) -> PlatformComparison:
    """``config`` (the shape of the model called ``model``) on the profiles ``hw`` names (see
    :func:`is_platform_comparison`). Raises UnknownProfileError for a profile name that is not shipped,
    ValueError for bad input."""
    rows = platform_rows(
        config,
        _named_profiles(hw),
        batches=batches,
        bits=bits,
        prompt_len=prompt_len,
        gen_len=gen_len,
        group_size=group_size,
        kv_bits=kv_bits,
    )
    return PlatformComparison(model, bits, prompt_len, gen_len, rows)
