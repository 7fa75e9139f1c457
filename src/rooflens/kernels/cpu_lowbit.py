"""CPU fallback path for rooflens's low-bit format: torch's weight-only int4 kernel (``kernel: int4pack``).

``kernel: auto`` takes it only where rooflens's own AVX2 kernel (:mod:`rooflens.kernels.cpu_native`, which
reads 8-, 4- and 2-bit codes as stored) cannot be built.

torch's CPU build ships ``aten._weight_int4pack_mm_for_cpu``: 4-bit codes in a packed layout
(``aten._convert_weight_to_int4pack_for_cpu``, ``N`` a multiple of 16), one ``(scale, zero)`` pair per
group of ``K`` and output column, ``w = (q - 8) * scale + zero``, fp32 accumulation. Its vectorised path
runs for bfloat16 activations only: with fp32 or fp16 inputs it is 5-15x *slower* than fp32
``F.linear`` (measured on an AVX2 EPYC: 4096x4096, M = 1: fp32 linear 5.3 ms, int4 with bf16 inputs
1.3 ms, with fp32 inputs 21 ms). Torch's per-channel ``_weight_int8pack_mm`` has no groups, so it cannot
run this format's 8-bit weights exactly. A rooflens weight is therefore converted once into the int4
layout, exactly in its codes:

* ``bits <= 4``: ``w' = s (u - z)``. The int4 code is ``q = u + 8 - z`` where that fits in 0..15
  (symmetric formats, and asymmetric ones up to 3 bits), so ``zero = 0``; otherwise (4-bit asymmetric)
  ``q = u`` and ``zero = s (8 - z)``. Keeping the zero at 0 matters: ``(q - 8) s + zero`` with a large zero
  cancels, and bf16 rounding of both terms would then cost several percent of a 2-bit weight.
  On this path 3- and 2-bit weights thus run at 4-bit speed *and 4-bit traffic*: :attr:`CpuLowBitPlan.bits_read`
  says so (the AVX2 kernel reads 2-bit codes as stored, and expands only 3-bit codes to 4 bits).
* ``bits == 8``: ``u = 16 hi + lo`` with 4-bit ``hi`` and ``lo``, and
  ``w' = [(hi - 8) 16s] + [(lo - 8) s + s (136 - z)]`` (``136 - z = 8`` when symmetric): the two halves are
  laid side by side along ``K`` and multiplied with ``[x, x]`` in one kernel call.

Numerics: activations, scales and zeros are bfloat16 (the kernel wants one dtype for all three), the
output is cast back to the input's dtype; results agree with the fp32 reference to ~1e-2 relative.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from rooflens.kernels.lowbit import QuantizedWeight, unpack_codes

COMPUTE_DTYPE = torch.bfloat16
N_MULTIPLE = 16  # the packed layout's tile of output columns
KERNEL_NAME = "aten._weight_int4pack_mm_for_cpu (bf16 activations)"


@cache
def cpu_kernel_unavailable() -> str | None:
    """Why this torch build cannot run the CPU int4 kernel (None when it can): tried once on a tiny weight."""
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.zeros(16, 32, dtype=torch.int32), 1)
        torch.ops.aten._weight_int4pack_mm_for_cpu(
            torch.zeros(1, 32, dtype=COMPUTE_DTYPE), packed, 32, torch.zeros(1, 16, 2, dtype=COMPUTE_DTYPE)
        )
    except (AttributeError, RuntimeError, NotImplementedError) as err:
        return f"torch {torch.__version__} has no usable aten._weight_int4pack_mm_for_cpu ({type(err).__name__}: {err})"
    return None


@dataclass(frozen=True)
class CpuLowBitPlan:
    """A weight in the CPU kernel's layout: ``[N_pad, K_eff / 2]`` uint8 codes, ``[K_eff / g, N_pad, 2]`` bf16."""

    packed: torch.Tensor
    scales_zeros: torch.Tensor
    group_size: int
    halves: int  # 1, or 2 for 8-bit weights (hi and lo nibbles side by side along K)
    out_features: int  # N before padding to a multiple of 16

    @property
    def read_bytes(self) -> int:
        """Bytes of weight data one call reads: the packed codes and the scale/zero pairs (padding included)."""
        return (
            self.packed.numel() * self.packed.element_size()
            + self.scales_zeros.numel() * self.scales_zeros.element_size()
        )

    @property
    def bits_read(self) -> float:
        """Bits read per weight of the original ``[N, K]`` matrix."""
        k = self.packed.shape[1] * 2 // self.halves
        return self.read_bytes * 8 / (self.out_features * k)


def plan_for(qw: QuantizedWeight) -> CpuLowBitPlan:
    """Convert a :class:`QuantizedWeight` (on the CPU) into the int4 kernel's layout; exact in the codes."""
    n, k = qw.shape
    g = qw.group_size
    u = unpack_codes(qw.packed, qw.bits, k).to(torch.int32)  # [N, K], 0 .. 2**bits - 1
    s = qw.scales.float()  # [N, K / g]
    z = qw.zeros.float() if qw.zeros is not None else torch.full_like(s, 2.0 ** (qw.bits - 1))
    if qw.bits <= 4:
        top = 2**qw.bits - 1
        shift = torch.where((z <= 8) & (top + 8 - z <= 15), 8 - z, torch.zeros_like(z))  # per group
        codes = u + shift.repeat_interleave(g, dim=1).to(torch.int32)
        scales, zeros = s, s * (8 - z - shift)
    else:  # 8-bit: hi nibbles then lo nibbles, each half with its own groups
        codes = torch.cat([u >> 4, u & 15], dim=1)
        scales = torch.cat([16 * s, s], dim=1)
        zeros = torch.cat([torch.zeros_like(s), s * (136 - z)], dim=1)
    pad = -n % N_MULTIPLE
    if pad:  # extra output columns with zero codes and zero scales: they compute 0 and are cut off
        codes = torch.cat([codes, codes.new_zeros(pad, codes.shape[1])])
        scales = torch.cat([scales, scales.new_zeros(pad, scales.shape[1])])
        zeros = torch.cat([zeros, zeros.new_zeros(pad, zeros.shape[1])])
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
    scales_zeros = torch.stack([scales.t(), zeros.t()], dim=-1).to(COMPUTE_DTYPE).contiguous()
    return CpuLowBitPlan(packed, scales_zeros, g, 2 if qw.bits == 8 else 1, n)


def cpu_lowbit_linear(x: torch.Tensor, plan: CpuLowBitPlan, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W'.T + bias`` for ``x [..., K]`` on the CPU, through the int4 kernel; output in ``x.dtype``."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(COMPUTE_DTYPE)
    if plan.halves == 2:
        x2 = torch.cat([x2, x2], dim=1)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, plan.packed, plan.group_size, plan.scales_zeros)
    y = y[:, : plan.out_features].to(x.dtype)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, plan.out_features)
