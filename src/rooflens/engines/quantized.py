"""Weight quantization + Hugging Face ``generate``: torchao, bitsandbytes, or rooflens's own low-bit format.

The engine is the ``hf`` baseline (greedy, fixed length, optional static cache + torch.compile) run on
a *quantized copy* of the shared model, so every other engine keeps the original weights.

Backends and formats
--------------------
``torchao`` (``torchao.quantization.quantize_(copy, Config)``, on every ``nn.Linear`` but the LM head)
    * ``int8_weight_only`` — ``Int8WeightOnlyConfig()``: int8 per-output-channel weights.
    * ``int8_dynamic`` — ``Int8DynamicActivationInt8WeightConfig()``: int8 weights, activations quantized
      to int8 per token at run time (W8A8).
    * ``int4_weight_only`` — ``Int4WeightOnlyConfig(group_size, int4_packing_format="tile_packed_to_4d")``:
      the tinygemm int4 kernel. **CUDA and bfloat16 only**: torchao 0.18 has no CPU int4 packing (the
      ``opaque`` CPU format is gone, ``plain`` needs the ``mslk`` package), so on CPU the cell is
      unavailable with that reason.
    * ``intx_weight_only`` — ``IntxWeightOnlyConfig(weight_dtype=torch.int<bits>, PerGroup(group_size))``:
      **accuracy emulation**: the low-bit codes are stored unpacked, one per int8, so memory and bytes
      moved are those of int8 (+ scales and zero points). The engine's statistics and roofline hints use
      that real storage, not the nominal bits, and say ``emulated: true``.
    ``set_inductor_config=False`` everywhere: torchao's default would change global inductor settings and
    ``torch.set_float32_matmul_precision`` for every later engine of the sweep.
``bitsandbytes`` (``Linear8bitLt`` / ``Linear4bit`` swapped in for every ``nn.Linear`` but the LM head)
    * ``int8`` — LLM.int8() (outlier threshold 6.0, as transformers' ``BitsAndBytesConfig`` default).
    * ``nf4`` — 4-bit NormalFloat, blocks of ``group_size`` (64), fp32 absmax per block, no double quant.
    On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for its CPU kernel at the first forward
    (absmax becomes bf16, activations run in bf16 for single-row matmuls); storage is measured after one
    forward pass so that the figure is what the generations actually use.
``rooflens`` (``rooflens.kernels.quantize_linear_layers``)
    * ``groupwise`` — our packed group-wise format, ``bits`` 8/4/3/2, ``group_size`` 32/64/128,
      ``symmetric`` or not (see :mod:`rooflens.kernels.lowbit` for the exact layout and bits per weight).
      On CUDA the forward is the Triton dequant-matmul kernel; on CPU it is the plain-torch reference
      (dequantize every call, then an fp32 matmul): a correctness path, not a fast one.

In every backend the LM head and the embeddings stay in the model dtype.

Measured at ``prepare()`` and reported as engine statistics: storage bytes of all weights after
quantization, of the quantized layers alone, bits per weight over the quantized layers and over all
parameters, the number of quantized layers, and the quantization time. ``roofline_hints().weight_bits``
is the effective bits per parameter over the whole model (all weight storage x 8 / parameter count).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from rooflens.engines.base import EngineStat, EngineUnavailable, RooflineHints, register, synchronize
from rooflens.engines.hf import HFEngine, HFOptions
from rooflens.roofline.analytic import decode_weight_elements
from rooflens.text import quote

if TYPE_CHECKING:
    from rooflens.models.loader import LoadedModel

Backend = Literal["torchao", "bitsandbytes", "rooflens"]

FORMATS: dict[str, tuple[str, ...]] = {
    "torchao": ("int8_weight_only", "int8_dynamic", "int4_weight_only", "intx_weight_only"),
    "bitsandbytes": ("int8", "nf4"),
    "rooflens": ("groupwise",),
}
PIP = {"torchao": "pip install torchao", "bitsandbytes": "pip install bitsandbytes", "triton": "pip install triton"}


@dataclass(frozen=True)
class FormatSpec:
    """What a (backend, format) accepts: allowed/default bits and group sizes, symmetric or not."""

    bits: tuple[int, ...]  # allowed bit widths (first = default)
    group_sizes: tuple[int, ...] = ()  # () -> group_size does not apply
    default_group: int | None = None
    symmetric: bool = False  # whether the symmetric option applies
    why_no_group: str = ""


SPECS: dict[tuple[str, str], FormatSpec] = {
    ("torchao", "int8_weight_only"): FormatSpec((8,), why_no_group="per-output-channel scales"),
    ("torchao", "int8_dynamic"): FormatSpec((8,), why_no_group="per-output-channel scales"),
    ("torchao", "int4_weight_only"): FormatSpec((4,), (32, 64, 128, 256), 128),
    ("torchao", "intx_weight_only"): FormatSpec((4, 2, 3, 5, 6, 7, 8), (32, 64, 128, 256), 32, symmetric=True),
    ("bitsandbytes", "int8"): FormatSpec((8,), why_no_group="per-output-channel scales (LLM.int8)"),
    ("bitsandbytes", "nf4"): FormatSpec((4,), (64, 128), 64),
    ("rooflens", "groupwise"): FormatSpec((4, 8, 3, 2), (32, 64, 128), 128, symmetric=True),
}
SKIP = ("lm_head",)  # Linear layers left in the model dtype (embeddings are not Linear: never touched)


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


# ---------------------------------------------------------------------------- options


class QuantizedOptions(HFOptions):
    backend: Backend = Field(default="rooflens", description="torchao, bitsandbytes or rooflens (our own format)")
    format: str | None = Field(
        default=None,
        description="torchao: int8_weight_only, int8_dynamic, int4_weight_only (CUDA+bf16), intx_weight_only "
        "(accuracy emulation, int8 storage); bitsandbytes: int8, nf4; rooflens: groupwise (default: the first)",
    )
    bits: int | None = Field(
        default=None, description="rooflens: 8/4/3/2 (default 4); torchao intx_weight_only: 2-8 (default 4)"
    )
    group_size: int | None = Field(
        default=None,
        description="rooflens: 32/64/128 (default 128); torchao intx: 32-256 (default 32); torchao int4: "
        "32-256 (default 128); bitsandbytes nf4: 64/128 (default 64)",
    )
    symmetric: bool | None = Field(
        default=None, description="rooflens and torchao intx: symmetric (default) or asymmetric with zero points"
    )
    kernel: Literal["auto", "triton", "cpu", "torch"] | None = Field(
        default=None,
        description="rooflens only: auto (Triton on CUDA, torch's int4 CPU kernel on CPU), triton (on CPU needs "
        "TRITON_INTERPRET=1), cpu (torch's int4 CPU kernel), torch (the reference everywhere)",
    )
    lm_head: bool = Field(
        default=False,
        description="quantize the LM head too (a tied embedding is untied: the embedding keeps its dense table)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "QuantizedOptions":
        b, formats = self.backend, FORMATS[self.backend]
        if self.format is not None and self.format not in formats:
            where = [k for k, v in FORMATS.items() if self.format in v]
            hint = f"; it is a format of backend '{where[0]}'" if where else ""
            raise ValueError(
                f"format: {quote(self.format)} is not a format of backend '{b}' (allowed: {_join(formats)}){hint}"
            )
        fmt = self.resolved_format
        spec = SPECS[(b, fmt)]
        what = f"format '{fmt}' of backend '{b}'"
        if self.bits is not None and self.bits not in spec.bits:
            if len(spec.bits) == 1:
                raise ValueError(f"bits: {what} is {spec.bits[0]}-bit (got {self.bits}); leave bits out")
            raise ValueError(f"bits: {self.bits} is not allowed for {what} (allowed: {_join(sorted(spec.bits))})")
        if self.group_size is not None:
            if not spec.group_sizes:
                raise ValueError(f"group_size: does not apply to {what} ({spec.why_no_group})")
            if self.group_size not in spec.group_sizes:
                raise ValueError(
                    f"group_size: {self.group_size} is not allowed for {what} (allowed: {_join(spec.group_sizes)})"
                )
        if self.symmetric is not None and not spec.symmetric:
            raise ValueError(
                f"symmetric: does not apply to {what} (applies to rooflens groupwise and torchao intx_weight_only)"
            )
        if self.kernel is not None and b != "rooflens":
            raise ValueError(f"kernel: applies to backend 'rooflens' only (backend is '{b}')")
        return self

    @property
    def skip(self) -> tuple[str, ...]:
        """Linear layers left in the model dtype."""
        return () if self.lm_head else SKIP

    # resolved values (defaults filled in per format)
    @property
    def resolved_format(self) -> str:
        return self.format or FORMATS[self.backend][0]

    @property
    def spec(self) -> FormatSpec:
        return SPECS[(self.backend, self.resolved_format)]

    @property
    def resolved_bits(self) -> int:
        return self.bits if self.bits is not None else self.spec.bits[0]

    @property
    def resolved_group_size(self) -> int | None:
        return self.group_size if self.group_size is not None else self.spec.default_group

    @property
    def resolved_symmetric(self) -> bool | None:
        if not self.spec.symmetric:
            return None
        return True if self.symmetric is None else self.symmetric

    @property
    def emulated(self) -> bool:
        """Codes stored wider than their nominal bits (torchao intx below 8 bits: one code per int8)."""
        return self.backend == "torchao" and self.resolved_format == "intx_weight_only" and self.resolved_bits < 8

    def describe(self) -> str:
        parts = [f"{self.backend} {self.resolved_format}"]
        if len(self.spec.bits) > 1:
            parts.append(f"{self.resolved_bits}-bit")
        if self.resolved_group_size is not None:
            parts.append(f"g{self.resolved_group_size}")
        if self.resolved_symmetric is not None:
            parts.append("sym" if self.resolved_symmetric else "asym")
        return " ".join(parts)


# ---------------------------------------------------------------------------- storage accounting


def _lib_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _plain_bytes(t: torch.Tensor | None, seen: set) -> int:
    """Bytes held by a tensor; tensor subclasses (torchao) are summed over their inner tensors.

    ``seen`` deduplicates tensors that share memory (tied weights, bitsandbytes' CB == data).
    """
    if t is None or not isinstance(t, torch.Tensor):
        return 0
    if hasattr(type(t), "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_plain_bytes(getattr(t, n, None), seen) for n in names)
    if t.numel() == 0:
        return 0
    key = (str(t.device), t.data_ptr(), t.numel(), t.dtype)
    if key in seen:
        return 0
    seen.add(key)
    return t.numel() * t.element_size()


def _quant_state_bytes(qs: Any, seen: set) -> int:
    """bitsandbytes ``QuantState``: absmax, code, offset and the nested state of double quantization."""
    if qs is None:
        return 0
    total = sum(_plain_bytes(getattr(qs, a, None), seen) for a in ("absmax", "code", "offset"))
    return total + _quant_state_bytes(getattr(qs, "state2", None), seen)


def _tensor_bytes(t: torch.Tensor | None, seen: set, module: nn.Module | None = None) -> int:
    """All bytes a weight holds: the tensor (or its subclass' inner tensors) + bitsandbytes side data."""
    total = _plain_bytes(t, seen)
    if t is not None:
        total += _plain_bytes(getattr(t, "SCB", None), seen) + _plain_bytes(getattr(t, "CB", None), seen)
        total += _quant_state_bytes(getattr(t, "quant_state", None), seen)
    if module is not None:  # bitsandbytes moves CB/SCB to module.state at the first forward
        state = getattr(module, "state", None)
        total += _plain_bytes(getattr(state, "CB", None), seen) + _plain_bytes(getattr(state, "SCB", None), seen)
        total += _quant_state_bytes(getattr(module, "quant_state", None), seen)
    return total


def _own_tensors(module: nn.Module):
    """(name, tensor) of a module's own parameters and persistent buffers (not its children's)."""
    for name, p in module._parameters.items():
        if p is not None:
            yield name, p
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            yield name, b


def layer_weight_bytes(module: nn.Module, seen: set | None = None) -> int:
    """Storage of a quantized layer's weight incl. scales / zero points / quant state (bias excluded)."""
    seen = set() if seen is None else seen
    total = 0
    for name, t in _own_tensors(module):
        if name != "bias":
            total += _tensor_bytes(t, seen)
    return total + _tensor_bytes(None, seen, module)


def model_weight_bytes(model: nn.Module, quantized: dict[str, nn.Module]) -> tuple[int, int]:
    """(bytes of all weights, bytes of the quantized layers' weights).

    Quantized layers: their parameters and persistent buffers (rooflens keeps codes and scales in
    buffers) and bitsandbytes side data; everywhere else: parameters (as ``ModelInfo.param_bytes``).
    """
    seen: set = set()
    q_ids = {id(m) for m in quantized.values()}
    q_total = sum(layer_weight_bytes(m, seen) for m in quantized.values())
    rest = 0
    for mod in model.modules():
        if id(mod) in q_ids:
            rest += _tensor_bytes(mod._parameters.get("bias"), seen)  # the rest of the layer is counted above
            continue
        for t in mod._parameters.values():  # elsewhere parameters only: other buffers are not weights
            rest += _tensor_bytes(t, seen)
    return q_total + rest, q_total


def decode_read_bytes(model: nn.Module, quantized: dict[str, nn.Module], device: torch.device,
                      act_dtype: torch.dtype) -> int:  # fmt: skip
    """Weight bytes one decode step (batch 1) reads, by the analytic model's convention: every weight once,
    but one row of the input embedding. A rooflens layer counts what its kernel reads
    (:meth:`LowBitLinear.read_bytes`), any other quantized layer its storage."""
    from rooflens.kernels import LowBitLinear

    seen: set = set()
    emb = model.get_input_embeddings()
    total = emb.weight.shape[1] * emb.weight.element_size()
    q_ids = {id(m) for m in quantized.values()}
    for mod in model.modules():
        if mod is emb:
            continue
        if id(mod) in q_ids:
            own = mod.read_bytes(device, act_dtype) if isinstance(mod, LowBitLinear) else layer_weight_bytes(mod, seen)
            total += own + _tensor_bytes(mod._parameters.get("bias"), seen)
            continue
        for t in mod._parameters.values():
            total += _tensor_bytes(t, seen)
    return total


# ---------------------------------------------------------------------------- copying


def _linear_targets(model: nn.Module, skip: tuple[str, ...] = SKIP) -> list[tuple[str, nn.Linear]]:
    """The nn.Linear layers to quantize (all but those named in ``skip``, by default the LM head)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not any(name == s or name.endswith("." + s) for s in skip):
            out.append((name, mod))
    return out


def copy_for_quantization(model: nn.Module, skip: tuple[str, ...] = SKIP) -> nn.Module:
    """A deep copy of ``model`` that *shares* (does not copy) the weights of the Linear layers to quantize.

    Those weights are only read by the quantizers and replaced in the copy, so the copy never needs its
    own dense version of them: peak memory is the original + the quantized model, not twice the model.
    :func:`untie_from` afterwards clones anything still shared (a layer the quantizer left alone).
    """
    memo: dict[int, Any] = {id(lin.weight): lin.weight for _, lin in _linear_targets(model, skip)}
    dup = copy.deepcopy(model, memo)
    # generate() caches a torch.compile'd __call__ bound to the *original* model: never reuse it
    for attr in ("_compiled_call", "_last_compile_config"):
        dup.__dict__.pop(attr, None)
    return dup


@torch.no_grad()
def untie_from(dup: nn.Module, original: nn.Module) -> int:
    """Clone every parameter/buffer of ``dup`` that is still the very tensor of ``original``; returns how many."""
    orig = {id(t) for t in original.parameters()} | {id(t) for t in original.buffers()}
    n = 0
    for mod in dup.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and id(p) in orig:
                mod._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                n += 1
        for name, b in list(mod._buffers.items()):
            if b is not None and id(b) in orig:
                mod._buffers[name] = b.clone()
                n += 1
    return n


# ---------------------------------------------------------------------------- backends


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _torchao_config(o: QuantizedOptions):
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType

    fmt = o.resolved_format
    if fmt == "int8_weight_only":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if fmt == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    if fmt == "int4_weight_only":
        return Int4WeightOnlyConfig(
            group_size=o.resolved_group_size, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
        )
    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{o.resolved_bits}"),
        granularity=PerGroup(o.resolved_group_size),
        mapping_type=MappingType.SYMMETRIC if o.resolved_symmetric else MappingType.ASYMMETRIC,
    )


def _is_torchao_weight(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and hasattr(type(t), "__tensor_flatten__")


def quantize_torchao(model: nn.Module, o: QuantizedOptions) -> dict[str, nn.Module]:
    from torchao.quantization import quantize_

    targets = {name for name, _ in _linear_targets(model, o.skip)}
    quantize_(model, _torchao_config(o), filter_fn=lambda mod, fqn: isinstance(mod, nn.Linear) and fqn in targets)
    return {
        name: mod
        for name, mod in model.named_modules()
        if name in targets and _is_torchao_weight(getattr(mod, "weight", None))
    }


def _bnb_layer(lin: nn.Linear, o: QuantizedOptions, device: torch.device) -> nn.Module:
    import bitsandbytes as bnb

    # the weight is quantized by .to(device) from a CPU copy (Int8Params only quantizes when moving off the CPU)
    w = lin.weight.detach().to("cpu", copy=True)
    has_bias = lin.bias is not None
    if o.resolved_format == "int8":
        new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=has_bias, has_fp16_weights=False,
                                  threshold=6.0, device="meta")  # fmt: skip
        new.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=has_bias, compute_dtype=lin.weight.dtype,
                                compress_statistics=False, quant_type="nf4", device="meta")  # fmt: skip
        new.weight = bnb.nn.Params4bit(w, requires_grad=False, blocksize=o.resolved_group_size,
                                       compress_statistics=False, quant_type="nf4", module=new)  # fmt: skip
    if has_bias:
        new.bias = nn.Parameter(lin.bias.detach().to("cpu", copy=True), requires_grad=False)
    return new.to(device)


class _DropRepeatedCastWarning(logging.Filter):
    """bitsandbytes logs 'MatMul8bitLt: inputs will be cast ... to float16' on *every* int8 matmul call; the
    engine states it once in its statistics instead of flooding the benchmark's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _quiet_bnb_cast_warning() -> None:
    lg = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropRepeatedCastWarning) for f in lg.filters):
        lg.addFilter(_DropRepeatedCastWarning())


