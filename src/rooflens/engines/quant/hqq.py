"""HQQ-style calibration-free quantization into rooflens's group-wise format (rooflens's own implementation).

Half-Quadratic Quantization (Badri & Shaji, 2023) keeps round-to-nearest's uniform grid and needs no data, but
picks each group's grid by minimising a sparsity-promoting ``l_p`` norm (``p < 1``) of the error instead of
taking the min-max range: a few large errors cost less than many small ones, so the grid fits the bulk of the
group and the outliers do not stretch it. The result is stored exactly as RTN's (:func:`rooflens.kernels.
lowbit.quantize`: packed codes, fp16 scales, fp16 *integer* zero points when asymmetric), so every kernel and
dequantization path runs it unchanged; only the choice of scale, zero point and codes differs.

Math, per group ``w`` of ``g`` weights, codes in ``[0, m]`` (``m = 2**bits - 1``)::

    Q(s, z) = clamp(round(w / s) + z, 0, m)          dequant  D(s, z) = s (Q - z)
    min_{s, z}  || w - D(s, z) ||_p^p                  (p = 0.7)

Half-quadratic splitting adds the error ``e`` as a variable tied to ``w - D`` by a quadratic penalty,
``min ||e||_p^p + beta/2 ||e - (w - D)||^2``, and alternates (``beta`` grows by ``kappa`` per iteration):

1. codes ``Q`` from the current ``(s, z)``;
2. shrinkage: ``e = sign(r) max(|r| - |r|^(p-1) / beta, 0)`` with ``r = (w - D) / s0`` (errors in units of the
   group's RTN scale ``s0``, so ``beta`` does not depend on the weights' magnitude): the large errors survive
   as the sparse outlier part, the small ones are zeroed;
3. ``(s, z)`` by least squares of ``w - s0 e ~ s (Q - z)``, the codes held fixed: the zero point is the mean,
   ``z = mean(Q - (w - s0 e) / s)`` (HQQ's zero update), and with it the scale ``s = <w - s0 e, Q - z> /
   <Q - z, Q - z>``.

rooflens's format constrains the solver: zero points are integers in ``[0, m]`` (torch's int4 CPU kernel
relies on it), so ``z`` is rounded after its update, and a symmetric format has no zero point at all
(``z = 2**(bits-1)`` fixed), so only the scale moves there. Scales are rounded to fp16 at every step, so the
codes are always computed against the stored scale. Starting point: RTN's min-max scale and zero
(:func:`rooflens.kernels.lowbit.quantize_codes`). Each group keeps the best ``(s, z)`` seen by squared error
``||w - D||^2`` (what a layer's output error follows), RTN's included, so no group ends worse than RTN; the
iterations stop after ``iters`` or as soon as the total squared error of the iterate stops falling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from rooflens.kernels.lowbit import SCALE_DTYPE, QuantizedWeight, Quantizer, quantize, quantize_codes

CHUNK_ELEMENTS = 1 << 18  # weights solved at once (rows of a layer in slices: bounded memory, warm caches)
FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # smallest positive fp16 (subnormal)


@dataclass(frozen=True)
class HQQSettings:
    """The solver's constants: ``p`` of the norm, ``beta`` and its growth ``kappa``, the iteration cap."""

    p: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iters: int = 20


