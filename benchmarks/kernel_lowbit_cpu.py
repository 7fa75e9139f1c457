#!/usr/bin/env python
"""CPU mode of the low-bit kernel benchmark: rooflens's CPU path against dense and library kernels.

For SmolLM2-135M's and Llama-2-7B's linear shapes (``N x K``) at ``M`` rows of activations, times
``y = x @ W.T`` for: fp32 and bf16 ``F.linear``; rooflens 8/4/3/2-bit through the CPU path ``kernel: auto``
takes (the native AVX2 kernel, :mod:`rooflens.kernels.cpu_native`, where it builds, else torch's int4 kernel;
fp32 activations in and out, as in an fp32 model; the kind's label names the path) and, where the native kernel
runs, the same kernel with int8 activations (``kernel: native_a8``); and, beside them,
the library kernels this machine has: torch's own ``_weight_int8pack_mm`` (per-channel int8) and
``_weight_int4pack_mm_for_cpu`` (g64) called directly with bf16 activations, torchao int8 weight-only and
int8 dynamic, bitsandbytes int8 and nf4.

Method: weights are random; each kind gets enough copies of its weight that one timed pass streams at
least ``--rotate-mb`` MiB (so small matrices are read from memory, not from the last-level cache);
warm-up passes, then the median of ``--reps`` timed passes divided by the copies. GB/s = weight bytes
the kernel reads per call / time (rooflens: ``LowBitLinear.read_bytes`` for that many rows: the native
kernel reads the format as stored, 3-bit codes as 4-bit, and from ``DENSE_FROM_ROWS`` rows also the fp32 weight it
dequantizes; libraries: their storage). Nothing else may run on the machine while it measures.

    python benchmarks/kernel_lowbit_cpu.py --m 1 8 --png reports/kernel_lowbit_cpu.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

SHAPES = [  # (model, name, N = out features, K = in features)
    ("smollm2-135m", "q/o_proj", 576, 576),
    ("smollm2-135m", "k/v_proj", 192, 576),
    ("smollm2-135m", "gate/up_proj", 1536, 576),
    ("smollm2-135m", "down_proj", 576, 1536),
    ("smollm2-135m", "lm_head", 49152, 576),
    ("llama-2-7b", "q/k/v/o_proj", 4096, 4096),
    ("llama-2-7b", "gate/up_proj", 11008, 4096),
    ("llama-2-7b", "lm_head", 32000, 4096),
]


@dataclass
class Row:
    model: str
    shape: str
    N: int
    K: int
    M: int
    kind: str
    us: float
    read_bytes: int
    GBps: float
    speedup_vs_fp32: float
    rel_err: float | None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--m", type=int, nargs="+", default=[1, 8])
    p.add_argument("--bits", type=int, nargs="+", default=[8, 4, 3, 2])
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "llama-2-7b"])
    p.add_argument("--shapes", nargs="+", default=None, help="subset of shape names (e.g. lm_head)")
    p.add_argument("--no-libraries", action="store_true", help="skip torchao / bitsandbytes / raw torch kernels")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rotate-mb", type=float, default=128.0, help="weight MiB streamed per timed pass")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    p.add_argument("--png", default=None, help="draw the speedups over fp32 F.linear to this PNG")
    return p.parse_args(argv)


def median_s(call: Callable[[], object], reps: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copies_for(read_bytes: int, rotate_mb: float) -> int:
    return max(1, math.ceil(rotate_mb * 2**20 / read_bytes))


# ---------------------------------------------------------------------------- the kinds


def dense(w: torch.Tensor, dtype: torch.dtype):
    wd = w.to(dtype)
    return (lambda x: F.linear(x.to(dtype), wd)), wd.numel() * wd.element_size()


def rooflens_cpu(w: torch.Tensor, bits: int, group: int, kernel: str = "auto"):
    """The layer and its bytes read per call as a function of the rows (the native dense path reads more)."""
    from rooflens.kernels import LowBitLinear, quantize

    layer = LowBitLinear(quantize(w, bits=bits, group_size=group, symmetric=True), kernel=kernel)
    return layer, lambda rows: layer.read_bytes(torch.device("cpu"), torch.float32, rows)


def rooflens_path() -> str:
    from rooflens.kernels import LowBitLinear

    return LowBitLinear.from_linear(torch.nn.Linear(64, 16), bits=4, group_size=32).path(torch.device("cpu"))


def torch_int8pack(w: torch.Tensor):
    scale = w.abs().amax(dim=1) / 127
    q = torch.clamp(torch.round(w / scale[:, None]), -128, 127).to(torch.int8)
    s = scale.to(torch.bfloat16)
    return (lambda x: torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), q, s)), q.numel() + s.numel() * 2


def torch_int4pack(w: torch.Tensor, group: int):
    from rooflens.kernels import quantize
    from rooflens.kernels.cpu_lowbit import plan_for

    plan = plan_for(quantize(w, bits=4, group_size=group, symmetric=True))
    return (
        lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(torch.bfloat16), plan.packed, group, plan.scales_zeros
        )
    ), plan.read_bytes


def library_layer(w: torch.Tensor, backend: str, fmt: str):
    """A quantized nn.Linear as the quantized engine builds it (its backends' own code path)."""
    from torch import nn

    from rooflens.engines.options.quantized import QuantizedOptions
    from rooflens.engines.quant import get_handler, layer_weight_bytes

    holder = nn.Sequential(nn.Linear(w.shape[1], w.shape[0], bias=False))
    holder[0].weight.data.copy_(w)
    o = QuantizedOptions(backend=backend, format=fmt)
    layers = get_handler(backend).quantize(holder, o.spec(), torch.device("cpu"))
    layer = holder[0]
    with torch.no_grad():
        layer(torch.zeros(1, w.shape[1]))  # bitsandbytes repacks at the first call
    return (lambda x: layer(x)), layer_weight_bytes(layer) if layers else 0


def kinds(w: torch.Tensor, args) -> dict[str, Callable[[], tuple[Callable, int | Callable[[int], int]]]]:
    out: dict[str, Callable[[], tuple[Callable, int | Callable[[int], int]]]] = {
        "fp32 F.linear": lambda: dense(w, torch.float32),
        "bf16 F.linear": lambda: dense(w, torch.bfloat16),
    }
    g = args.group_size if w.shape[1] % args.group_size == 0 else 32
    path = rooflens_path()
    for bits in args.bits:
        out[f"rooflens {bits}-bit g{g} ({path})"] = lambda bits=bits: rooflens_cpu(w, bits, g)
        if path == "native":  # the same kernel with int8 activations (kernel: native_a8)
            out[f"rooflens {bits}-bit g{g} (native_a8)"] = lambda bits=bits: rooflens_cpu(w, bits, g, "native_a8")
    if not args.no_libraries:
        out["torch int8pack (per-channel)"] = lambda: torch_int8pack(w)
        out[f"torch int4pack g{g}"] = lambda: torch_int4pack(w, g)
        for backend, fmt in (
            ("torchao", "int8_weight_only"),
            ("torchao", "int8_dynamic"),
            ("bitsandbytes", "int8"),
            ("bitsandbytes", "nf4"),
        ):
            out[f"{backend} {fmt}"] = lambda backend=backend, fmt=fmt: library_layer(w, backend, fmt)
    return out


# ---------------------------------------------------------------------------- the run


@torch.no_grad()
def run(args) -> list[Row]:
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"cpu: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"median of {args.reps} passes over >= {args.rotate_mb:g} MiB of weights"
    )
    rows: list[Row] = []
    gen = torch.Generator().manual_seed(0)
    for model, name, n, k in (
        s for s in SHAPES if s[0] in args.models and (args.shapes is None or s[1] in args.shapes)
    ):
        w = torch.randn(n, k, generator=gen) * 0.02
        for kind, build in kinds(w, args).items():
            try:
                fn, reads = build()
                read_for = reads if callable(reads) else (lambda rows, reads=reads: reads)
                n_copies = copies_for(read_for(1), args.rotate_mb)
                fns = [fn] + [build()[0] for _ in range(n_copies - 1)]
            except Exception as err:  # noqa: BLE001 - a library that cannot run here is reported, not fatal
                print(f"{model:>12} {name:>13} {kind:<28} unavailable: {type(err).__name__}: {str(err)[:80]}")
                continue
            for m in args.m:
                read = read_for(m)
                x = torch.randn(m, k, generator=gen)
                ref = x @ w.T
                out = fn(x).float()
                rel = float((out - ref).norm() / ref.norm())
                t = median_s(lambda: [f(x) for f in fns], args.reps, args.warmup) / len(fns)  # noqa: F821 (del below)
                base = next(
                    (r.us for r in rows if r.N == n and r.K == k and r.M == m and r.kind == "fp32 F.linear"), None
                )
                row = Row(
                    model, name, n, k, m, kind, t * 1e6, read, read / t / 1e9, (base / (t * 1e6)) if base else 1.0, rel
                )
                rows.append(row)
                print(
                    f"{model:>12} {name:>13} M={m:<2} {kind:<28} {row.us:10.1f} us {row.GBps:7.1f} GB/s "
                    f"x{row.speedup_vs_fp32:5.2f}  rel err {rel:.1e}",
                    flush=True,
                )
            del fns
    return rows


