"""`rooflens roofline`: bound-limited projections of a model on any hardware, without running it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rooflens.models.catalog import (
    BUILTIN_MODELS,
    ModelLoadError,
    config_view,
    shipped_config_data,
    shipped_config_names,
)
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
from rooflens.roofline.probe import load_probe


class WhatIfError(ValueError):
    """Bad input for a projection; the message names what is allowed."""


class NoCeilingsError(WhatIfError):
    """The hardware has no ceilings yet: costs can be shown, bound-limited times cannot."""


def model_config(name: str) -> Any:
    """The config of a shipped config name (``llama-2-7b``, ``shape:...``, a built-in model name) or of
    ``hf:<id or local path>`` (needs only its config.json). Shipped configs are read as plain JSON (no
    transformers import: `rooflens roofline` answers at once); an hf: config goes through transformers,
    whose per-architecture attribute maps and defaults the analytic model may need."""
    source, sep, rest = name.partition(":")
    if sep and source == "hf":
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(rest)
        except (OSError, ValueError) as err:
            raise WhatIfError(f"cannot read the config of '{rest}': {err}") from None
    key = rest if sep and source in ("shape", "builtin") else name
    try:
        return config_view(shipped_config_data(key)[0])
    except ModelLoadError:
        known = ", ".join(sorted(set(shipped_config_names()) | set(BUILTIN_MODELS)))
        raise WhatIfError(f"unknown model '{name}' (shipped configs: {known}; or hf:<id or path>)") from None


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
    probe = load_probe(resolved.device_name) if resolved.device_name else None
    for dtype in compute_dtypes:
        bw, peak = profile.bandwidth_si(), profile.peak_flops_si(dtype)
        if bw and peak:
            return profile, Ceilings(bw, peak, "datasheet", f"{profile.display_name} datasheet, {dtype} dense peak")
        if probe is not None and dtype in probe.gemm:
            return profile, Ceilings(
                probe.bandwidth.max,
                probe.gemm[dtype].max,
                "measured",
                f"{resolved.device_name}, {dtype}, measured by rooflens hw probe at {probe.measured_at}",
            )
    raise NoCeilingsError(
        f"no {'/'.join(compute_dtypes)} ceilings for '{profile.name}' ({resolved.reason}); run `rooflens hw probe` "
        "on this machine or pass --hw <profile> (see `rooflens hw list`)"
    )


def precision_for(bits: int, group_size: int, kv_bits: int | None = None) -> Precision:
    """16/32 bits: plain weights; 8/4/3/2: group-wise weights with one fp16 scale per group.

    Activations are 32-bit with 32-bit weights, else 16-bit; the KV cache has the activations' width
    unless ``kv_bits`` says otherwise.
    """
    if bits not in (32, 16, 8, 4, 3, 2):
        raise WhatIfError(f"--bits {bits}: allowed 32, 16, 8, 4, 3, 2")
    weight_bits = float(bits) if bits >= 16 else bits_per_weight(bits, group_size)
    act_bits = 32.0 if bits == 32 else 16.0
    return Precision(
        weight_bits=weight_bits, act_bits=act_bits, kv_bits=act_bits if kv_bits is None else float(kv_bits)
    )


def _shape(config: Any) -> ModelShape:
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
) -> list[tuple[int, int, PhaseCost, PhaseCost]]:
    """FLOPs and bytes of the prefill pass and of a decode step at the mean context: no ceilings needed."""
    shape = _shape(config)
    out = []
    for b in batches:
        for w in bits:
            p = precision_for(w, group_size, kv_bits)
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
                precision=precision_for(w, group_size, kv_bits),
                bandwidth=c.bandwidth,
                peak_flops=c.peak_flops,
            ),
        )
        for b in batches
        for w in bits
    ]
