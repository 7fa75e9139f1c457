#!/usr/bin/env python
"""Which fp32 matrix-vector product a CPU decode step gets: the linear layers of one SmolLM2-135M token, per backend.

A decode step at batch 1 is ~211 products ``y = x @ W.T`` with ``x`` one row: per layer q, k, v, o, gate, up
and down, then the LM head (30 layers, 537 MB of fp32 weights in all, far more than the last-level cache, so
every weight streams from memory as in a real step). Timed per backend, the same weights and order:

* ``F.linear``: what eager and default-compiled models call (``aten::addmm``/``mm``: the BLAS torch was built with,
  MKL's ``sgemm`` on x86 wheels);
* ``mkl_packed``: ``mkl._mkl_linear`` on weights packed by ``mkl._mkl_reorder_linear_weight``, what inductor's
  ``freezing`` puts in a compiled fp32 graph on x86;
* ``onednn``: ``mkldnn._linear_pointwise`` on weights reordered for oneDNN (its JIT kernels pick the ISA from the
  CPU's flags, not its vendor);
* ``rooflens``: ``rooflens_native::dense_linear`` (rooflens's AVX2 GEMV, ``rl_f32_gemm``), what compiled engines'
  graphs call with ``compile_gemv: true`` (:mod:`rooflens.kernels.dense`).

Printed: ms per step's linears and the weight bytes over that time (GB/s), beside the machine's probed bandwidth
when a profile exists. Median of ``--reps`` passes after warm-up passes. Nothing else may run meanwhile.

    python benchmarks/linear_fp32_cpu.py [--threads 2] [--reps 15] [--rows 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

LAYERS = 30
HIDDEN, KV, INTER, VOCAB = 576, 192, 1536, 49152
LAYER_SHAPES = [
    (HIDDEN, HIDDEN),
    (KV, HIDDEN),
    (KV, HIDDEN),
    (HIDDEN, HIDDEN),
    (INTER, HIDDEN),
    (INTER, HIDDEN),
    (HIDDEN, INTER),
]


def weights() -> list[torch.Tensor]:
    """A step's weights ``[N, K]`` in call order, random."""
    shapes = LAYER_SHAPES * LAYERS + [(VOCAB, HIDDEN)]
    return [torch.randn(n, k) * 0.02 for n, k in shapes]


def step_fn(backend: str, ws: list[torch.Tensor], rows: int) -> Callable[[], float]:
    """A function that runs the step's products for ``backend`` on ``rows`` activation rows; its seconds."""
    if backend == "F.linear":
        calls = [lambda x, w=w: F.linear(x, w) for w in ws]
    elif backend == "mkl_packed":
        packed = [(torch.ops.mkl._mkl_reorder_linear_weight(w, rows), w) for w in ws]
        calls = [lambda x, p=p, w=w: torch.ops.mkl._mkl_linear(x, p, w, None, rows) for p, w in packed]
    elif backend == "onednn":
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in ws]
        calls = [lambda x, p=p: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "") for p in packed]
    elif backend == "rooflens":
        from rooflens.kernels.dense import GEMV_ROWS
        from rooflens.kernels.ops import dense_operator, prepare_native_operator

        why = prepare_native_operator()
        if why is not None:
            raise RuntimeError(why)
        op = dense_operator()
        calls = [lambda x, w=w: op(x, w, None, GEMV_ROWS) for w in ws]
    else:
        raise ValueError(backend)
    xs = {k: torch.randn(rows, k) for k in (HIDDEN, INTER)}
    ins = [xs[w.shape[1]] for w in ws]

    def run() -> float:
        t0 = time.perf_counter()
        for call, x in zip(calls, ins):
            call(x)
        return time.perf_counter() - t0

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1, help="activation rows (1: batch-1 decode)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ws = weights()
    mb = sum(w.numel() * 4 for w in ws) / 1e6
    print(
        f"torch {torch.__version__}, {args.threads} threads, {len(ws)} products, {mb:.0f} MB of fp32 weights per step"
    )
    backends = ["F.linear", "mkl_packed", "onednn", "rooflens"]
    with torch.inference_mode():
        for backend in backends:
            try:
                run = step_fn(backend, ws, args.rows)
                for _ in range(args.warmup):
                    run()
                t = statistics.median(run() for _ in range(args.reps))
            except (RuntimeError, AttributeError) as err:  # an op this build lacks
                print(f"  {backend:<13} unavailable: {str(err).splitlines()[0][:120]}")
                continue
            print(f"  {backend:<13} {t * 1e3:7.2f} ms per step   {mb / 1e3 / t:5.1f} GB/s")


if __name__ == "__main__":
    main()
