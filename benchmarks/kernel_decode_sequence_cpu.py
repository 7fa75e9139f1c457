#!/usr/bin/env python
"""The native low-bit kernel over a whole model's matrices, one decode step's worth, in forward order.

Per-shape benchmarks (``kernel_lowbit_cpu.py``, ``native_call_cost.py``) time one shape at a time, from cache or
streamed through copies of one matrix. A decode step reads every quantized matrix of the model once, one after
the other: this times exactly that sequence (the shipped SmolLM2-135M, quantized as ``quantized`` does it, LM head
included unless ``--no-lm-head``), M = 1, so that the kernel's share of a measured compiled step can be read off
(e.g. the compiled rl 4-bit step's ``rooflens_native::linear`` time under the torch profiler). Two ways of calling,
each with fp32 and with int8 activations (``kernel: native_a8``):

* ``C``: the C entry points through ctypes, arguments prepared once: the kernel alone;
* ``operator``: ``rooflens_native::linear``, what compiled graphs call (adds the dispatcher and an output tensor).

Median and minimum over ``--reps`` steps, after warm-up steps; GB/s = bytes the kernel reads per step / median.
Nothing else may run on the machine meanwhile.

    python benchmarks/kernel_decode_sequence_cpu.py [--bits 4] [--group-size 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from rooflens.config import ModelSpec
from rooflens.kernels.cpu_native import DENSE_FROM_ROWS, SLICE_ELEMENTS, NativePlan
from rooflens.kernels.linear import LowBitLinear, quantize_linear_layers
from rooflens.kernels.native import native_library, native_operator_unavailable
from rooflens.models.loader import load_model


def model_plans(bits: int, group_size: int, lm_head: bool) -> list[NativePlan]:
    """The native kernel's plan of every quantized matrix of SmolLM2, in forward order (the modules' order)."""
    model = load_model(ModelSpec(source="builtin", id="smollm2-135m"), torch.device("cpu"), torch.float32).model
    if lm_head:  # tied to the embedding: quantize a copy, as the quantized engine does
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    skip = () if lm_head else ("lm_head",)
    quantize_linear_layers(model, bits, group_size, True, skip=skip, kernel="auto")
    layers = [m for m in model.modules() if isinstance(m, LowBitLinear)]
    for layer in layers:
        layer.resolve(torch.device("cpu"))
    return [layer.route.plan for layer in layers]


def calls(fn: Callable[..., object], argument_lists: list[tuple], buffers: object = None) -> Callable[[], None]:
    """One step: ``fn`` called with each argument tuple in turn; ``buffers``: the tensors whose addresses the tuples
    hold, kept alive as long as the step."""

    def step() -> None:
        for arguments in argument_lists:
            fn(*arguments)

    step.buffers = buffers  # type: ignore[attr-defined]
    return step


def steps(plans: list[NativePlan], threads: int) -> dict[str, Callable[[], None]]:
    """One decode step's kernel calls, per way of calling and kind of activations."""
    lib = native_library()
    xs = {k: torch.randn(1, k) for k in {p.shape[1] for p in plans}}
    ys = {n: torch.empty(1, n) for n in {p.shape[0] for p in plans}}
    operator = native_operator_unavailable() is None
    out: dict[str, Callable[[], None]] = {}
    for a8 in (False, True):
        kind = "int8" if a8 else "fp32"
        raw = [(*p.weight_args, xs[p.shape[1]].data_ptr(), 1, ys[p.shape[0]].data_ptr(), threads) for p in plans]
        out[f"C, {kind} activations"] = calls(lib.rl_lowbit_gemm_a8 if a8 else lib.rl_lowbit_gemm, raw, (xs, ys))
        if operator:
            weights = [(p.codes, p.scales, p.zeros, None, p.kbits, p.zconst, p.group_size, *p.shape) for p in plans]
            tail = (a8, DENSE_FROM_ROWS, SLICE_ELEMENTS)
            args = [(xs[p.shape[1]], *w, *tail) for p, w in zip(plans, weights)]
            out[f"operator, {kind} activations"] = calls(torch.ops.rooflens_native.linear.default, args)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4, choices=(2, 4, 8))
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--no-lm-head", action="store_true", help="leave the LM head in fp32 (not timed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plans = model_plans(args.bits, args.group_size, not args.no_lm_head)
    read = sum(p.read_bytes for p in plans)
    print(f"SmolLM2-135M, {args.bits}-bit g{args.group_size}: {len(plans)} matrices, {read / 1e6:.1f} MB per step")
    for name, step in steps(plans, args.threads).items():
        for _ in range(5):
            step()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        print(f"{name:28s} {median * 1e3:6.2f} ms (min {min(times) * 1e3:.2f})  {read / median / 1e9:5.1f} GB/s")


if __name__ == "__main__":
    main()
