"""rooflens's own low-bit weight-only format, its torch reference and a Triton dequant-matmul kernel.

* :mod:`rooflens.kernels.lowbit` — format (quantize / pack / unpack / dequantize) and ``reference_linear``;
* :mod:`rooflens.kernels.triton_lowbit` — ``lowbit_linear`` (Triton; imported lazily so that this package
  never needs triton, and so that ``TRITON_INTERPRET`` may be set any time before the first launch);
* :mod:`rooflens.kernels.dispatch` — which Triton path (GEMV / flat GEMM / dense) a ``(M, N, K)`` takes, from
  default or measured crossovers cached per GPU;
* :mod:`rooflens.kernels.cpu_native` — the CPU fast path: rooflens's AVX2 kernel (``csrc/lowbit_avx2.c``, built
  by :mod:`rooflens.kernels.native`), reading the format as stored;
* :mod:`rooflens.kernels.cpu_lowbit` — the fallback CPU path: the format converted into torch's int4 CPU kernel;
* :mod:`rooflens.kernels.ops` — the AVX2 and Triton kernels as torch custom operators, for ``torch.compile``;
* :mod:`rooflens.kernels.linear` — ``LowBitLinear`` (picks Triton, a CPU kernel or the reference) and
  ``quantize_linear_layers``.
"""

from rooflens.kernels.linear import LowBitLinear, QuantizationReport, quantize_linear_layers
from rooflens.kernels.lowbit import (
    ALLOWED_BITS,
    ALLOWED_GROUP_SIZES,
    QuantizedWeight,
    dequantize,
    format_bits_per_weight,
    pack_codes,
    quantize,
    quantize_codes,
    reference_linear,
    unpack_codes,
)

__all__ = [
    "ALLOWED_BITS",
    "ALLOWED_GROUP_SIZES",
    "QuantizedWeight",
    "quantize",
    "quantize_codes",
    "pack_codes",
    "unpack_codes",
    "dequantize",
    "reference_linear",
    "format_bits_per_weight",
    "lowbit_linear",
    "LowBitLinear",
    "QuantizationReport",
    "quantize_linear_layers",
]


def __getattr__(name):  # lazy: importing triton is slow and optional
    if name == "lowbit_linear":
        from rooflens.kernels.triton_lowbit import lowbit_linear

        return lowbit_linear
    raise AttributeError(f"module 'rooflens.kernels' has no attribute {name!r}")
