"""rooflens's low-bit kernels as torch custom operators: what ``torch.compile(fullgraph=True)`` sees of them.

dynamo traces neither a ctypes call (the AVX2 kernel) nor the Triton launcher (autotuning, the dispatch table it
reads from a file), so each is one opaque operator here, ``rooflens::lowbit_native`` and
``rooflens::lowbit_triton``, whose fake implementation gives the output's shape, dtype and strides.
:class:`~rooflens.kernels.linear.LowBitLinear` calls them only while compiling: eager calls go to the kernels
directly, so the ~200 calls of a decoded token pay no dispatcher round trip into Python. torch's int4 kernel and
the reference are torch operators already and trace as they are.

A Python custom operator costs its graph ~25-35 us per call on top of the kernel (the dispatcher calls back into
Python, which calls ctypes): on a 2-core AMD EPYC, a 576x576 4-bit GEMV is 17 us through ctypes alone and 55 us
through ``rooflens::lowbit_native`` (``benchmarks/native_call_cost.py``). So where a C++ compiler and torch's
headers are at hand, :func:`prepare_native_operator` builds ``csrc/lowbit_op.cpp``, the same kernel registered
from C++ as ``rooflens_native::linear`` (+4-8 us per call), and compiled graphs call that one; the Python operator
stays as the fallback, and the record names which one ran (:func:`native_call_path`).

In a profile the operator is the event the attribution counts (:mod:`rooflens.bench.attribution.events`); the
native kernel's ``rooflens.kernel/`` ranges nest inside it and count with it.

No ``from __future__ import annotations`` here: ``custom_op`` reads the schema from the annotations.
"""

from collections.abc import Callable
from typing import Optional

import torch

from rooflens.kernels.cpu_native import DENSE_FROM_ROWS, SLICE_ELEMENTS, NativePlan, native_lowbit_linear
from rooflens.kernels.lowbit import QuantizedWeight
from rooflens.kernels.native import native_operator_unavailable

__all__ = [
    "dense_operator",
    "lowbit_native",
    "lowbit_triton",
    "native_call_path",
    "native_op_linear",
    "prepare_native_operator",
    "triton_linear",
    "triton_op_linear",
]


@torch.library.custom_op("rooflens::lowbit_native", mutates_args=())
def lowbit_native(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    kbits: int,
    zconst: float,
    group_size: int,
    n: int,
    k: int,
    int8_activations: bool = False,
) -> torch.Tensor:
    """:func:`~rooflens.kernels.cpu_native.native_lowbit_linear` on a :class:`NativePlan`'s tensors and numbers."""
    plan = NativePlan(codes, scales, zeros, kbits, zconst, group_size, (n, k))
    return native_lowbit_linear(x, plan, bias, int8_activations)


@lowbit_native.register_fake
def _native_fake(
    x: torch.Tensor,
    codes,
    scales,
    zeros,
    bias,
    kbits,
    zconst,
    group_size,
    n: int,
    k: int,
    int8_activations: bool = False,
) -> torch.Tensor:
    """The kernel's own layout: row-major below ``DENSE_FROM_ROWS`` rows, else its fp32 GEMM's transposed output."""
    lead, m = x.shape[:-1], x.numel() // k
    if m < DENSE_FROM_ROWS:
        y = x.new_empty((*lead, n), dtype=torch.float32)
    else:
        y = x.new_empty((n, m), dtype=torch.float32).t().reshape(*lead, n)
    y = y.to(x.dtype)  # the casts and the bias keep that layout, as in the kernel
    return y if bias is None else y + bias


def _cpp_native_fake(
    x: torch.Tensor,
    codes,
    scales,
    zeros,
    bias,
    kbits,
    zconst,
    group_size,
    n: int,
    k: int,
    int8_activations: bool,
    dense_from_rows: int,
    slice_elements: int,
) -> torch.Tensor:
    return _native_fake(x, codes, scales, zeros, bias, kbits, zconst, group_size, n, k, int8_activations)


_cpp_linear: Optional[Callable[..., torch.Tensor]] = None  # rooflens_native::linear, once prepared
_cpp_dense: Optional[Callable[..., torch.Tensor]] = None  # rooflens_native::dense_linear, once prepared


def _dense_fake(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], max_rows: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))  # contiguous, in x.dtype, on both paths


def prepare_native_operator() -> Optional[str]:
    """Build and load the C++ operator ``rooflens_native::linear`` (:file:`csrc/lowbit_op.cpp`) and register its fake,
    before tracing (a build is not traceable); None when ready, else why not: compiled graphs then call the Python
    operator :func:`lowbit_native`."""
    global _cpp_linear, _cpp_dense
    why = native_operator_unavailable()
    if why is None and _cpp_linear is None:
        torch.library.register_fake("rooflens_native::linear", _cpp_native_fake)
        torch.library.register_fake("rooflens_native::dense_linear", _dense_fake)
        _cpp_linear = torch.ops.rooflens_native.linear.default
        _cpp_dense = torch.ops.rooflens_native.dense_linear.default
    return why


def dense_operator() -> Optional[Callable[..., torch.Tensor]]:
    """``rooflens_native::dense_linear`` once :func:`prepare_native_operator` has loaded it, else None."""
    return _cpp_dense


def native_call_path() -> str:
    """How a compiled graph reaches the native kernel here, for the record."""
    why = prepare_native_operator()
    return "C++ torch operator (rooflens_native::linear)" if why is None else f"Python custom operator ({why})"


def native_op_linear(
    x: torch.Tensor, plan: NativePlan, bias: Optional[torch.Tensor] = None, int8_activations: bool = False
) -> torch.Tensor:
    """The native kernel as one operator for ``plan``: what a compiled forward calls (the C++ one where it builds)."""
    n, k = plan.shape
    args = (plan.codes, plan.scales, plan.zeros, bias, plan.kbits, plan.zconst, plan.group_size, n, k)
    if _cpp_linear is not None:  # a module global: dynamo reads it as a constant
        return _cpp_linear(x, *args, int8_activations, DENSE_FROM_ROWS, SLICE_ELEMENTS)
    return lowbit_native(x, *args, int8_activations)


def triton_linear(x: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The Triton kernel along the dataflow :func:`~rooflens.kernels.dispatch.choose_path` picks for ``x``'s rows.

    Imports triton on first call (slow, and optional)."""
    from rooflens.kernels.dispatch import choose_path
    from rooflens.kernels.triton_lowbit import lowbit_linear

    flow = choose_path(x.shape[:-1].numel(), qw.out_features, qw.in_features, x.device)
    return lowbit_linear(x, qw, bias, path=flow)


@torch.library.custom_op("rooflens::lowbit_triton", mutates_args=())
def lowbit_triton(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    bits: int,
    group_size: int,
    n: int,
    k: int,
) -> torch.Tensor:
    """:func:`triton_linear` on a :class:`QuantizedWeight`'s tensors (symmetric when it has no ``zeros``)."""
    qw = QuantizedWeight(packed, scales, zeros, bits, group_size, zeros is None, (n, k))
    return triton_linear(x, qw, bias)


@lowbit_triton.register_fake
def _triton_fake(x: torch.Tensor, packed, scales, zeros, bias, bits, group_size, n: int, k: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n))  # contiguous, in x.dtype, on every path


def triton_op_linear(x: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``rooflens::lowbit_triton`` for ``qw``: what a compiled forward calls."""
    n, k = qw.shape
    return lowbit_triton(x, qw.packed, qw.scales, qw.zeros, bias, qw.bits, qw.group_size, n, k)
