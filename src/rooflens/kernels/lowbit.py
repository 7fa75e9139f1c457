"""rooflens's group-wise weight-only low-bit format (plain torch: quantize, pack, dequantize, reference matmul).

Format
------
A weight ``W`` of shape ``[N, K]`` (``N`` = out features, ``K`` = in features, the ``nn.Linear`` layout) is
quantized **per output row in groups of ``group_size`` consecutive input columns** (``group_size`` in
{32, 64, 128}; it must divide ``K``) to ``bits`` in {8, 4, 3, 2}:

* **symmetric**: ``s = absmax(group) / (2**(bits-1) - 1)``, signed code ``c = clamp(round(w / s),
  -2**(bits-1), 2**(bits-1) - 1)``, ``w' = c * s``.  The code is *stored* in offset binary,
  ``u = c + 2**(bits-1)`` (an unsigned bit field), so ``w' = (u - 2**(bits-1)) * s``.  Round-to-nearest
  with ``s`` from the absolute maximum never reaches the most negative code, so 2-bit symmetric is ternary
  {-1, 0, +1}·s (asymmetric 2-bit uses all four levels).
* **asymmetric**: the group range is widened to include 0 (``lo = min(min(group), 0)``, ``hi =
  max(max(group), 0)``), ``s = (hi - lo) / (2**bits - 1)``, integer zero point ``z = round(-lo / s)`` in
  ``[0, 2**bits - 1]``, unsigned code ``u = clamp(round(w / s) + z, 0, 2**bits - 1)``, ``w' = (u - z) * s``.

Scales and zero points are stored in **fp16**, shape ``[N, K // group_size]`` (zero points are integers,
exact in fp16).  The scale is rounded *up* to the next fp16 value before the codes are computed, so
round-to-nearest holds exactly against the stored scale: ``|w - w'| <= s / 2`` for every element.

Codes are packed into **int32 words along K as a little-endian bit stream per row**: code ``k`` of a row
occupies bits ``[k*bits, (k+1)*bits)`` of the row's stream; bit ``b`` of the stream is bit ``b % 32`` of word
``b // 32``.  8/4/2-bit codes never cross a word (4/8/16 codes per word); 3-bit codes are packed densely
(32 codes in 3 words, two of which straddle a word boundary), so nothing is wasted.  ``K`` is a multiple of
32 (it is a multiple of ``group_size``), hence every row fills a whole number ``K * bits / 32`` of words.
``packed`` has shape ``[N, K * bits // 32]`` (row-major, the row of ``W`` it came from).

Storage, exactly (``QuantizedWeight.storage_bytes``; ``bits_per_weight = storage_bytes * 8 / (N * K)``)::

    bits_per_weight = bits + 16 / group_size            (symmetric)
    bits_per_weight = bits + 16 / group_size + 16 / group_size   (asymmetric: fp16 zero points)

    bits  group   symmetric   asymmetric
    8     32      8.5         9.0
    8     64      8.25        8.5
    8     128     8.125       8.25
    4     32      4.5         5.0
    4     64      4.25        4.5
    4     128     4.125       4.25
    3     32      3.5         4.0
    3     64      3.25        3.5
    3     128     3.125       3.25
    2     32      2.5         3.0
    2     64      2.25        2.5
    2     128     2.125       2.25

(A bias, if any, stays in the layer's dtype and is not part of ``QuantizedWeight``.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

from rooflens.lowbit_rules import ALLOWED_BITS, ALLOWED_GROUP_SIZES, check_bits, check_group_size

WORD_BITS = 32
SCALE_DTYPE = torch.float16

__all__ = [
    "ALLOWED_BITS",
    "ALLOWED_GROUP_SIZES",
    "QuantizedWeight",
    "Quantizer",
    "check_bits",
    "check_group_size",
    "format_bits_per_weight",
    "quantize_codes",
    "pack_codes",
    "unpack_codes",
    "quantize",
    "dequantize",
    "reference_linear",
]


# ----------------------------------------------------------------------------------------------- checks


def format_bits_per_weight(bits: int, group_size: int, symmetric: bool) -> float:
    """Exact storage bits per weight of the format (packing is dense, so no padding term)."""
    check_bits(bits)
    check_group_size(group_size)
    return bits + 16.0 / group_size + (0.0 if symmetric else 16.0 / group_size)


# ----------------------------------------------------------------------------------------- the container


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized ``[N, K]`` weight. See the module docstring for the exact layout."""

    packed: torch.Tensor  # int32 [N, K * bits // 32], little-endian bit stream per row
    scales: torch.Tensor  # fp16  [N, K // group_size]
    zeros: Optional[torch.Tensor]  # fp16 [N, K // group_size] (integer zero points) or None when symmetric
    bits: int
    group_size: int
    symmetric: bool
    shape: tuple[int, int]  # (N, K) of the original weight

    def __post_init__(self) -> None:
        check_bits(self.bits)
        n, k = (int(d) for d in self.shape)
        check_group_size(self.group_size, k)
        object.__setattr__(self, "shape", (n, k))
        words = k * self.bits // WORD_BITS
        if self.packed.dtype != torch.int32 or tuple(self.packed.shape) != (n, words):
            raise ValueError(
                f"packed must be int32 of shape {(n, words)}, got {self.packed.dtype} {tuple(self.packed.shape)}"
            )
        groups = (n, k // self.group_size)
        if self.scales.dtype != SCALE_DTYPE or tuple(self.scales.shape) != groups:
            raise ValueError(
                f"scales must be fp16 of shape {groups}, got {self.scales.dtype} {tuple(self.scales.shape)}"
            )
        if self.symmetric:
            if self.zeros is not None:
                raise ValueError("a symmetric QuantizedWeight has no zero points (zeros must be None)")
        elif self.zeros is None or self.zeros.dtype != SCALE_DTYPE or tuple(self.zeros.shape) != groups:
            got = None if self.zeros is None else (self.zeros.dtype, tuple(self.zeros.shape))
            raise ValueError(f"asymmetric zeros must be fp16 of shape {groups}, got {got}")

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def n_groups(self) -> int:
        return self.shape[1] // self.group_size

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def storage_bytes(self) -> int:
        """Real bytes held: packed codes + fp16 scales (+ fp16 zero points)."""
        total = self.packed.numel() * self.packed.element_size() + self.scales.numel() * self.scales.element_size()
        if self.zeros is not None:
            total += self.zeros.numel() * self.zeros.element_size()
        return int(total)

    @property
    def bits_per_weight(self) -> float:
        return self.storage_bytes * 8 / self.numel

    def to(self, device) -> QuantizedWeight:
        return QuantizedWeight(
            packed=self.packed.to(device),
            scales=self.scales.to(device),
            zeros=None if self.zeros is None else self.zeros.to(device),
            bits=self.bits,
            group_size=self.group_size,
            symmetric=self.symmetric,
            shape=self.shape,
        )


# --------------------------------------------------------------------------------------------- quantize


def _round_up_to_fp16(s: torch.Tensor) -> torch.Tensor:
    """Smallest fp16 value >= s (s >= 0, fp32), returned as fp16.  A zero scale (all-zero group) becomes 1."""
    s = torch.where(s > 0, s, torch.ones_like(s))
    h = s.to(SCALE_DTYPE)
    too_small = h.to(torch.float32) < s
    if bool(too_small.any()):
        bumped = torch.nextafter(h, torch.full_like(h, float("inf")))
        h = torch.where(too_small, bumped, h)
    return h


def quantize_codes(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Quantize ``w [N, K]`` -> (unsigned stored codes int32 [N, K], fp16 scales, fp16 zeros | None)."""
    check_bits(bits)
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    check_group_size(group_size, k)
    wg = w.detach().to(torch.float32).reshape(n, k // group_size, group_size)
    if not bool(torch.isfinite(wg).all()):
        raise ValueError("weight contains NaN or Inf; cannot quantize")
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        half = 2 ** (bits - 1)
        absmax = wg.abs().amax(dim=-1)
        s = _round_up_to_fp16(absmax / qmax)
        sf = s.to(torch.float32).unsqueeze(-1)
        c = torch.clamp(torch.round(wg / sf), -half, qmax)
        codes = (c + half).to(torch.int32)
        zeros = None
    else:
        qmax = 2**bits - 1
        lo = torch.clamp(wg.amin(dim=-1), max=0.0)
        hi = torch.clamp(wg.amax(dim=-1), min=0.0)
        s = _round_up_to_fp16((hi - lo) / qmax)
        sf = s.to(torch.float32)
        z = torch.clamp(torch.round(-lo / sf), 0, qmax)
        codes = torch.clamp(torch.round(wg / sf.unsqueeze(-1)) + z.unsqueeze(-1), 0, qmax).to(torch.int32)
        zeros = z.to(SCALE_DTYPE)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("a group scale overflows fp16 (|w| too large for fp16 scales)")
    return codes.reshape(n, k), s, zeros


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes ``[N, K]`` (K a multiple of 32) into int32 words ``[N, K * bits // 32]``."""
    check_bits(bits)
    n, k = codes.shape
    if k % WORD_BITS:
        raise ValueError(f"K={k} must be a multiple of 32 to pack")
    c = codes.to(torch.int64)
    if bool(((c < 0) | (c >= 2**bits)).any()):
        raise ValueError(f"codes out of range for {bits}-bit packing: must lie in [0, {2**bits - 1}]")
    blocks = c.reshape(n, k // WORD_BITS, WORD_BITS)  # 32 codes -> `bits` words
    words = torch.zeros(n, k // WORD_BITS, bits, dtype=torch.int64, device=codes.device)
    lowmask = 0xFFFFFFFF
    for j in range(WORD_BITS):
        b = j * bits
        wi, off = divmod(b, WORD_BITS)
        cj = blocks[..., j]
        words[..., wi] |= (cj << off) & lowmask
        if off + bits > WORD_BITS:  # straddles into the next word (3-bit only)
            words[..., wi + 1] |= cj >> (WORD_BITS - off)
    words = words.reshape(n, k * bits // WORD_BITS)
    words = torch.where(words >= 2**31, words - 2**32, words)  # two's complement wrap to int32
    return words.to(torch.int32)


def unpack_codes(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 ``[N, k * bits // 32]`` -> unsigned codes int32 ``[N, k]``."""
    check_bits(bits)
    n = packed.shape[0]
    if k % WORD_BITS or packed.shape[1] != k * bits // WORD_BITS:
        raise ValueError(f"packed shape {tuple(packed.shape)} does not hold {k} codes of {bits} bits per row")
    words = (packed.to(torch.int64) & 0xFFFFFFFF).reshape(n, k // WORD_BITS, bits)
    mask = 2**bits - 1
    out = torch.empty(n, k // WORD_BITS, WORD_BITS, dtype=torch.int64, device=packed.device)
    for j in range(WORD_BITS):
        b = j * bits
        wi, off = divmod(b, WORD_BITS)
        v = words[..., wi] >> off
        if off + bits > WORD_BITS:
            v = v | (words[..., wi + 1] << (WORD_BITS - off))
        out[..., j] = v & mask
    return out.reshape(n, k).to(torch.int32)


def quantize(
    w: torch.Tensor, bits: int = 4, group_size: int = 128, symmetric: bool = True, codes_of: Any = None
) -> QuantizedWeight:
    """Quantize a ``[N, K]`` weight into rooflens's packed group-wise format (tensors on ``w.device``); ``codes_of``
    picks the codes, scales and zeros (default :func:`quantize_codes`, round to nearest)."""
    codes, scales, zeros = (codes_of or quantize_codes)(w, bits, group_size, symmetric)
    return QuantizedWeight(
        packed=pack_codes(codes, bits),
        scales=scales,
        zeros=zeros,
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        shape=tuple(w.shape),
    )


Quantizer = Callable[[torch.Tensor, int, int, bool], QuantizedWeight]
"""``(w, bits, group_size, symmetric) -> QuantizedWeight``: :func:`quantize` (round-to-nearest) or another
choice of scales, zero points and codes in the same format, integer zero points included
(``rooflens.engines.quant.hqq.hqq_quantize``): every kernel runs either unchanged."""


# ------------------------------------------------------------------------------------ dequant / matmul


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense ``[N, K]`` weight (computed in fp32, returned in ``dtype``)."""
    n, k = qw.shape
    codes = unpack_codes(qw.packed, qw.bits, k).to(torch.float32).reshape(n, qw.n_groups, qw.group_size)
    s = qw.scales.to(torch.float32).unsqueeze(-1)
    if qw.symmetric:
        w = (codes - 2 ** (qw.bits - 1)) * s
    else:
        w = (codes - qw.zeros.to(torch.float32).unsqueeze(-1)) * s
    return w.reshape(n, k).to(dtype)


def reference_linear(x: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ dequantize(qw).T (+ bias)`` with fp32 accumulation; output in ``x.dtype``. x: ``[..., K]``."""
    if x.shape[-1] != qw.in_features:
        raise ValueError(f"x has {x.shape[-1]} input features, the weight expects K={qw.in_features}")
    w = dequantize(qw, torch.float32)
    out = torch.matmul(x.to(torch.float32), w.t())
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype)
