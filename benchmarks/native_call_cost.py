#!/usr/bin/env python
"""What one call of the native low-bit kernel costs beyond its arithmetic, per way of calling it.

A decoded token of SmolLM2-135M is ~211 kernel calls on small matrices (576x576 to 1536x576, 0.2-0.5 MB at 4 bits),
so a few microseconds per call is a few percent of a step. Timed at M = 1 on one weight, called back to back
(the weight stays in cache: what is left is the call, the threads' fork and join, and the arithmetic):

* ``C (ctypes)``: the C entry point through ctypes, arguments prepared once: the floor;
* ``eager``: :func:`~rooflens.kernels.cpu_native.native_lowbit_linear`, what eager ``LowBitLinear`` calls;
* ``Python op``: ``rooflens::lowbit_native``, the ``torch.library.custom_op`` (dispatcher -> Python -> ctypes);
* ``C++ op``: ``rooflens_native::linear`` (:file:`csrc/lowbit_op.cpp`), what compiled graphs call where it builds.

Median over ``--reps`` batches of ``--calls`` calls, microseconds per call. Nothing else may run meanwhile.

    python benchmarks/native_call_cost.py [--bits 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from rooflens.kernels import quantize
from rooflens.kernels.cpu_native import DENSE_FROM_ROWS, SLICE_ELEMENTS, native_lowbit_linear, plan_for
from rooflens.kernels.native import native_library
from rooflens.kernels.ops import lowbit_native, prepare_native_operator

SHAPES = [("q/o_proj", 576, 576), ("gate/up_proj", 1536, 576), ("down_proj", 576, 1536)]


def callers(plan, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    n, k = plan.shape
    weight = (plan.codes, plan.scales, plan.zeros, None, plan.kbits, plan.zconst, plan.group_size, n, k)
    y = torch.empty(1, n)
    lib, threads = native_library(), torch.get_num_threads()
    raw = (*plan.weight_args, x.data_ptr(), 1, y.data_ptr(), threads)
    out = {
        "C (ctypes)": lambda: (lib.rl_lowbit_gemm(*raw), y),  # y referenced: the call writes into it
        "eager": lambda: native_lowbit_linear(x, plan),
        "Python op": lambda: lowbit_native(x, *weight),
    }
    why = prepare_native_operator()
    if why is None:
        cpp = torch.ops.rooflens_native.linear.default
        out["C++ op"] = lambda: cpp(x, *weight, False, DENSE_FROM_ROWS, SLICE_ELEMENTS)
    else:
        print(f"  (no C++ op: {why})")
    return out


def per_call_us(fn: Callable[[], object], calls: int, reps: int) -> float:
    for _ in range(calls):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.bits}-bit g{args.group_size}, M = 1, {args.threads} threads, microseconds per call (weight in cache)")
    with torch.inference_mode():
        for name, n, k in SHAPES:
            plan = plan_for(quantize(torch.randn(n, k) * 0.05, args.bits, args.group_size, True))
            x = torch.randn(1, k)
            row = {label: per_call_us(fn, args.calls, args.reps) for label, fn in callers(plan, x).items()}
            print(f"  {name:<13} {n}x{k}: " + "   ".join(f"{label} {us:6.1f}" for label, us in row.items()))


if __name__ == "__main__":
    main()
