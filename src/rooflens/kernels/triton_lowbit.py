"""Triton dequantize-and-multiply kernel for rooflens's low-bit format (see :mod:`rooflens.kernels.lowbit`).

``lowbit_linear(x, qw, bias)`` computes ``x @ dequantize(qw).T + bias`` for ``x [M, K]`` (any leading dims)
along one of three paths (``path=``; :mod:`rooflens.kernels.dispatch` picks one per ``(M, N, K)``):

* ``"gemv"`` (default for ``M == 1``): one row of ``x`` per program (``BLOCK_M = 1``), broadcast-multiply
  + row reduction on CUDA cores;
* ``"flat"`` (default for ``M > 1``; FlashDecoding++'s flat GEMM for decode's ``M`` = 2..16): ``M`` padded
  (by masking, no copy) to the minimum tensor-core tile ``BLOCK_M = 16`` and fed to ``tl.dot``, ``N``
  split across programs, the K loop software-pipelined (``num_stages >= 2`` in every config: Triton's
  double buffering).  fp16/bf16 inputs go to the dot in their own dtype, fp32 with ``input_precision="ieee"``;
* ``"dense"``: dequantize the whole weight once into ``x.dtype`` (:func:`lowbit_dequantize`, the same
  kernel body with ``DEQUANT``), then one cuBLAS matmul — for large ``M``.

The kernel never materialises the dense weight on the first two paths: each program owns a ``BLOCK_N``
slice of output features (and ``BLOCK_M`` rows of ``x``), walks K in ``BLOCK_K`` tiles, unpacks the codes
from the int32 bit stream with shifts and masks, applies the per-group fp16 scale (and zero point) in fp32
and accumulates in fp32.  Optional split-K (``SPLIT_K > 1``) partitions the K loop over a third grid axis
and combines partial sums with fp32 ``atomic_add`` into a zeroed fp32 buffer — for shapes whose
``N / BLOCK_N`` alone would leave most SMs idle.

Unpacking has two paths (constexpr ``WIDE_LOAD``): for 8/4/2-bit, load the tile's ``BLOCK_K * bits / 32``
words per row contiguously and expand every word into its ``32 / bits`` codes with a broadcast shift +
``tl.reshape``; or gather one word per code (``word = k*bits // 32``, ``shift = k*bits % 32``).  3-bit codes
that straddle two words always take the gather path, stitching the two halves.  Both paths are in the CUDA
autotune space.

How the kernel is built
-----------------------
``@triton.jit`` reads ``TRITON_INTERPRET`` when it *decorates*, and ``@triton.autotune`` cannot run under
the interpreter (it benchmarks, which needs a GPU driver).  So the kernel body below is a plain function and
is decorated lazily, on first launch, by :func:`get_kernel`:

* real GPU driver and not interpreting -> ``triton.autotune(cuda_configs(path), key=[M, N, K, ...])(
  triton.jit(f))``, one autotuner per path with its own space (:data:`CUDA_SPACES`), so GEMV and flat-GEMM
  tunings never mix;
* ``TRITON_INTERPRET=1`` (CPU CI) -> ``triton.jit(f)`` with one fixed config (:data:`INTERPRET_CONFIG`).

All variants are cached per mode, so setting the env var at any time before the first launch works, even if
``triton`` itself was imported earlier.  Under the interpreter every tensor is on the CPU and the results are
correctness-only (the interpreter is NumPy, timings are meaningless); loaded bf16/fp16 values are always
upcast to fp32 before arithmetic (interpreted bf16 arithmetic is wrong).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from rooflens.kernels.lowbit import QuantizedWeight

try:  # triton is optional (extra "kernels"); the torch reference in lowbit.py never needs it
    import triton
    import triton.language as tl

    HAS_TRITON = True
    _TRITON_IMPORT_ERROR: Optional[BaseException] = None
except Exception as exc:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False
    _TRITON_IMPORT_ERROR = exc

__all__ = [
    "HAS_TRITON",
    "PATHS",
    "FLAT_BLOCK_M",
    "INTERPRET_CONFIG",
    "CUDA_DEFAULT_CONFIGS",
    "CUDA_SPACES",
    "interpreting",
    "gpu_driver_available",
    "triton_available",
    "get_kernel",
    "lowbit_dequantize",
    "lowbit_linear",
]

PATHS = ("gemv", "flat", "dense")  # see the module docstring
FLAT_BLOCK_M = 16  # the flat path's M tile: tl.dot's (and the tensor cores') minimum

# Fixed configuration used under TRITON_INTERPRET=1 (no autotune possible there).
INTERPRET_CONFIG = {"BLOCK_N": 32, "BLOCK_K": 64, "WIDE_LOAD": True}
# Fixed CUDA configurations: the dense path's dequantize (one K tile per program, never autotuned) and
# launches that ask for no autotuning (``lowbit_linear(..., autotune=False)``).
CUDA_DEFAULT_CONFIGS = {
    "gemv": {"BLOCK_N": 64, "BLOCK_K": 128, "WIDE_LOAD": True, "num_warps": 4, "num_stages": 3},
    "flat": {"BLOCK_N": 64, "BLOCK_K": 128, "WIDE_LOAD": True, "num_warps": 4, "num_stages": 3},
    "dense": {"BLOCK_N": 32, "BLOCK_K": 128, "WIDE_LOAD": True, "num_warps": 4, "num_stages": 1},
}

# Autotune spaces on CUDA, one per path: (BLOCK_N, BLOCK_K, WIDE_LOAD, num_warps, num_stages).
# WIDE_LOAD=True loads each tile's packed words contiguously and expands them in registers; False gathers
# one word per code (the only path for 3-bit, whose codes straddle words; WIDE_LOAD is ignored there).
# Which wins on a given GPU is exactly what the autotuner is for: both are in the spaces.  The flat space
# keeps num_stages >= 2 (double-buffered K tiles behind the tensor-core dot) and its dequantized
# [BLOCK_N, BLOCK_K] tile within ~64 fp32 registers per thread.
CUDA_SPACES = {
    "gemv": [
        (32, 64, True, 2, 3),
        (32, 128, True, 4, 3),
        (64, 64, True, 4, 3),
        (64, 128, True, 4, 3),
        (64, 256, True, 8, 3),
        (128, 64, True, 4, 3),
        (128, 128, True, 8, 3),
        (16, 128, True, 2, 4),
        (16, 256, True, 4, 4),
        (32, 128, False, 4, 3),
        (64, 128, False, 4, 3),
    ],
    "flat": [
        (32, 128, True, 2, 3),
        (64, 64, True, 4, 2),
        (64, 64, True, 4, 4),
        (64, 128, True, 4, 2),
        (64, 128, True, 4, 3),
        (128, 64, True, 4, 3),
        (128, 128, True, 8, 2),
        (128, 128, True, 8, 3),
        (64, 256, True, 8, 2),
        (64, 128, False, 4, 3),
        (128, 64, False, 4, 3),
    ],
}


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def interpreting() -> bool:
    """True when Triton kernels decorated now would run in the CPU interpreter."""
    if not HAS_TRITON:
        return False
    try:
        return bool(triton.knobs.runtime.interpret)
    except AttributeError:  # older triton without knobs
        return _interpret_env()


def gpu_driver_available() -> bool:
    return torch.cuda.is_available()


def triton_available() -> bool:
    """Can :func:`lowbit_linear` run here (triton importable and either a GPU or the interpreter)?"""
    return HAS_TRITON and (interpreting() or gpu_driver_available())


# ------------------------------------------------------------------------------------------ the kernel


def _lowbit_linear_kernel(
    x_ptr,
    packed_ptr,
    scales_ptr,
    zeros_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_pn,
    stride_sn,
    stride_om,
    stride_on,
    BITS: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    SYMMETRIC: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WIDE_LOAD: tl.constexpr,
    DEQUANT: tl.constexpr,
):
    # DEQUANT (the dense path): store each dequantized tile as W^T -- the output for x = identity, so
    # out[k, n] = W[n, k] -- instead of multiplying; x and bias are not read.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M

    CODE_MASK: tl.constexpr = (1 << BITS) - 1
    HALF: tl.constexpr = 1 << (BITS - 1)
    STRADDLE: tl.constexpr = (32 % BITS) != 0  # 3-bit codes can cross a word boundary
    SCALE_PER_TILE: tl.constexpr = (GROUP_SIZE % BLOCK_K) == 0  # one group per (row, K tile)
    CPW: tl.constexpr = 32 // BITS  # codes per word when they do not straddle (8/4/2-bit)
    WORDS_PER_TILE: tl.constexpr = BLOCK_K // CPW
    WORDS_PER_ROW = K * BITS // 32

    n_iters = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(n_iters, SPLIT_K)
    it_start = pid_k * per_split
    it_end = tl.minimum(it_start + per_split, n_iters)

    row_ptr = packed_ptr + offs_n[:, None] * stride_pn  # [BLOCK_N, 1]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(it_start, it_end):
        offs_k = it * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        wmask = mask_n[:, None] & mask_k[None, :]

        # --- unpack codes [BLOCK_N, BLOCK_K] from the per-row little-endian bit stream
        if WIDE_LOAD and not STRADDLE:
            # load the tile's words contiguously ([BLOCK_N, BLOCK_K / CPW], vectorisable), then expand each
            # word into its CPW codes with a broadcast shift and flatten (code c of word w -> k = w*CPW + c)
            offs_w = it * WORDS_PER_TILE + tl.arange(0, WORDS_PER_TILE)
            words = tl.load(
                row_ptr + offs_w[None, :], mask=mask_n[:, None] & (offs_w < WORDS_PER_ROW)[None, :], other=0
            )
            shifts = tl.arange(0, CPW) * BITS
            q = tl.reshape((words[:, :, None] >> shifts[None, None, :]) & CODE_MASK, (BLOCK_N, BLOCK_K))
        else:
            # per-element gather: code k lives at bit k*BITS of the row stream
            bitpos = offs_k * BITS
            word = bitpos // 32
            off = bitpos % 32
            w_lo = tl.load(row_ptr + word[None, :], mask=wmask, other=0)
            if STRADDLE:
                straddle = off > (32 - BITS)
                hi_shift = tl.where(straddle, 32 - off, 0)
                lo_mask = tl.where(straddle, (1 << hi_shift) - 1, CODE_MASK)
                w_hi = tl.load(row_ptr + (word + 1)[None, :], mask=wmask & straddle[None, :], other=0)
                q = ((w_lo >> off[None, :]) & lo_mask[None, :]) | ((w_hi << hi_shift[None, :]) & CODE_MASK)
            else:
                q = (w_lo >> off[None, :]) & CODE_MASK
        qf = q.to(tl.float32)

        # --- per-group scale / zero point, dequantize in fp32
        if SCALE_PER_TILE:
            g0 = (it * BLOCK_K) // GROUP_SIZE
            s = tl.load(scales_ptr + offs_n * stride_sn + g0, mask=mask_n, other=0.0).to(tl.float32)[:, None]
            if SYMMETRIC:
                wf = (qf - HALF) * s
            else:
                z = tl.load(zeros_ptr + offs_n * stride_sn + g0, mask=mask_n, other=0.0).to(tl.float32)[:, None]
                wf = (qf - z) * s
        else:
            gidx = offs_n[:, None] * stride_sn + (offs_k // GROUP_SIZE)[None, :]
            s = tl.load(scales_ptr + gidx, mask=wmask, other=0.0).to(tl.float32)
            if SYMMETRIC:
                wf = (qf - HALF) * s
            else:
                z = tl.load(zeros_ptr + gidx, mask=wmask, other=0.0).to(tl.float32)
                wf = (qf - z) * s

        if DEQUANT:
            tl.store(
                out_ptr + offs_k[None, :] * stride_om + offs_n[:, None] * stride_on,
                wf.to(out_ptr.dtype.element_ty),
                mask=wmask,
            )
        else:  # --- multiply-accumulate
            xt = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                mask=mask_m[:, None] & mask_k[None, :],
                other=0.0,
            )
            if BLOCK_M == 1:
                acc += tl.sum(wf * xt.to(tl.float32), axis=1)[None, :]
            else:
                if DOT_F32:
                    acc += tl.dot(xt.to(tl.float32), tl.trans(wf), input_precision="ieee")
                else:
                    acc = tl.dot(xt, tl.trans(wf.to(xt.dtype)), acc)

    if not DEQUANT:
        if HAS_BIAS:
            b = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            if SPLIT_K > 1:  # only the first K partition adds the bias
                b = b * (pid_k == 0).to(tl.float32)
            acc += b[None, :]
        out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        omask = mask_m[:, None] & mask_n[None, :]
        if SPLIT_K == 1:
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=omask)
        else:
            tl.atomic_add(out_ptrs, acc, mask=omask)


# ------------------------------------------------------------------------------- lazy decoration / cache

_KERNEL_CACHE: dict = {}


def _prune_configs(configs, named_args, **kwargs):
    """Drop configs whose tiles are far larger than the problem (keeps at least one)."""
    n = named_args["N"]
    k = named_args["K"]
    bits = named_args.get("BITS", kwargs.get("BITS"))
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_N"] <= max(16, triton.next_power_of_2(n))
        and c.kwargs["BLOCK_K"] <= max(32, triton.next_power_of_2(k))
        and (c.kwargs["WIDE_LOAD"] or bits is None or 32 % bits == 0)
    ]  # 3-bit: WIDE_LOAD is moot
    return kept or configs[:1]


def cuda_configs(path: str) -> list:
    """The ``triton.Config`` autotune space of ``path`` ("gemv" or "flat") on CUDA."""
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "WIDE_LOAD": wide}, num_warps=nw, num_stages=ns)
        for bn, bk, wide, nw, ns in CUDA_SPACES[path]
    ]


def get_kernel(autotune: bool = True, path: str = "gemv"):
    """Return the kernel for the current mode, decorating on first use.

    ``autotune=True`` gives ``path``'s ``@triton.autotune`` wrapper (its own space and tuning cache), but
    only when a GPU driver is present and Triton is not interpreting; otherwise (or with ``autotune=False``)
    the plain ``@triton.jit`` kernel, shared by all paths, to be launched with an explicit config.  Returns
    ``(kernel, autotuned)``.
    """
    if not HAS_TRITON:
        raise RuntimeError(f"triton is not importable ({_TRITON_IMPORT_ERROR!r}); install rooflens[kernels]")
    interp = interpreting()
    autotuned = bool(autotune) and (not interp) and gpu_driver_available()
    key = (interp, path if autotuned else None)
    if key not in _KERNEL_CACHE:
        jitted = triton.jit(_lowbit_linear_kernel)
        if autotuned:
            kernel = triton.autotune(
                configs=cuda_configs(path),
                key=["M", "N", "K", "BITS", "GROUP_SIZE", "SYMMETRIC", "SPLIT_K", "HAS_BIAS"],
                prune_configs_by={"early_config_prune": _prune_configs},
                # split-K accumulates with atomic_add: zero the output before each benchmark run and after
                # tuning (harmless for SPLIT_K == 1, which overwrites every element).
                reset_to_zero=["out_ptr"],
            )(jitted)
        else:
            kernel = jitted
        _KERNEL_CACHE[key] = kernel
    return _KERNEL_CACHE[key], autotuned


# ---------------------------------------------------------------------------------------------- launcher

_SUPPORTED_X_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CONFIG_KEYS = {"BLOCK_N", "BLOCK_K", "WIDE_LOAD", "num_warps", "num_stages"}


def _auto_split_k(m_blocks: int, n: int, k: int, group_size: int, device: torch.device) -> int:
    """Split K until the grid has about two programs per SM (GEMV shapes); 1 when N alone fills the GPU."""
    if device.type != "cuda":
        return 1
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    programs = m_blocks * triton.cdiv(n, 64)  # typical autotuned BLOCK_N
    split = 1
    while programs * split < 2 * n_sm and split < 16 and k // (2 * split) >= max(256, group_size):
        split *= 2
    return split


def _fixed_config(config: Optional[dict], path: str, interp: bool) -> dict:
    """``config`` checked (or the mode's default for ``path``), with ``WIDE_LOAD`` filled in."""
    cfg = dict(config) if config is not None else dict(INTERPRET_CONFIG if interp else CUDA_DEFAULT_CONFIGS[path])
    if set(cfg) - _CONFIG_KEYS or not {"BLOCK_N", "BLOCK_K"} <= set(cfg):
        raise ValueError(
            f"config needs BLOCK_N and BLOCK_K (optional WIDE_LOAD, num_warps, num_stages), got {sorted(cfg)}"
        )
    cfg["WIDE_LOAD"] = bool(cfg.get("WIDE_LOAD", True))
    for name in ("BLOCK_N", "BLOCK_K"):
        v = cfg[name]
        if not isinstance(v, int) or v < 16 or v & (v - 1):
            raise ValueError(f"{name}={v!r} must be a power of two >= 16")
    return cfg


def _weight_args(qw: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed, scales, zeros) as contiguous kernel arguments; zeros is a dummy (never read) when symmetric."""
    zeros = qw.zeros if qw.zeros is not None else qw.scales
    return qw.packed.contiguous(), qw.scales.contiguous(), zeros.contiguous()


def _check_device(device: torch.device) -> None:
    if not interpreting() and device.type != "cuda":
        raise RuntimeError(
            "lowbit_linear needs CUDA tensors, or TRITON_INTERPRET=1 for the CPU interpreter "
            "(use rooflens.kernels.lowbit.reference_linear on CPU)"
        )


def lowbit_dequantize(
    qw: QuantizedWeight, dtype: torch.dtype = torch.float16, *, config: Optional[dict] = None
) -> torch.Tensor:
    """Dense ``[N, K]`` weight in ``dtype``, computed by the kernel (``DEQUANT``) in fp32; equals
    :func:`rooflens.kernels.lowbit.dequantize`.  One ``BLOCK_N x BLOCK_K`` tile per program; ``config`` as in
    :func:`lowbit_linear` (default: ``CUDA_DEFAULT_CONFIGS["dense"]``, or :data:`INTERPRET_CONFIG`)."""
    kernel, _ = get_kernel(autotune=False)
    _check_device(qw.device)
    cfg = _fixed_config(config, "dense", interpreting())
    n, k = qw.shape
    w = torch.empty((n, k), dtype=dtype, device=qw.device)
    packed, scales, zeros = _weight_args(qw)
    bn, tiles = cfg.pop("BLOCK_N"), triton.cdiv(k, cfg["BLOCK_K"])
    wt = w.t()  # the kernel writes W^T [K, N] (the output for x = identity); x and bias: dummies, never read
    kernel[(triton.cdiv(n, bn), 1, tiles)](
        scales,
        packed,
        scales,
        zeros,
        scales,
        wt,
        k,
        n,
        k,
        0,
        0,
        packed.stride(0),
        scales.stride(0),
        wt.stride(0),
        wt.stride(1),
        BITS=qw.bits,
        GROUP_SIZE=qw.group_size,
        SYMMETRIC=qw.symmetric,
        HAS_BIAS=False,
        SPLIT_K=tiles,
        DOT_F32=True,
        BLOCK_M=1,
        DEQUANT=True,
        BLOCK_N=bn,
        **cfg,
    )
    return w


def lowbit_linear(
    x: torch.Tensor,
    qw: QuantizedWeight,
    bias: Optional[torch.Tensor] = None,
    *,
    out: Optional[torch.Tensor] = None,
    split_k: Optional[int] = None,
    config: Optional[dict] = None,
    autotune: bool = True,
    path: Optional[str] = None,
) -> torch.Tensor:
    """``x @ dequantize(qw).T + bias`` with the Triton kernel; fp32 accumulation, output in ``x.dtype``.

    ``x``: ``[..., K]`` fp16/bf16/fp32 (``M`` = product of the leading dims).  ``path``: ``"gemv"``,
    ``"flat"`` or ``"dense"`` (see the module docstring; :func:`rooflens.kernels.dispatch.choose_path` picks
    one from measured crossovers); ``None`` = ``"gemv"`` for ``M == 1``, ``"flat"`` otherwise.  ``out``:
    optional preallocated ``[M, N]`` (or ``[..., N]``) contiguous output in ``x.dtype``.  ``split_k``:
    partitions of the K loop on the gemv/flat paths (``None`` = heuristic on CUDA, 1 otherwise).
    ``config``: an explicit ``{"BLOCK_N", "BLOCK_K"[, "WIDE_LOAD", "num_warps", "num_stages"]}`` (no
    autotune; WIDE_LOAD defaults to True); otherwise CUDA autotunes the gemv/flat paths in their own spaces
    (unless ``autotune=False``: :data:`CUDA_DEFAULT_CONFIGS`) and the interpreter uses :data:`INTERPRET_CONFIG`.
    """
    _check_linear_args(x, qw, bias, path)
    interp = interpreting()
    _check_device(x.device)
    n, k = qw.shape
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    out_shape = (*x.shape[:-1], n)
    out2 = _output_rows(out, x, m, n, out_shape)
    if m == 0 or n == 0:
        return out2.view(out_shape)
    path = path or ("gemv" if m == 1 else "flat")
    if path == "dense":
        _dense_linear(x2, qw, bias, out2, config)
    else:
        _tiled_linear(x2, qw, bias, out2, path, split_k, config, autotune, interp)
    return out2.view(out_shape)


def _check_linear_args(x: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor], path: Optional[str]) -> None:
    """TypeError / ValueError naming the first argument of :func:`lowbit_linear` that does not fit."""
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"qw must be a QuantizedWeight, got {type(qw).__name__}")
    n, k = qw.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} input features, the weight expects K={k}")
    if x.dtype not in _SUPPORTED_X_DTYPES:
        raise ValueError(f"x dtype {x.dtype} is not supported; allowed: fp16, bf16, fp32")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if qw.packed.device != x.device:
        raise ValueError(f"x is on {x.device} but the quantized weight is on {qw.packed.device}")
    if path is not None and path not in PATHS:
        raise ValueError(f"path={path!r} is not one of {', '.join(PATHS)}")


def _output_rows(
    out: Optional[torch.Tensor], x: torch.Tensor, m: int, n: int, out_shape: tuple[int, ...]
) -> torch.Tensor:
    """The ``[M, N]`` output: a view of the caller's ``out`` (checked) or a new tensor in ``x.dtype``."""
    if out is None:
        return torch.empty((m, n), dtype=x.dtype, device=x.device)
    if tuple(out.shape) not in (out_shape, (m, n)) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {out_shape}")
    return out.view(m, n)


def _dense_linear(
    x2: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor], out2: torch.Tensor, config: Optional[dict]
) -> None:
    """The dense path: dequantize the whole weight once, then one cuBLAS matmul into ``out2``."""
    wt = lowbit_dequantize(qw, x2.dtype, config=config).t()
    if bias is None:
        torch.mm(x2, wt, out=out2)
    else:
        torch.addmm(bias.to(x2.dtype), x2, wt, out=out2)


