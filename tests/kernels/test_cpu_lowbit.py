"""The CPU fast path of the rooflens format (torch's int4 kernel) against the plain-torch reference."""

import pytest
import torch

from rooflens.kernels import quantize, reference_linear
from rooflens.kernels.cpu_lowbit import COMPUTE_DTYPE, cpu_kernel_unavailable, cpu_lowbit_linear, plan_for
from rooflens.kernels.lowbit import dequantize

pytestmark = pytest.mark.skipif(cpu_kernel_unavailable() is not None, reason=str(cpu_kernel_unavailable()))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def kernel_weight(plan) -> torch.Tensor:
    """The dense [N, K] weight the kernel multiplies by: its output for the identity matrix."""
    k2 = plan.packed.shape[1] * 2
    eye = torch.eye(k2, dtype=COMPUTE_DTYPE)
    w = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, plan.packed, plan.group_size, plan.scales_zeros).float().t()
    w = w[: plan.out_features]
    return w[:, : k2 // 2] + w[:, k2 // 2 :] if plan.halves == 2 else w


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@torch.no_grad()
def test_fast_path_matches_the_reference(bits, group_size, symmetric):
    gen = torch.Generator().manual_seed(bits * 1000 + group_size + symmetric)
    for n, k in ((40, 3 * group_size), (96, 2 * group_size), (8, group_size)):  # ragged N: padded to 16 inside
        w = torch.randn(n, k, generator=gen) * 0.05
        qw = quantize(w, bits=bits, group_size=group_size, symmetric=symmetric)
        plan = plan_for(qw)
        # the conversion is exact in the codes: the kernel's weight is the format's, up to bf16 scales/zeros
        ref_w = dequantize(qw)
        err = (kernel_weight(plan) - ref_w).abs()
        assert float(err.max()) <= 2**-7 * float(ref_w.abs().max()) + 1e-6, (n, k, float(err.max()))
        bias = torch.randn(n, generator=gen)
        for m in (1, 3, 8):
            x = torch.randn(m, k, generator=gen)
            out = cpu_lowbit_linear(x, plan, bias)
            assert out.shape == (m, n) and out.dtype == torch.float32
            assert rel(out, reference_linear(x, qw, bias)) < 1e-2, (n, k, m)
        x3 = torch.randn(2, 3, k, generator=gen, dtype=torch.bfloat16)  # leading dims and bf16 inputs
        out3 = cpu_lowbit_linear(x3, plan)
        assert out3.shape == (2, 3, n) and out3.dtype == torch.bfloat16
        assert rel(out3, reference_linear(x3.float(), qw)) < 1e-2


@pytest.mark.parametrize("bits, expected", [(8, 8 + 64 / 64), (4, 4 + 32 / 64), (3, 4 + 32 / 64), (2, 4 + 32 / 64)])
def test_bytes_read_are_what_the_kernel_reads(bits, expected):
    """3- and 2-bit weights run in the 4-bit layout and are credited with 4-bit traffic, not their own."""
    qw = quantize(torch.randn(64, 256), bits=bits, group_size=64)
    plan = plan_for(qw)
    assert plan.bits_read == pytest.approx(expected)
    assert plan.read_bytes == plan.packed.numel() + plan.scales_zeros.numel() * 2
    ragged = plan_for(quantize(torch.randn(40, 256), bits=bits, group_size=64))
    assert ragged.bits_read == pytest.approx(expected * 48 / 40)  # 8 padded output columns are read too
