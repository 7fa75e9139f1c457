"""rooflens's own format: :func:`rooflens.kernels.quantize_linear_layers` swaps in ``LowBitLinear`` layers.

* ``groupwise`` — packed group-wise codes, ``bits`` 8/4/3/2, ``group_size`` 32/64/128, ``symmetric`` or not
  (see :mod:`rooflens.kernels.lowbit` for the exact layout and bits per weight); the codes by round-to-nearest
  (``quantizer: rtn``) or HQQ (``hqq``, :mod:`rooflens.engines.quant.hqq`), stored alike.

The forward path is the ``kernel`` of the spec (:data:`KERNEL_PATHS`): ``auto`` takes the Triton
dequant-matmul kernel on CUDA, rooflens's AVX2 kernel on the CPU (torch's int4 CPU kernel where that one
cannot be built), the plain-torch reference elsewhere.
Usable on its own, e.g. to quantize one model at several bit widths::

    get_handler("rooflens").quantize(model, QuantSpec("rooflens", "groupwise", bits=4, group_size=64,
                                                      symmetric=True), device)
"""

from __future__ import annotations

import torch
from torch import nn

from rooflens.engines.options.quantized import FORMATS, QuantSpec
from rooflens.engines.quant.base import QuantHandler
from rooflens.engines.quant.hqq import QUANTIZERS
from rooflens.kernels import LowBitLinear, QuantizationReport, quantize_linear_layers
from rooflens.kernels.cpu_native import DENSE_FROM_ROWS
from rooflens.kernels.linear import kernel_unavailable
from rooflens.kernels.ops import native_call_path

KERNEL_PATHS = {
    "torch": "torch reference (dequantize every call + matmul in the activation dtype: a correctness path, not a fast one)",
    "native": "rooflens's AVX2 kernel (rooflens.kernels.cpu_native): the format as stored, fp32 activations; "
    f"GEMV / flat GEMM below {DENSE_FROM_ROWS} rows, exact dequantization + torch's fp32 GEMM from "
    f"{DENSE_FROM_ROWS} rows (prefill); 3-bit codes run in the 4-bit packing",
    "native_a8": "rooflens's AVX2 kernel with int8 activations (rooflens.kernels.cpu_native): below "
    f"{DENSE_FROM_ROWS} rows the activations quantized per 32 values and multiplied with the codes in integers "
    "(as llama.cpp's q8 blocks; lossy in the activations), the exact dense path from there; 3-bit codes in the 4-bit packing",
    "int4pack": "torch's int4 CPU kernel (aten._weight_int4pack_mm_for_cpu): bf16 activations, scales and zeros; "
    "3/2-bit codes run in the 4-bit layout, 8-bit codes as two 4-bit halves",
    "triton": "Triton dequant-matmul kernel (rooflens.kernels.triton_lowbit)",
}


def kernel_path(layers: dict[str, nn.Module], device: torch.device) -> str:
    """The forward path the rooflens layers take on ``device``, in words."""
    paths = sorted({m.path(device) for m in layers.values()})
    interp = " under TRITON_INTERPRET=1" if "triton" in paths and device.type == "cpu" else ""
    return "; ".join(KERNEL_PATHS[p] for p in paths) + interp


class RooflensHandler(QuantHandler):
    """The rooflens backend; :attr:`report` is the :class:`QuantizationReport` of the last :meth:`quantize`."""

    name = "rooflens"
    formats = FORMATS["rooflens"]

    def __init__(self) -> None:
        self.report: QuantizationReport | None = None

    def library(self) -> str:
        return "rooflens.kernels"

    def unavailable(self, spec: QuantSpec, device: torch.device, dtype: str | None = None) -> str | None:
        return kernel_unavailable(spec.kernel, device) if spec.kernel else None

    def quantize(self, model: nn.Module, spec: QuantSpec, device: torch.device) -> dict[str, nn.Module]:
        self.report = quantize_linear_layers(
            model,
            spec.bits,
            spec.group_size,
            bool(spec.symmetric),
            skip=spec.skip,
            kernel=spec.kernel,
            quantizer=QUANTIZERS[spec.quantizer],
        )
        layers = {name: model.get_submodule(name) for name in self.report.replaced_names}
        assert all(isinstance(m, LowBitLinear) for m in layers.values())
        return layers

    def storage_note(self, spec: QuantSpec) -> str:
        return (
            "exact: QuantizedWeight.storage_bytes (packed int32 codes + fp16 scales, + fp16 zero points if asymmetric)"
        )

    def notes(
        self, spec: QuantSpec, model: nn.Module, device: torch.device, dtype: str, compiled: bool = False
    ) -> list[str]:
        native = any(m.path(device) in ("native", "native_a8") for m in model.modules() if isinstance(m, LowBitLinear))
        return [f"compiled graphs call the native kernel as a {native_call_path()}"] if compiled and native else []
