"""``LowBitLinear`` (an ``nn.Linear`` replacement holding a :class:`QuantizedWeight`) and a model-wide swap."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from rooflens.kernels import cpu_lowbit, cpu_native, ops
from rooflens.kernels.lowbit import (
    QuantizedWeight,
    Quantizer,
    check_bits,
    check_group_size,
    format_bits_per_weight,
    quantize,
    reference_linear,
)
from rooflens.kernels.native import native_unavailable
from rooflens.lowbit_rules import KERNELS

__all__ = [
    "KERNELS",
    "kernel_unavailable",
    "LowBitLinear",
    "Route",
    "resolve_lowbit_layers",
    "LayerQuantReport",
    "QuantizationReport",
    "quantize_linear_layers",
]


def kernel_unavailable(kernel: str, device: torch.device) -> Optional[str]:
    """Why the forward path ``kernel`` cannot run for inputs on ``device`` (None when it can)."""
    if kernel not in KERNELS:
        return f"kernel: {kernel!r} is not one of {', '.join(KERNELS)}"
    if kernel in ("native", "native_a8", "int4pack"):
        if device.type != "cpu":
            return f"kernel: {kernel} runs on the CPU, not {device.type}; use kernel: auto"
        return cpu_lowbit.cpu_kernel_unavailable() if kernel == "int4pack" else native_unavailable()
    if kernel == "triton":
        if importlib.util.find_spec("triton") is None:
            return "kernel: triton needs the triton package (pip install triton)"
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "kernel: triton on CPU needs TRITON_INTERPRET=1 (the Triton interpreter, slow); use kernel: auto"
    return None


@dataclass(frozen=True)
class Route:
    """A layer's forward path for one ``kernel`` setting and one device type, with the CPU kernel's plan."""

    kernel: str
    device_type: str
    path: str
    plan: object = None  # NativePlan or CpuLowBitPlan; None for triton and torch


class LowBitLinear(nn.Module):
    """Weight-only low-bit linear layer: ``y = x @ dequant(W).T + b`` in ``x.dtype``, fp32 accumulation.

    The packed codes, scales and zero points are registered as buffers (so ``.to(device)`` and
    ``state_dict`` carry them).  The fp16 scales / zero points are kept as their int16 *bit patterns*, so a
    later ``model.to(torch.bfloat16)`` / ``.float()`` cannot silently re-round them; :attr:`qweight` views
    them back as fp16.  The bias, if any, stays a (frozen) parameter and follows the model's dtype.

    ``kernel`` (:data:`KERNELS`): ``auto`` (default) -> the Triton kernel for CUDA inputs when triton is
    available; for CPU inputs rooflens's AVX2 kernel (:mod:`rooflens.kernels.cpu_native`) where it builds and
    runs, else torch's int4 CPU kernel (:mod:`rooflens.kernels.cpu_lowbit`) where this torch build has it;
    the torch reference otherwise. Any other value forces that path: ``triton`` (on CPU this needs
    ``TRITON_INTERPRET=1``), ``native``, ``native_a8`` (the AVX2 kernel with int8 activations below its dense
    threshold), ``int4pack``, ``torch`` (the reference).

    The path and plan are resolved eagerly, on the first call for a device type (or by :meth:`resolve`), and kept
    as :attr:`route`: ``torch.compile(fullgraph=True)`` then traces a forward that only reads them (choosing a
    path loads or builds the native library, and a plan converts the weight), with the native and Triton kernels
    as custom operators (:mod:`rooflens.kernels.ops`).
    """

    def __init__(self, qweight: QuantizedWeight, bias: Optional[torch.Tensor] = None, kernel: str = "auto") -> None:
        super().__init__()
        self.in_features = qweight.in_features
        self.out_features = qweight.out_features
        self.bits = qweight.bits
        self.group_size = qweight.group_size
        self.symmetric = qweight.symmetric
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r} is not one of {', '.join(KERNELS)}")
        self.kernel = kernel
        self._plans: dict[str, object] = {}  # CPU kernels' views of the weight, built on first use
        self.route: Optional[Route] = None  # the last resolved path (see resolve)
        self.register_buffer("packed", qweight.packed)
        self.register_buffer("scales", qweight.scales.view(torch.int16))  # fp16 bit patterns
        zeros = None if qweight.zeros is None else qweight.zeros.view(torch.int16)
        self.register_buffer("zeros", zeros)  # None when symmetric
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 4,
        group_size: int = 128,
        symmetric: bool = True,
        kernel: str = "auto",
        quantizer: Optional[Quantizer] = None,
    ) -> LowBitLinear:
        """``linear`` quantized by ``quantizer`` (default :func:`~rooflens.kernels.lowbit.quantize`, round-to-nearest)."""
        qw = (quantizer or quantize)(linear.weight.detach(), bits, group_size, symmetric)
        return cls(qw, linear.bias, kernel=kernel)

    @property
    def qweight(self) -> QuantizedWeight:
        """The current buffers as a :class:`QuantizedWeight` (follows ``.to(device)``)."""
        return QuantizedWeight(
            packed=self.packed,
            scales=self.scales.view(torch.float16),
            zeros=None if self.zeros is None else self.zeros.view(torch.float16),
            bits=self.bits,
            group_size=self.group_size,
            symmetric=self.symmetric,
            shape=(self.out_features, self.in_features),
        )

    @property
    def storage_bytes(self) -> int:
        return self.qweight.storage_bytes

    @property
    def bits_per_weight(self) -> float:
        return self.qweight.bits_per_weight

    def path(self, device: torch.device) -> str:
        """The forward path for inputs on ``device``: one of :data:`KERNELS` but ``auto``."""
        if self.kernel != "auto":
            return self.kernel
        if device.type == "cuda":
            from rooflens.kernels.triton_lowbit import triton_available

            return "triton" if triton_available() else "torch"
        if device.type == "cpu":
            if native_unavailable() is None:
                return "native"
            if cpu_lowbit.cpu_kernel_unavailable() is None:
                return "int4pack"
        return "torch"

    def plan(self, path: str):
        """The weight as the CPU kernel ``path`` (``native``/``native_a8`` or ``int4pack``) reads it; built once."""
        key = "int4pack" if path == "int4pack" else "native"
        if key not in self._plans:
            module = cpu_lowbit if key == "int4pack" else cpu_native
            self._plans[key] = module.plan_for(self.qweight.to("cpu"))
        return self._plans[key]

    def read_bytes(self, device: torch.device, act_dtype: torch.dtype, rows: int = 1) -> int:
        """Weight bytes one forward of ``rows`` input rows on ``device`` reads (bias excluded), for the roofline.

        The CPU kernels read their plan (:attr:`NativePlan.read_bytes`: the format as stored, 3-bit expanded
        to 4; :attr:`CpuLowBitPlan.read_bytes`: torch's int4 layout); Triton's GEMV and flat GEMM the format
        as stored; the reference, and the dense paths of the native kernel (``rows >= DENSE_FROM_ROWS``) and
        of Triton (:func:`rooflens.kernels.dispatch.choose_path`), also write and read back the dequantized
        weight (fp32 for the native kernel, ``act_dtype`` otherwise).
        """
        path = self.path(device)
        if path == "int4pack":
            return self.plan(path).read_bytes
        if path in ("native", "native_a8"):
            plan = self.plan(path)
            return plan.read_bytes + (plan.dense_extra_bytes if rows >= cpu_native.DENSE_FROM_ROWS else 0)
        dequantized = 2 * self.out_features * self.in_features * act_dtype.itemsize
        if path == "triton":
            from rooflens.kernels.dispatch import choose_path

            dense = choose_path(rows, self.out_features, self.in_features, device) == "dense"
            return self.storage_bytes + (dequantized if dense else 0)
        return self.storage_bytes + dequantized

    def resolve(self, device: torch.device) -> Route:
        """The path for inputs on ``device`` and its plan, built now and kept for the forwards that follow."""
        path = self.path(device)
        plan = self.plan(path) if path in ("native", "native_a8", "int4pack") else None
        self.route = Route(self.kernel, device.type, path, plan)
        return self.route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compiling = torch.compiler.is_compiling()  # eager calls skip the custom ops: same kernels, no dispatcher
        route = self.route
        if route is None or route.kernel != self.kernel or route.device_type != x.device.type:
            if compiling:
                raise RuntimeError(UNRESOLVED)
            route = self.resolve(x.device)
        if route.path in ("native", "native_a8"):
            native = ops.native_op_linear if compiling else cpu_native.native_lowbit_linear
            return native(x, route.plan, self.bias, route.path == "native_a8")
        if route.path == "int4pack":
            return cpu_lowbit.cpu_lowbit_linear(x, route.plan, self.bias)
        if route.path == "triton":
            triton = ops.triton_op_linear if compiling else ops.triton_linear
            return triton(x, self.qweight, self.bias)
        return reference_linear(x, self.qweight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, symmetric={self.symmetric}, bias={self.bias is not None}, "
            f"bits_per_weight={format_bits_per_weight(self.bits, self.group_size, self.symmetric):g}"
        )


UNRESOLVED = (
    "LowBitLinear: no forward path resolved for this device and kernel; run one eager forward, or "
    "resolve_lowbit_layers(model, device), before torch.compile (choosing a path is not traceable)"
)


def resolve_lowbit_layers(model: nn.Module, device: torch.device) -> int:
    """Resolve the forward path of every :class:`LowBitLinear` of ``model`` (every rung of a multi-precision
    layer too) for inputs on ``device``, so that a compiled forward can run any of them; returns their number."""
    layers = [m for m in model.modules() if isinstance(m, LowBitLinear)]
    for layer in layers:
        layer.resolve(device)
    if any(layer.route.path in ("native", "native_a8") for layer in layers):
        ops.prepare_native_operator()  # the C++ operator where it builds, else graphs call the Python one
    return len(layers)


@dataclass
class LayerQuantReport:
    name: str
    in_features: int
    out_features: int
    storage_bytes: int  # QuantizedWeight.storage_bytes (packed + scales + zeros)
    original_bytes: int  # the replaced dense weight in its dtype
    bits_per_weight: float


@dataclass
class QuantizationReport:
    bits: int
    group_size: int
    symmetric: bool
    replaced: list[LayerQuantReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # Linear layer name -> reason

    @property
    def replaced_names(self) -> list[str]:
        return [r.name for r in self.replaced]

    @property
    def total_storage_bytes(self) -> int:
        return sum(r.storage_bytes for r in self.replaced)

    @property
    def total_original_bytes(self) -> int:
        return sum(r.original_bytes for r in self.replaced)

    @property
    def quantized_params(self) -> int:
        return sum(r.in_features * r.out_features for r in self.replaced)

    @property
    def bits_per_weight(self) -> float:
        p = self.quantized_params
        return self.total_storage_bytes * 8 / p if p else 0.0

    def as_dict(self) -> dict:
        return {
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "replaced": [asdict(r) for r in self.replaced],
            "skipped": dict(self.skipped),
            "total_storage_bytes": self.total_storage_bytes,
            "total_original_bytes": self.total_original_bytes,
            "quantized_params": self.quantized_params,
            "bits_per_weight": self.bits_per_weight,
        }


def _is_skipped(name: str, skip: Iterable[str]) -> Optional[str]:
    parts = name.split(".")
    for s in skip:
        if name == s or s in parts or name.endswith("." + s):
            return s
    return None


@torch.no_grad()
def quantize_linear_layers(
    model: nn.Module,
    bits: int,
    group_size: int = 128,
    symmetric: bool = True,
    skip: Iterable[str] = ("lm_head",),
    kernel: str = "auto",
    quantizer: Optional[Quantizer] = None,
) -> QuantizationReport:
    """Replace every ``nn.Linear`` of ``model`` in place by a :class:`LowBitLinear`.

    A layer is left alone (and listed in ``report.skipped`` with the reason) when its name or one of its
    dotted path components matches an entry of ``skip`` (default: the LM head), or when ``group_size``
    does not divide its ``in_features``.  ``quantizer`` picks the codes (default: round-to-nearest).  Returns a
    :class:`QuantizationReport` whose ``total_storage_bytes`` is the sum of the new layers'
    ``QuantizedWeight.storage_bytes``.
    """
    check_bits(bits)
    check_group_size(group_size)
    if isinstance(skip, str):
        skip = (skip,)
    skip = tuple(skip)
    report = QuantizationReport(bits=bits, group_size=group_size, symmetric=symmetric)
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name, lin in targets:
        hit = _is_skipped(name, skip)
        if hit is not None:
            report.skipped[name] = f"matches skip entry {hit!r}"
            continue
        if lin.in_features % group_size:
            report.skipped[name] = f"in_features={lin.in_features} is not a multiple of group_size={group_size}"
            continue
        new = LowBitLinear.from_linear(lin, bits, group_size, symmetric, kernel=kernel, quantizer=quantizer)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        report.replaced.append(
            LayerQuantReport(
                name=name,
                in_features=lin.in_features,
                out_features=lin.out_features,
                storage_bytes=new.storage_bytes,
                original_bytes=lin.weight.numel() * lin.weight.element_size(),
                bits_per_weight=new.bits_per_weight,
            )
        )
    return report