def _shrunk_target(x: torch.Tensor, r: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """``x - e``, ``e`` the generalised soft-thresholding of ``r`` (the proximal step of ``|e|^p``, p < 1).

    ``e = sign(r) max(|r| - |r|^(p-1) / beta, 0) = r relu(1 - |r|^(p-2) / beta)``: the large entries of ``r``
    survive (shrunk), the small ones vanish (``r = 0`` gives ``0^(p-2) = inf``, so a factor of 0)."""
    keep = r.abs().log_().mul_(p - 2.0).sub_(math.log(beta)).exp_().neg_().add_(1.0).relu_()  # pow: 3x slower
    return torch.addcmul(x, r, keep, value=-1.0)


def _codes(x: torch.Tensor, a: torch.Tensor, z: torch.Tensor, top: int) -> torch.Tensor:
    """Unsigned codes (as floats) of ``x [R, G, g]`` against scales ``a`` and zero points ``z`` ``[R, G, 1]``."""
    return torch.div(x, a).round_().add_(z).clamp_(0, top)


def _fit(
    target: torch.Tensor,
    q: torch.Tensor,
    a: torch.Tensor,
    z: torch.Tensor,
    s0: torch.Tensor,
    fixed_zero: bool,
    top: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``(a, z)`` of ``target ~ a (q - z)``, codes fixed; z an integer in [0, top], ``a s0`` on fp16.

    Reductions only: ``<t, q - z> = <t, q> - z sum t``, ``|q - z|^2 = <q, q> - 2 z sum q + g z^2``."""
    g = q.shape[-1]
    tq, qq = torch.linalg.vecdot(target, q).unsqueeze(-1), torch.linalg.vecdot(q, q).unsqueeze(-1)
    t_sum, q_sum = target.sum(dim=-1, keepdim=True), q.sum(dim=-1, keepdim=True)
    if not fixed_zero:  # HQQ's zero update, z = mean(q - t / a), on the integer grid of the format
        z = torch.clamp(torch.round((q_sum - t_sum / a) / g), 0, top)
    den = qq - 2 * z * q_sum + g * z * z
    a_new = (tq - z * t_sum) / den.clamp_min(1e-30)
    s_new = (a_new * s0).clamp(FP16_TINY, FP16_MAX).to(SCALE_DTYPE).to(torch.float32)
    ok = (den > 0.5) & (a_new > 0) & torch.isfinite(a_new)  # den is a sum of squared integers: 0 or >= 1
    return torch.where(ok, s_new / s0, a), z


def _solve_chunk(
    wg: torch.Tensor, s0: torch.Tensor, z: torch.Tensor, bits: int, fixed_zero: bool, cfg: HQQSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``(s, z)`` per group of ``wg [R, G, g]`` (fp32 scales on the fp16 grid, integer zeros), from RTN's.

    Works in units of RTN's scale ``s0``: ``x = w / s0`` and ``s = a s0``, so ``beta`` is unit-free."""
    top = 2**bits - 1
    x = wg / s0
    a = torch.ones_like(s0)
    best_a, best_z, best_err = a, z, torch.full_like(s0, float("inf"))
    beta, last = cfg.beta, float("inf")
    for it in range(cfg.iters + 1):  # pass 0 scores RTN itself
        q = _codes(x, a, z, top)
        r = torch.addcmul(x, a, q - z, value=-1.0)
        err = torch.linalg.vector_norm(r, dim=-1, keepdim=True).square_()
        better = err < best_err
        best_a, best_z, best_err = (
            torch.where(better, a, best_a),
            torch.where(better, z, best_z),
            torch.minimum(err, best_err),
        )
        total = float((err * s0 * s0).sum())
        if it == cfg.iters or total >= last:  # the cap, or the error stopped falling
            break
        last = total
        a, z = _fit(_shrunk_target(x, r, beta, cfg.p), q, a, z, s0, fixed_zero, top)
        beta *= cfg.kappa
    return best_a * s0, best_z


def hqq_codes(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool, settings: Optional[HQQSettings] = None
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """As :func:`rooflens.kernels.lowbit.quantize_codes` (same checks, shapes, dtypes), the grid chosen by HQQ."""
    cfg = settings or HQQSettings()
    _, scales0, zeros0 = quantize_codes(w, bits, group_size, symmetric)  # RTN, and the same checks of w
    n, k = w.shape
    wg = w.detach().to(torch.float32).reshape(n, k // group_size, group_size)
    s_all = scales0.to(torch.float32).unsqueeze(-1)
    z_all = torch.full_like(s_all, 2.0 ** (bits - 1)) if zeros0 is None else zeros0.to(torch.float32).unsqueeze(-1)
    out_s, out_z = torch.empty_like(s_all), torch.empty_like(z_all)
    rows = max(1, CHUNK_ELEMENTS // k)
    for r0 in range(0, n, rows):
        part = slice(r0, min(n, r0 + rows))
        out_s[part], out_z[part] = _solve_chunk(wg[part], s_all[part], z_all[part], bits, symmetric, cfg)
    scales = out_s.squeeze(-1).to(SCALE_DTYPE)
    codes = torch.clamp(torch.round(wg / scales.to(torch.float32).unsqueeze(-1)) + out_z, 0, 2**bits - 1)
    zeros = None if symmetric else out_z.squeeze(-1).to(SCALE_DTYPE)
    return codes.to(torch.int32).reshape(n, k), scales, zeros


def hqq_quantize(w: torch.Tensor, bits: int = 4, group_size: int = 128, symmetric: bool = True) -> QuantizedWeight:
    """Quantize a ``[N, K]`` weight by HQQ into rooflens's packed group-wise format (as :func:`quantize`)."""
    return quantize(w, bits, group_size, symmetric, codes_of=hqq_codes)


QUANTIZERS: dict[str, Quantizer] = {"rtn": quantize, "hqq": hqq_quantize}
"""The quantizers an engine's ``quantizer`` option names: round-to-nearest, or HQQ."""
