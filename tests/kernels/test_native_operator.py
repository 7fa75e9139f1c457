"""The native kernel as a C++ torch operator (csrc/lowbit_op.cpp, rooflens_native::linear): the same numbers as the
ctypes path it replaces in compiled graphs, opcheck, its errors, and a compiled model that calls it."""

import pytest
import torch
from torch import nn

from rooflens.kernels import LowBitLinear, ops, quantize
from rooflens.kernels.cpu_native import DENSE_FROM_ROWS, SLICE_ELEMENTS, native_lowbit_linear, plan_for
from rooflens.kernels.linear import resolve_lowbit_layers
from rooflens.kernels.native import native_operator_unavailable

WHY = native_operator_unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=str(WHY))


def _plan(bits: int, symmetric: bool, n: int = 48, k: int = 128, group: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    qw = quantize(torch.randn(n, k, generator=gen) * 0.05, bits, group, symmetric)
    return plan_for(qw), torch.randn(n, generator=gen)


def _args(plan, x, bias, int8_activations=False, dense_from_rows=DENSE_FROM_ROWS, slice_elements=SLICE_ELEMENTS):
    weight = (plan.codes, plan.scales, plan.zeros, bias, plan.kbits, plan.zconst, plan.group_size, *plan.shape)
    return (x, *weight, int8_activations, dense_from_rows, slice_elements)


CASES = [  # bits, symmetric, x's shape, dtype, bias, int8 activations
    (4, True, (1, 128), torch.float32, False, False),
    (3, False, (2, 3, 128), torch.bfloat16, True, False),  # 3 bits in the 4-bit packing; leading dims
    (8, False, (DENSE_FROM_ROWS + 4, 128), torch.float32, True, False),  # the dense path: a transposed output
    (2, True, (2, DENSE_FROM_ROWS, 128), torch.bfloat16, False, False),
    (4, False, (3, 128), torch.float32, True, True),  # kernel: native_a8
    (8, True, (DENSE_FROM_ROWS + 1, 128), torch.float32, False, True),
]


@pytest.mark.parametrize(("bits", "symmetric", "shape", "dtype", "with_bias", "int8_activations"), CASES)
def test_the_operator_returns_the_ctypes_paths_numbers_and_layout(
    bits, symmetric, shape, dtype, with_bias, int8_activations
):
    assert ops.prepare_native_operator() is None
    plan, bias = _plan(bits, symmetric)
    x = torch.randn(*shape).to(dtype)
    bias = bias.to(dtype) if with_bias else None
    want = native_lowbit_linear(x, plan, bias, int8_activations)
    got = torch.ops.rooflens_native.linear(*_args(plan, x, bias, int8_activations))
    assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same machine code, the same order of sums


@pytest.mark.parametrize(("bits", "symmetric", "shape", "dtype", "with_bias", "int8_activations"), CASES)
def test_the_operator_passes_opcheck(bits, symmetric, shape, dtype, with_bias, int8_activations):
    assert ops.prepare_native_operator() is None
    plan, bias = _plan(bits, symmetric)
    x = torch.randn(*shape).to(dtype)
    if x.dim() == 2:  # a column-major input: the kernel copies it, the output's layout must not follow it
        x = x.t().contiguous().t()
    args = _args(plan, x, bias.to(dtype) if with_bias else None, int8_activations)
    torch.library.opcheck(torch.ops.rooflens_native.linear.default, args)


def test_the_dense_paths_slices_cover_every_row():
    """Slices of 3 rows (a ragged last one) give the one-slice result (up to the GEMM's blocking of the sums)."""
    assert ops.prepare_native_operator() is None
    plan, bias = _plan(4, False, n=50)
    x = torch.randn(DENSE_FROM_ROWS + 2, 128)
    whole = torch.ops.rooflens_native.linear(*_args(plan, x, bias))
    sliced = torch.ops.rooflens_native.linear(*_args(plan, x, bias, slice_elements=3 * 128))
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-6)


def test_arguments_the_kernel_does_not_take_are_an_error_naming_it():
    assert ops.prepare_native_operator() is None
    plan, _ = _plan(4, True)
    codes, scales, zeros = plan.codes, plan.scales, plan.zeros
    x = torch.randn(1, 128)
    with pytest.raises(RuntimeError, match="rejected its arguments"):  # a bit width the kernel lacks
        torch.ops.rooflens_native.linear(x, codes, scales, zeros, None, 5, 16.0, 32, 48, 128, False, 16, 1 << 21)
    with pytest.raises(RuntimeError, match=r"x must be a CPU tensor \[\.\.\., 128\]"):
        torch.ops.rooflens_native.linear(
            torch.randn(1, 64), codes, scales, zeros, None, 4, 8.0, 32, 48, 128, False, 16, 1
        )


@pytest.mark.slow
@torch.no_grad()
def test_a_compiled_model_calls_the_cpp_operator_and_equals_eager():
    torch.manual_seed(0)
    up, down = nn.Linear(64, 96), nn.Linear(96, 64, bias=False)
    layers = [LowBitLinear.from_linear(m, 4, 32, symmetric=False, kernel="native") for m in (up, down)]
    model = nn.Sequential(layers[0], nn.SiLU(), layers[1]).eval()
    assert resolve_lowbit_layers(model, torch.device("cpu")) == 2  # prepares the operator
    assert ops.native_call_path().startswith("C++ torch operator")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randn(1, 64))
    assert explained.graph_break_count == 0
    code = "\n".join(g.code for g in explained.graphs)
    assert "rooflens_native.linear" in code and "rooflens.lowbit_native" not in code
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    for rows in (1, DENSE_FROM_ROWS + 4):
        x = torch.randn(rows, 64)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