def quantize_bnb(model: nn.Module, o: QuantizedOptions, device: torch.device) -> dict[str, nn.Module]:
    _quiet_bnb_cast_warning()
    targets = _linear_targets(model, o.skip)
    if o.resolved_format == "nf4" and device.type == "cpu":
        # bitsandbytes' CPU NF4 kernel splits every row into blocks: a ragged row fails deep inside it
        g = o.resolved_group_size
        ragged = [(name, lin.in_features) for name, lin in targets if lin.in_features % g]
        if ragged:
            fits = [x for x in o.spec.group_sizes if all(lin.in_features % x == 0 for _, lin in targets)]
            raise EngineUnavailable(
                f"group_size {g}: bitsandbytes nf4 on CPU needs a group size that divides every quantized layer's "
                f"in_features ({ragged[0][0]} has {ragged[0][1]}); allowed for this model: {_join(fits) or 'none'}"
            )
    out = {}
    for name, lin in targets:
        new = _bnb_layer(lin, o, device)
        _set_child(model, name, new)
        out[name] = new
    return out


_BNB_PROBE: dict[tuple[str, str], str | None] = {}


def bnb_probe(fmt: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str | None:
    """Quantize and run one small layer of ``fmt`` on ``device`` in ``dtype``; None when it works, else why not."""
    key = (fmt, device.type, dtype)
    if key not in _BNB_PROBE:
        try:
            import bitsandbytes  # noqa: F401

            o = QuantizedOptions(backend="bitsandbytes", format=fmt)
            lin = nn.Linear(128, 64, bias=True, dtype=dtype)
            layer = _bnb_layer(lin, o, device)
            with torch.no_grad():
                y = layer(torch.randn(2, 128, device=device, dtype=dtype))
            if tuple(y.shape) != (2, 64) or not bool(torch.isfinite(y).all()):
                raise RuntimeError(f"probe layer returned {tuple(y.shape)} / non-finite values")
            _BNB_PROBE[key] = None
        except Exception as err:  # noqa: BLE001 - any failure means: not usable here, with the reason
            _BNB_PROBE[key] = (
                f"bitsandbytes {_lib_version('bitsandbytes')} cannot run '{fmt}' on {device.type} "
                f"({str(dtype).removeprefix('torch.')}): "
                f"{type(err).__name__}: {err}"
            )
    return _BNB_PROBE[key]


def quantize_rooflens(model: nn.Module, o: QuantizedOptions):
    from rooflens.kernels import LowBitLinear, quantize_linear_layers

    report = quantize_linear_layers(model, o.resolved_bits, o.resolved_group_size, bool(o.resolved_symmetric),
                                    skip=o.skip, kernel=o.kernel or "auto")  # fmt: skip
    layers = {name: model.get_submodule(name) for name in report.replaced_names}
    assert all(isinstance(m, LowBitLinear) for m in layers.values())
    return layers, report


# ---------------------------------------------------------------------------- the engine


@dataclass
class QuantizationSummary:
    """What prepare() measured (all sizes in bytes)."""

    total_bytes: int  # every weight after quantization (quantized layers + what stays dense)
    quantized_bytes: int  # quantized layers' weights incl. scales / zero points / quant state
    quantized_params: int  # elements of those weights before quantization
    original_bytes: int  # every weight of the original model
    n_params: int  # parameters of the original model (tied counted once)
    quantized_layers: int
    skipped: dict[str, str] = field(default_factory=dict)
    quantize_s: float = 0.0
    copy_s: float = 0.0

    @property
    def bits_quantized(self) -> float:
        return self.quantized_bytes * 8 / self.quantized_params if self.quantized_params else float("nan")

    @property
    def bits_model(self) -> float:
        return self.total_bytes * 8 / self.n_params


def options_unavailable_reason(o: QuantizedOptions, device: torch.device, dtype: str | None = None) -> str | None:
    """Why this backend/format cannot run on ``device`` with a model of ``dtype`` (None when it can)."""
    b, fmt = o.backend, o.resolved_format
    if b in ("torchao", "bitsandbytes") and importlib.util.find_spec(b) is None:
        return f"backend '{b}' needs the Python package {b} ({PIP[b]})"
    if b == "torchao":
        if fmt == "int4_weight_only":
            if device.type != "cuda":
                return (
                    f"torchao int4_weight_only needs CUDA (tinygemm kernel, int4_packing_format "
                    f"'tile_packed_to_4d'); torchao {_lib_version('torchao')} has no CPU int4 packing ('opaque' "
                    f"was removed, 'plain' needs the mslk package), not {device.type}"
                )
            if dtype is not None and dtype != "bfloat16":
                return f"torchao int4_weight_only (tinygemm) needs dtype bfloat16, the model is {dtype}"
        try:
            import torchao.quantization  # noqa: F401
        except Exception as err:  # noqa: BLE001
            return f"torchao {_lib_version('torchao')} does not import with torch {torch.__version__}: {err}"
    if b == "bitsandbytes":
        return bnb_probe(fmt, device, getattr(torch, dtype or "float32", torch.float32))
    if b == "rooflens" and o.kernel == "cpu":
        from rooflens.kernels.cpu_lowbit import cpu_kernel_unavailable

        if device.type != "cpu":
            return f"kernel: cpu runs on the CPU, not {device.type}; use kernel: auto"
        return cpu_kernel_unavailable()
    if b == "rooflens" and o.kernel == "triton":
        if importlib.util.find_spec("triton") is None:
            return f"kernel: triton needs the Python package triton ({PIP['triton']})"
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "kernel: triton on CPU needs TRITON_INTERPRET=1 (the Triton interpreter, slow); use kernel: auto"
    return None


KERNEL_PATHS = {
    "torch": "torch reference (dequantize every call + matmul in the activation dtype: a correctness path, not a fast one)",
    "cpu": "torch's int4 CPU kernel (aten._weight_int4pack_mm_for_cpu): bf16 activations, scales and zeros; "
    "3/2-bit codes run in the 4-bit layout, 8-bit codes as two 4-bit halves",
    "triton": "Triton dequant-matmul kernel (rooflens.kernels.triton_lowbit)",
}


def _rooflens_kernel(layers: dict[str, nn.Module], device: torch.device) -> str:
    """The forward path the rooflens layers take on ``device``, in words."""
    paths = sorted({m.path(device) for m in layers.values()})
    interp = " under TRITON_INTERPRET=1" if "triton" in paths and device.type == "cpu" else ""
    return "; ".join(KERNEL_PATHS[p] for p in paths) + interp


@register
class QuantizedEngine(HFEngine):
    name = "quantized"
    summary = (
        "HF generate on a quantized copy of the model: torchao (int8, W8A8, int4 on CUDA, intx emulation), "
        "bitsandbytes (LLM.int8, NF4) or rooflens's own group-wise low-bit format (Triton kernel on CUDA)"
    )
    Options = QuantizedOptions
    options: QuantizedOptions

    def __init__(self, options: QuantizedOptions, model: "LoadedModel"):
        super().__init__(options, model)
        self._module: nn.Module | None = None
        self._layers: dict[str, nn.Module] = {}
        self.measured: QuantizationSummary | None = None
        self.report = None  # rooflens backend: the QuantizationReport

    # -- availability

    def unavailable_reason_here(self) -> str | None:
        """Like :meth:`unavailable_reason`, for these options (backend, format, kernel)."""
        return self.unavailable_reason(self.model.device, self.model) or options_unavailable_reason(
            self.options, self.model.device, self.model.info.dtype
        )

    # -- the model

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            raise RuntimeError("engine 'quantized': call prepare() first (it builds the quantized copy)")
        return self._module

    def prepare(self) -> None:
        if self._module is not None:
            return
        reason = self.unavailable_reason_here()
        if reason is not None:
            raise EngineUnavailable(reason)
        o, original, device = self.options, self.model.model, self.model.device
        t0 = time.perf_counter()
        dup = copy_for_quantization(original, o.skip)
        t1 = time.perf_counter()
        with torch.no_grad():
            if o.backend == "torchao":
                layers = quantize_torchao(dup, o)
            elif o.backend == "bitsandbytes":
                layers = quantize_bnb(dup, o, device)
            else:
                layers, self.report = quantize_rooflens(dup, o)
        synchronize(device)
        t2 = time.perf_counter()
        untie_from(dup, original)
        if not layers:
            raise RuntimeError(f"{o.describe()}: no Linear layer of the model could be quantized")
        dup.eval()
        self._smoke(dup)
        targets = dict(_linear_targets(original, o.skip))
        skipped = {name: f"matches skip entry {s!r}" for name, mod in original.named_modules()
                   if isinstance(mod, nn.Linear) for s in o.skip if name == s or name.endswith("." + s)}  # fmt: skip
        skipped.update({n: "left in the model dtype by the quantizer" for n in targets if n not in layers})
        if self.report is not None:
            skipped.update(self.report.skipped)
        total, qbytes = model_weight_bytes(dup, layers)
        self.measured = QuantizationSummary(
            total_bytes=total,
            quantized_bytes=qbytes,
            quantized_params=sum(targets[n].weight.numel() for n in layers),
            original_bytes=self.model.info.param_bytes,
            n_params=self.model.info.n_params,
            quantized_layers=len(layers),
            skipped=skipped,
            quantize_s=t2 - t1,
            copy_s=t1 - t0,
        )
        self._module = dup
        self._layers = layers

    @torch.inference_mode()
    def _smoke(self, model: nn.Module) -> None:
        """One short forward: fails early on a broken backend, and lets lazy repacking happen (bitsandbytes)."""
        ids = torch.arange(1, 5, device=self.model.device).unsqueeze(0) % self.model.vocab_size
        logits = model(ids).logits
        if not bool(torch.isfinite(logits).all()):
            raise RuntimeError(f"{self.options.describe()}: the quantized model produced non-finite logits")

    # -- statistics

    def stats(self) -> dict[str, EngineStat]:
        s, o = self.measured, self.options
        if s is None:
            return {}
        if o.backend == "rooflens":
            how = "exact: QuantizedWeight.storage_bytes (packed int32 codes + fp16 scales, + fp16 zero points if asymmetric)"
        elif o.backend == "torchao":
            how = ("exact: bytes of the inner tensors of torchao's tensor subclasses (__tensor_flatten__: qdata, "
                   "scale, zero_point, ...)")  # fmt: skip
        else:
            how = ("bitsandbytes: int8 data + fp32 row scales (SCB) for int8; packed uint8 data + quant_state "
                   "(absmax, code, nested state) for nf4; measured after one forward, since bitsandbytes "
                   "repacks 4-bit weights for its CPU kernel at the first call (absmax becomes bf16)")  # fmt: skip
        out = {
            "format": EngineStat(value=o.describe(), description="backend, format, bits, group size, symmetry"),
            "library": EngineStat(
                value=f"{o.backend} {_lib_version(o.backend)}" if o.backend != "rooflens" else "rooflens.kernels",
                description="the quantization library and its version",
            ),
            "weight_storage_bytes": EngineStat(
                value=s.total_bytes, unit="B",
                description=f"all weights after quantization (dense parameters + quantized layers' storage); quantized layers: {how}",
            ),  # fmt: skip
            "quantized_weight_bytes": EngineStat(
                value=s.quantized_bytes, unit="B", description=f"weights of the quantized layers only; {how}"
            ),
            "original_weight_bytes": EngineStat(
                value=s.original_bytes, unit="B", description="all parameters of the unquantized model"
            ),
            "compression": EngineStat(
                value=s.original_bytes / s.total_bytes, unit="x",
                description="original weight bytes / weight bytes after quantization",
            ),  # fmt: skip
            "bits_per_weight_quantized": EngineStat(
                value=s.bits_quantized, unit="bit",
                description="quantized layers' weight storage x 8 / their weight elements (scales and zero points included)",
            ),  # fmt: skip
            "bits_per_weight_model": EngineStat(
                value=s.bits_model, unit="bit",
                description="all weight storage x 8 / all parameters (embeddings, norms and LM head stay in the model dtype)",
            ),  # fmt: skip
            "quantized_layers": EngineStat(value=s.quantized_layers, unit="layers", description="Linear layers quantized"),
            "skipped_layers": EngineStat(
                value=len(s.skipped), unit="layers",
                description="Linear layers left in the model dtype: " + "; ".join(f"{k}: {v}" for k, v in s.skipped.items()),
            ),  # fmt: skip
            "quantize_time_s": EngineStat(
                value=s.quantize_s, unit="s",
                description="quantizing the copied model (device synchronised); a backend's lazy work at the "
                "first forward (bitsandbytes' NF4 repack for its CPU kernel) is not included",
            ),  # fmt: skip
            "copy_time_s": EngineStat(
                value=s.copy_s, unit="s",
                description="deep copy of the shared model (the Linear weights to quantize are read, not copied)",
            ),  # fmt: skip
        }
        nominal = o.resolved_bits
        out["nominal_bits"] = EngineStat(value=nominal, unit="bit", description="bits of a weight code in the format")
        if o.emulated:
            desc = (f"accuracy emulation: torchao IntxUnpackedToInt8Tensor keeps each int{nominal} code in an int8, "
                    f"so memory and bytes moved are those of int8 (+ scales and zero points), not {nominal}-bit; "
                    f"the roofline uses the real storage")  # fmt: skip
        else:
            desc = "the codes are stored at their nominal width (weight storage reflects the format)"
        out["emulated"] = EngineStat(value="true" if o.emulated else "false", description=desc)
        notes = self._backend_notes()
        if notes:
            out["backend_notes"] = EngineStat(value="; ".join(notes), description="what the backend does here beyond its format")
        if o.backend == "rooflens":
            out["kernel"] = EngineStat(value=_rooflens_kernel(self._layers, self.model.device), description="LowBitLinear forward path")
        read = self._read_bytes()
        out["weight_read_bytes_per_step"] = EngineStat(
            value=read, unit="B",
            description="weight bytes one decode step reads (batch 1): what each quantized layer's kernel reads "
            "(rooflens: its kernel's own layout, padding included), every other weight once, one embedding row",
        )  # fmt: skip
        return out

    def _read_bytes(self) -> int:
        dtype = getattr(torch, self.model.info.dtype)
        return decode_read_bytes(self.module, self._layers, self.model.device, dtype)

    def _backend_notes(self) -> list[str]:
        o, dtype, device = self.options, self.model.info.dtype, self.model.device
        notes = []
        if o.backend == "bitsandbytes" and o.resolved_format == "int8" and dtype != "float16":
            notes.append(f"LLM.int8 casts {dtype} weights (before quantizing) and activations to float16")
        if o.backend == "bitsandbytes" and o.resolved_format == "nf4" and device.type == "cpu":
            layer = next((m for m in self.module.modules() if hasattr(m, "support_avx512bf16_for_cpu")), None)
            if layer is not None and layer.support_avx512bf16_for_cpu:
                notes.append("this CPU has AVX512-BF16: bitsandbytes repacks NF4 weights for its CPU kernel (absmax in "
                             "bf16) and runs single-row matmuls with bf16 activations")  # fmt: skip
        if o.backend == "torchao" and device.type == "cpu" and not o.compile:
            if o.resolved_format == "int8_dynamic":
                notes.append("activations are quantized per token at every call, then aten::_int_mm (int8 GEMM)")
            else:
                notes.append("eager torchao weight-only on CPU dequantizes the weight on every call, then runs a "
                             "dense matmul (torch.profiler: the dequantization takes most of each call)")  # fmt: skip
        return notes

    def roofline_hints(self) -> RooflineHints:
        s, o = self.measured, self.options
        if s is None:
            return RooflineHints()
        read = self._read_bytes()
        try:
            elements = decode_weight_elements(self.model.model.config)
        except ValueError:  # a model type the analytic model does not know: it places no roofline point either
            return RooflineHints(weight_bits=s.bits_model, note=f"{o.describe()}: weight_bits = weight storage x 8 / parameters")
        note = (
            f"{o.describe()}: weight_bits = weight bytes a decode step reads ({read / 1e6:.2f} MB: each quantized "
            f"layer's kernel's reads, every other weight once, one embedding row) x 8 / weight elements the analytic "
            f"model reads ({elements / 1e6:.2f} M), so the roofline's weight bytes are what the kernels read; "
            f"{s.bits_quantized:.3g} bits/weight stored on the {s.quantized_layers} quantized layers incl. scales"
        )
        if o.emulated:
            note += (f"; emulation: int{o.resolved_bits} codes are stored in int8, so the bytes are int8's, "
                     f"not {o.resolved_bits}-bit")  # fmt: skip
        return RooflineHints(weight_bits=read * 8 / elements, note=note)
