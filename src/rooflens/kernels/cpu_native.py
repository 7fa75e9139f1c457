"""CPU fast path for rooflens's low-bit format: rooflens's own AVX2 kernel (``csrc/lowbit_avx2.c``).

It reads the format as stored (no repacking): 8-, 4- and 2-bit codes in their packed rows, fp16 scales and
zero points, fp32 activations and accumulation. 3-bit codes straddle 32-bit words, so a 3-bit weight is
expanded once into the 4-bit packing (same codes, same scales) and credited with 4-bit traffic
(:attr:`NativePlan.bits_read`).

Two dataflows, picked by the number of activation rows ``M`` (FlashDecoding++'s heuristic dataflow, on a CPU):

* ``M < DENSE_FROM_ROWS`` — GEMV / flat GEMM: codes are unpacked in registers and multiplied straight away;
  the weight is read once per call. Measured on a 2-core AVX2 EPYC, 4096x4096 at M = 1: fp32 ``F.linear``
  2.7 ms, torch's int4 CPU kernel (bf16 activations) 1.2 ms, this kernel at 4 bits 0.71 ms and at 8 bits
  0.65 ms (weights read from cache; streamed from memory, 0.9-1.2 ms against fp32's 3.3 ms).
* ``M >= DENSE_FROM_ROWS`` (prefill, perplexity windows, large batches) — the weight is dequantized exactly
  to fp32 in slices of rows and multiplied by torch's fp32 GEMM, which reuses each weight across rows far
  better than the register tiles do. Crossover measured on the same machine: at M = 8 the flat tiles win
  (4096x4096 4-bit: 3.9 vs 6.0 ms; SmolLM2's 1536x576: 0.18 vs 0.35 ms), from M = 16 the dense path
  (5.8 vs 7.8 ms; 0.34 vs 0.39 ms). This path reads the codes and also writes and reads back the fp32 slice.

``int8_activations`` (``kernel: native_a8``) changes the first dataflow only: the activations are quantized to int8
per chunk of 32 values (``d = max|x| / 127``, llama.cpp's q8 blocks) and the codes multiplied with them in integers
(``vpmaddubsw``: 32 codes per instruction instead of 8 converted to fp32), scaled once per chunk. Lossy in the
activations (a relative error of about 1e-2 per output), as llama.cpp's quantized dot products are; the dense
path stays exact. Measured on a 2-core AMD EPYC (Zen 3, AVX2 only), one thread, 576 rows of 1536 weights from cache:
4-bit 81 ns per row against the fp32 path's 105, 8-bit 141 against 99 (the signed 8-bit codes cost more there than
the fp32 path's conversions); with 2 threads on SmolLM2's shapes the 4-bit gain is 0-25 %, the 8-bit path slower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rooflens.kernels.lowbit import QuantizedWeight, pack_codes, unpack_codes
from rooflens.kernels.native import native_library
from rooflens.kernels.ranges import kernel_range

DENSE_FROM_ROWS = 16  # measured crossover (see the module docstring); flat tiles below, dequant + GEMM from here
SLICE_ELEMENTS = 1 << 21  # fp32 weights dequantized per slice on the dense path (8 MB)
KERNEL_NAME = "rooflens AVX2 kernel (fp32 activations)"
KERNEL_NAME_A8 = "rooflens AVX2 kernel (int8 activations per 32 below 16 rows, integer dot products)"


@dataclass(frozen=True)
class NativePlan:
    """The tensors the kernel reads for one weight; ``codes`` is the stored packing (3-bit: expanded to 4)."""

    codes: torch.Tensor  # int32 [N, K * kbits / 32]
    scales: torch.Tensor  # fp16 [N, K / g]
    zeros: torch.Tensor | None  # fp16 [N, K / g] or None (symmetric: z = zconst)
    kbits: int  # bits of the packing the kernel reads: 8, 4 or 2
    zconst: float  # the symmetric zero point 2**(bits - 1) of the original format
    group_size: int
    shape: tuple[int, int]

    @property
    def weight_args(self) -> tuple:
        """The C entry points' leading arguments (codes, bits, N, K, scales, zeros, zconst, group size)."""
        zeros = None if self.zeros is None else self.zeros.data_ptr()
        n, k = self.shape
        return (self.codes.data_ptr(), self.kbits, n, k, self.scales.data_ptr(), zeros, self.zconst, self.group_size)

    @property
    def read_bytes(self) -> int:
        """Bytes of weight data one GEMV / flat-GEMM call reads: codes, scales and zero points."""
        tensors = [self.codes, self.scales] + ([self.zeros] if self.zeros is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def dense_extra_bytes(self) -> int:
        """What the dense path moves on top: the fp32 weight written and read back once."""
        return 2 * self.shape[0] * self.shape[1] * 4

    @property
    def bits_read(self) -> float:
        """Bits read per weight of the original matrix on the GEMV / flat path."""
        return self.read_bytes * 8 / (self.shape[0] * self.shape[1])


def plan_for(qw: QuantizedWeight) -> NativePlan:
    """The kernel's view of a CPU :class:`QuantizedWeight`: the tensors themselves, or a 4-bit copy for 3 bits."""
    codes = qw.packed.contiguous()
    kbits = qw.bits
    if qw.bits == 3:
        codes, kbits = pack_codes(unpack_codes(qw.packed, 3, qw.in_features), 4), 4
    zeros = None if qw.zeros is None else qw.zeros.contiguous()
    return NativePlan(codes, qw.scales.contiguous(), zeros, kbits, 2.0 ** (qw.bits - 1), qw.group_size, qw.shape)


def _check(rc: int, what: str) -> None:
    if rc:
        raise RuntimeError(f"rooflens native kernel rejected its arguments in {what} (code {rc})")


def native_lowbit_linear(
    x: torch.Tensor, plan: NativePlan, bias: torch.Tensor | None = None, int8_activations: bool = False
) -> torch.Tensor:
    """``x @ W.T + bias`` for CPU ``x [..., K]``; computes in fp32 (``int8_activations``: int8 x codes below
    ``DENSE_FROM_ROWS`` rows), returns ``x.dtype``.

    Decode calls it ~200 times per token on a small model, so the common case (fp32, contiguous, few rows)
    does no extra tensor work: ~10 us of Python and ctypes per call.
    """
    n, k = plan.shape
    x2 = x if x.dtype == torch.float32 and x.is_contiguous() else x.to(torch.float32).contiguous()
    m = x2.numel() // k
    lib = native_library()
    threads = torch.get_num_threads()
    if m < DENSE_FROM_ROWS:
        y = torch.empty(*x.shape[:-1], n, dtype=torch.float32)
        entry = "rl_lowbit_gemm_a8" if int8_activations else "rl_lowbit_gemm"
        with kernel_range(entry):
            rc = getattr(lib, entry)(*plan.weight_args, x2.data_ptr(), m, y.data_ptr(), threads)
        _check(rc, entry)
    else:
        xp = torch.empty(m, k, dtype=torch.float32)
        with kernel_range("rl_permute_x"):
            lib.rl_permute_x(x2.data_ptr(), m, k, plan.kbits, xp.data_ptr())
        yt = torch.empty(n, m, dtype=torch.float32)  # y transposed: each slice of rows is contiguous
        rows = max(1, min(n, SLICE_ELEMENTS // k))
        w = torch.empty(rows, k, dtype=torch.float32)
        weight = plan.weight_args
        for n0 in range(0, n, rows):
            n1 = min(n, n0 + rows)
            with kernel_range("rl_lowbit_dequant"):
                rc = lib.rl_lowbit_dequant(*weight, n0, n1, w.data_ptr(), threads)
            _check(rc, "rl_lowbit_dequant")
            torch.mm(w[: n1 - n0], xp.t(), out=yt[n0:n1])
        y = yt.t().reshape(*x.shape[:-1], n)
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return y if bias is None else y + bias