def print_table(rows: list[Row]) -> None:
    head = ["model", "shape", "N x K", "M", "kind", "us", "GB/s", "x fp32", "rel err"]
    body = [
        [
            r.model,
            r.shape,
            f"{r.N}x{r.K}",
            r.M,
            r.kind,
            f"{r.us:.1f}",
            f"{r.GBps:.1f}",
            f"{r.speedup_vs_fp32:.2f}",
            "-" if r.rel_err is None else f"{r.rel_err:.1e}",
        ]
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths))
    print("\n" + line + "\n" + "-" * len(line))
    for b in body:
        print(" | ".join(str(c).ljust(w) for c, w in zip(b, widths)))


def draw(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = sorted({r.M for r in rows})
    fig, axes = plt.subplots(1, len(ms), figsize=(8 * len(ms), 6), squeeze=False)
    shapes = list(dict.fromkeys(f"{r.model}\n{r.shape}" for r in rows))
    kinds_ = [k for k in dict.fromkeys(r.kind for r in rows) if k != "fp32 F.linear"]
    width = 0.8 / max(1, len(kinds_))
    colors = plt.get_cmap("tab20").colors
    for ax, m in zip(axes[0], ms):
        for j, kind in enumerate(kinds_):
            xs, ys = [], []
            for r in rows:
                if r.M == m and r.kind == kind:
                    xs.append(shapes.index(f"{r.model}\n{r.shape}") + (j - (len(kinds_) - 1) / 2) * width)
                    ys.append(r.speedup_vs_fp32)
            ax.bar(xs, ys, width, label=kind, color=colors[j % len(colors)])
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(shapes)), shapes, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("speedup over fp32 F.linear (log)")
        ax.set_title(
            f"M = {m}: y = x @ W.T on {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
        )
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"chart: {path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = run(args)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=2)
        print(f"wrote {args.json}")
    if args.png:
        draw(rows, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
