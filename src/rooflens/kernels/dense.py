"""fp32 linear layers in compiled graphs on a CPU: rooflens's AVX2 GEMV (``rl_f32_gemm``, as the C++ operator
``rooflens_native::dense_linear``) below :data:`GEMV_ROWS` activation rows, torch's linear from there.

Why: a decode step at batch 1 is ~200 matrix-vector products, and torch's fp32 ones do not stream at the
machine's speed everywhere. On a 2-core AMD EPYC (Zen 3) the linears of a SmolLM2 decode step read 11.1 GB/s
through ``F.linear`` (MKL's sgemm), 11.5 through MKL's packed weights (what inductor's ``freezing`` substitutes)
and 13.6 through oneDNN, where the probe reads 34 GB/s and llama.cpp's F32 decode moves 26; this GEMV reads
20-22 GB/s there (``benchmarks/linear_fp32_cpu.py``), and compiled ``hf`` decodes SmolLM2 at 33.3 tok/s with it
against 18.9 without (eager: 16.0).

How: :class:`DenseGemv` is a torch function mode that sends ``F.linear`` on fp32 CPU tensors to the operator. A
compiled loop calls its graphs with the mode on (:func:`gemv_mode`); dynamo traces the mode, so the graph holds
the operator and guards on the mode, and nothing else changes: no module is modified (the eager ``hf`` engine
sharing the model stays the Hugging Face baseline), and a loop without it compiles torch's linear.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from rooflens.kernels import ops

GEMV_ROWS = 4  # below this many activation rows the GEMV; a flat GEMM re-reads each weight tile per row


class DenseGemv(torch.overrides.TorchFunctionMode):
    """While on, ``F.linear(x, w, b)`` with fp32 ``x`` and ``w`` on the CPU calls ``rooflens_native::dense_linear``
    (which itself takes torch's linear from :data:`GEMV_ROWS` rows); every other call runs as it would."""

    def __init__(self, op: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.op = op

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            # the operator itself picks by rows: a test on a dynamic row count here would guard the graph on it
            if x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32:
                return self.op(x, weight, bias, GEMV_ROWS)
        return func(*args, **kwargs)


def gemv_mode(device: torch.device, wanted: bool) -> tuple[Callable[[], Any], str]:
    """What a compiled loop enters around each call of its graphs (one mode object, so that the graphs' guards hold
    from call to call), and the record's words for what their fp32 linear layers call."""
    if wanted and device.type == "cpu":
        why = ops.prepare_native_operator()
        if why is None:
            mode = DenseGemv(ops.dense_operator())
            return (lambda: mode), f"rooflens AVX2 fp32 GEMV (rooflens_native::dense_linear) below {GEMV_ROWS} rows"
        return contextlib.nullcontext, f"torch's linear (the rooflens GEMV is unavailable: {why})"
    why = "compile_gemv: false" if not wanted else f"the rooflens GEMV runs on a CPU, this is {device.type}"
    return contextlib.nullcontext, f"torch's linear ({why})"
