#!/usr/bin/env python
"""Time rooflens's Triton low-bit dequant-matmul against ``torch.nn.functional.linear`` in fp16.

Shapes are Llama-2-7B's linear layers (hidden 4096, intermediate 11008, 32 heads of 128, MHA):
q/k/v/o ``4096x4096``, fused qkv ``12288x4096``, gate/up ``11008x4096``, down ``4096x11008`` (``N x K``),
at ``M`` = 1 (decode GEMV), 4 and 16 (flat GEMM).

Method (CUDA only): random weights quantized with :func:`rooflens.kernels.quantize`; warm-up calls (these
also run Triton's autotuning); then, by default, one CUDA graph that calls the op once per copy of the
weights — enough copies (>= ``--rotate-mb`` MiB in total) that every call streams its weight from HBM
rather than from the 50 MB L2 — is replayed ``--reps`` times, each replay timed with ``torch.cuda.Event``;
the per-call time is the median replay time / copies.  ``--no-graph`` times eager calls instead (then CPU
launch overhead, ~10-20 us per Triton launch, is part of the number).  GB/s = weight bytes / time, with
weight bytes = ``QuantizedWeight.storage_bytes`` (packed codes + fp16 scales + zeros) for the kernel and
``N*K*2`` for fp16.  Activations and outputs are not counted (<0.1% of the bytes at M <= 16).

On a machine without CUDA it says so and exits 0; ``--smoke`` then runs a tiny correctness check of the
kernel in the Triton CPU interpreter instead.

    python benchmarks/kernel_lowbit.py --bits 4 8 --m 1 4 16 --group-size 128
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

import torch

LLAMA2_7B_SHAPES = [  # (name, N = out features, K = in features)
    ("q/k/v/o_proj", 4096, 4096),
    ("qkv_fused", 12288, 4096),
    ("gate/up_proj", 11008, 4096),
    ("down_proj", 4096, 11008),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, nargs="+", default=[4, 8, 3, 2])
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--asymmetric", action="store_true", help="scale + zero point (default: symmetric)")
    p.add_argument("--m", type=int, nargs="+", default=[1, 4, 16], help="rows of x (batch * new tokens)")
    p.add_argument("--reps", type=int, default=50, help="timed replays (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--split-k", default="auto", help="'auto' (launcher heuristic) or an int")
    p.add_argument("--no-autotune", action="store_true", help="use the fixed CUDA_DEFAULT_CONFIG")
    p.add_argument("--no-graph", action="store_true", help="time eager calls instead of a CUDA graph")
    p.add_argument("--rotate-mb", type=float, default=256.0,
                   help="total weight bytes cycled through per timed pass (defeats L2 reuse)")
    p.add_argument("--shapes", nargs="+", default=None, help="subset of shape names to run")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    p.add_argument("--smoke", action="store_true", help="without CUDA: tiny interpreter correctness check")
    return p.parse_args(argv)


def _median_ms(fn, reps: int, warmup: int, use_graph: bool) -> float:
    """Median wall time (ms) of ``fn()`` on the current stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    if use_graph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # graph-capture warm-up on a side stream, as recommended
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        run = graph.replay
        run()
    else:
        run = fn
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run_cuda(args) -> list[dict]:
    from rooflens.kernels import dequantize, quantize
    from rooflens.kernels.triton_lowbit import lowbit_linear

    dev = torch.device("cuda")
    dtype = torch.float16
    split_k = None if args.split_k == "auto" else int(args.split_k)
    use_graph = not args.no_graph
    shapes = [s for s in LLAMA2_7B_SHAPES if args.shapes is None or s[0] in args.shapes]
    props = torch.cuda.get_device_properties(dev)
    print(f"device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
          f"group_size={args.group_size}, {'asymmetric' if args.asymmetric else 'symmetric'}, "
          f"split_k={args.split_k}, autotune={not args.no_autotune}, "
          f"timing={'cuda-graph' if use_graph else 'eager'} median of {args.reps}, "
          f"rotating >= {args.rotate_mb:g} MiB of weights per pass")
    rows = []
    torch.manual_seed(0)
    for name, n, k in shapes:
        dense_bytes = n * k * 2
        n_dense = max(2, math.ceil(args.rotate_mb * 2**20 / dense_bytes))
        w_dense = [torch.randn(n, k, device=dev, dtype=dtype) * 0.02 for _ in range(n_dense)]
        for m in args.m:
            x = torch.randn(m, k, device=dev, dtype=dtype)

            def dense_pass():
                for w in w_dense:
                    torch.nn.functional.linear(x, w)

            t_dense = _median_ms(dense_pass, args.reps, args.warmup, use_graph) / n_dense
            for bits in args.bits:
                qws = []
                qw0 = quantize(w_dense[0], bits, args.group_size, not args.asymmetric)
                n_q = max(2, math.ceil(args.rotate_mb * 2**20 / qw0.storage_bytes))
                qws = [qw0] + [qw0.__class__(qw0.packed.clone(), qw0.scales.clone(),
                                             None if qw0.zeros is None else qw0.zeros.clone(),
                                             qw0.bits, qw0.group_size, qw0.symmetric, qw0.shape)
                               for _ in range(n_q - 1)]
                kw = dict(split_k=split_k, autotune=not args.no_autotune)
                got = lowbit_linear(x, qw0, **kw)
                ref = x.float() @ dequantize(qw0).T
                rel = ((got.float() - ref).norm() / ref.norm()).item()

                def lowbit_pass():
                    for q in qws:
                        lowbit_linear(x, q, **kw)

                t_q = _median_ms(lowbit_pass, args.reps, args.warmup, use_graph) / n_q
                row = dict(
                    shape=name, N=n, K=k, M=m, bits=bits, group_size=args.group_size,
                    symmetric=not args.asymmetric, bits_per_weight=qw0.bits_per_weight,
                    fp16_us=t_dense * 1e3, lowbit_us=t_q * 1e3,
                    fp16_GBps=dense_bytes / (t_dense * 1e-3) / 1e9,
                    lowbit_GBps=qw0.storage_bytes / (t_q * 1e-3) / 1e9,
                    speedup=t_dense / t_q, rel_err_vs_reference=rel,
                )
                rows.append(row)
                print(f"{name:>13} N={n:>5} K={k:>5} M={m:>2} {bits}b ({row['bits_per_weight']:.3f} b/w): "
                      f"fp16 {row['fp16_us']:8.1f} us {row['fp16_GBps']:7.0f} GB/s | lowbit "
                      f"{row['lowbit_us']:8.1f} us {row['lowbit_GBps']:7.0f} GB/s | x{row['speedup']:.2f} "
                      f"| rel err {rel:.1e}", flush=True)
                del qws
        del w_dense
        torch.cuda.empty_cache()
    print_table(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    head = ["shape", "N", "K", "M", "bits", "b/w", "fp16 us", "lowbit us", "speedup", "fp16 GB/s", "lowbit GB/s"]
    body = [[r["shape"], r["N"], r["K"], r["M"], r["bits"], f"{r['bits_per_weight']:.3f}", f"{r['fp16_us']:.1f}",
             f"{r['lowbit_us']:.1f}", f"{r['speedup']:.2f}", f"{r['fp16_GBps']:.0f}", f"{r['lowbit_GBps']:.0f}"]
            for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = " | ".join(h.rjust(w) for h, w in zip(head, widths))
    print("\n" + line + "\n" + "-" * len(line))
    for b in body:
        print(" | ".join(str(c).rjust(w) for c, w in zip(b, widths)))


def smoke_interpreter() -> int:
    os.environ["TRITON_INTERPRET"] = "1"  # before the (lazy) kernel decoration
    try:
        from rooflens.kernels.triton_lowbit import lowbit_linear
        import triton  # noqa: F401
    except Exception as exc:
        print(f"smoke check skipped: triton not importable ({exc!r})")
        return 0
    from rooflens.kernels import quantize, reference_linear

    torch.manual_seed(0)
    worst = 0.0
    for bits in (8, 4, 3, 2):
        qw = quantize(torch.randn(40, 128), bits, 32, symmetric=bits % 2 == 0)
        for m in (1, 5):
            x = torch.randn(m, 128)
            got, ref = lowbit_linear(x, qw), reference_linear(x, qw)
            rel = ((got - ref).norm() / ref.norm()).item()
            worst = max(worst, rel)
            print(f"interpreter smoke: bits={bits} M={m} N=40 K=128 rel err {rel:.1e}")
    ok = worst < 1e-5
    print("interpreter smoke check " + ("passed" if ok else f"FAILED (worst rel err {worst:.1e})"))
    return 0 if ok else 1


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("kernel_lowbit benchmark needs a CUDA GPU (none found); nothing timed."
              + ("" if args.smoke else " Use --smoke for a CPU interpreter correctness check."))
        return smoke_interpreter() if args.smoke else 0
    rows = run_cuda(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