def _tiled_linear(
    x2: torch.Tensor,
    qw: QuantizedWeight,
    bias: Optional[torch.Tensor],
    out2: torch.Tensor,
    path: str,
    split_k: Optional[int],
    config: Optional[dict],
    autotune: bool,
    interp: bool,
) -> None:
    """The gemv / flat paths: the kernel over ``BLOCK_N`` x ``BLOCK_M`` x split-K programs, into ``out2``."""
    (m, k), n = x2.shape, qw.shape[0]
    kernel, autotuned = get_kernel(autotune=autotune and config is None, path=path)
    block_m = 1 if path == "gemv" else FLAT_BLOCK_M
    m_blocks = triton.cdiv(m, block_m)
    if split_k is None:
        split_k = 1 if interp else _auto_split_k(m_blocks, n, k, qw.group_size, x2.device)
    if not isinstance(split_k, int) or split_k < 1:
        raise ValueError(f"split_k must be a positive int, got {split_k!r}")
    # split-K combines partial sums with fp32 atomics into a zeroed fp32 buffer
    target = out2
    if split_k > 1:
        target = out2 if x2.dtype == torch.float32 else torch.empty((m, n), dtype=torch.float32, device=x2.device)
        target.zero_()
    args, meta = _kernel_arguments(x2, qw, bias, target, split_k, block_m, dot_f32=interp or x2.dtype == torch.float32)
    if autotuned:

        def grid(meta_):
            return (triton.cdiv(n, meta_["BLOCK_N"]), m_blocks, split_k)

        kernel[grid](*args, **meta)
    else:
        cfg = _fixed_config(config, path, interp)
        bn = cfg.pop("BLOCK_N")
        kernel[(triton.cdiv(n, bn), m_blocks, split_k)](*args, **meta, BLOCK_N=bn, **cfg)
    if target is not out2:
        out2.copy_(target)


def _kernel_arguments(
    x2: torch.Tensor,
    qw: QuantizedWeight,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    split_k: int,
    block_m: int,
    dot_f32: bool,
) -> tuple[tuple, dict]:
    """The kernel's positional arguments (pointers, sizes, strides) and constexprs for ``x2 @ W.T -> target``."""
    (m, k), n = x2.shape, qw.shape[0]
    packed, scales, zeros = _weight_args(qw)
    bias_arg = bias if bias is not None else scales  # dummy pointer when no bias (never read)
    args = (
        x2,
        packed,
        scales,
        zeros,
        bias_arg,
        target,
        m,
        n,
        k,
        x2.stride(0),
        x2.stride(1),
        packed.stride(0),
        scales.stride(0),
        target.stride(0),
        target.stride(1),
    )
    meta = dict(
        BITS=qw.bits,
        GROUP_SIZE=qw.group_size,
        SYMMETRIC=qw.symmetric,
        HAS_BIAS=bias is not None,
        SPLIT_K=split_k,
        DOT_F32=dot_f32,
        BLOCK_M=block_m,
        DEQUANT=False,
    )
    return args, meta
