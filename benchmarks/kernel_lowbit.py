#!/usr/bin/env python
"""Time rooflens's low-bit linear paths (GEMV, flat GEMM, dense) against ``torch.nn.functional.linear`` in fp16.

Shapes are Llama-2-7B's linear layers (hidden 4096, intermediate 11008, 32 heads of 128, MHA):
q/k/v/o ``4096x4096``, fused qkv ``12288x4096``, gate/up ``11008x4096``, down ``4096x11008`` (``N x K``),
at ``M`` = 1, 4, 8, 16 (decode: batch or gamma + 1 rows).  Kinds (one row each per ``(M, N, K)``):

* ``fp16``  — ``F.linear`` with a dense fp16 weight (cuBLAS), the baseline;
* ``gemv``, ``flat``, ``dense`` — :func:`rooflens.kernels.triton_lowbit.lowbit_linear` forced onto that
  path; ``*`` marks the one :func:`rooflens.kernels.dispatch.choose_path` picks (defaults, or the crossovers
  measured by ``--calibrate``, which runs :func:`rooflens.kernels.dispatch.calibrate` first).

Method (CUDA only, :func:`rooflens.kernels.dispatch.time_ms`): random weights (quantized with
:func:`rooflens.kernels.quantize`); warm-up calls (these also run Triton's autotuning); then one CUDA graph
that calls the op once per copy of the weights — enough copies (>= ``--rotate-mb`` MiB in total) that every
call streams its weight from HBM rather than from L2 — replayed ``--reps`` times, each replay timed with
``torch.cuda.Event``; per-call time = median replay time / copies.  ``--no-graph`` times eager calls
(then CPU launch overhead, ~10-20 us per Triton launch, is part of the number).  GB/s = the bytes a call
must move / time: ``N*K*2`` for fp16, ``QuantizedWeight.storage_bytes`` (packed codes + fp16 scales + zeros)
for gemv/flat, plus the dense fp16 weight written and read back for dense (activations and outputs are
<0.1% at M <= 16 and not counted; gemv at M > 1 re-reads the weight per row, partly from L2).  ``% copy``
relates GB/s to the copy bandwidth of ``rooflens hw probe`` when a probe of this GPU is saved.

On a machine without CUDA it runs the CPU mode instead
(``benchmarks/kernel_lowbit_cpu.py``: rooflens's CPU kernel against fp32/bf16 ``F.linear`` and the library
kernels, on SmolLM2 and Llama-2-7B shapes; its own flags follow ``--``), and ``--smoke`` checks every
Triton path against the torch reference in the Triton CPU interpreter.

    python benchmarks/kernel_lowbit.py --bits 4 8 --m 1 4 8 16 --group-size 128 [--calibrate]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from functools import lru_cache
from typing import Optional

import torch

LLAMA2_7B_SHAPES = [  # (name, N = out features, K = in features)
    ("q/k/v/o_proj", 4096, 4096),
    ("qkv_fused", 12288, 4096),
    ("gate/up_proj", 11008, 4096),
    ("down_proj", 4096, 11008),
]
LOWBIT_KINDS = ("gemv", "flat", "dense")  # triton_lowbit.PATHS; imported late: --smoke sets TRITON_INTERPRET first


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, nargs="+", default=[4, 8, 3, 2])
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--asymmetric", action="store_true", help="scale + zero point (default: symmetric)")
    p.add_argument("--m", type=int, nargs="+", default=[1, 4, 8, 16], help="rows of x (batch * new tokens)")
    p.add_argument(
        "--kinds",
        nargs="+",
        default=list(LOWBIT_KINDS),
        choices=LOWBIT_KINDS,
        help="low-bit paths to time (fp16 F.linear is always timed)",
    )
    p.add_argument("--reps", type=int, default=50, help="timed replays (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--split-k", default="auto", help="'auto' (launcher heuristic) or an int (gemv/flat)")
    p.add_argument("--no-autotune", action="store_true", help="use the fixed CUDA_DEFAULT_CONFIGS")
    p.add_argument("--no-graph", action="store_true", help="time eager calls instead of a CUDA graph")
    p.add_argument(
        "--rotate-mb",
        type=float,
        default=256.0,
        help="total weight bytes cycled through per timed pass (defeats L2 reuse)",
    )
    p.add_argument("--shapes", nargs="+", default=None, help="subset of shape names to run")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="first measure and cache the gemv/flat/dense crossovers of these shapes (first --bits)",
    )
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    p.add_argument("--smoke", action="store_true", help="without CUDA: tiny interpreter correctness check")
    return p.parse_args(argv)


@lru_cache(maxsize=1)  # the main loop asks for one weight set many times in a row
def _weights(
    n: int, k: int, bits: Optional[int], group_size: int, symmetric: bool, rotate_mb: float, device: str
) -> list:
    """Copies of one random ``[N, K]`` weight, ``rotate_mb`` MiB in all: fp16 tensors (``bits=None``) or
    :class:`QuantizedWeight`."""
    from rooflens.kernels import quantize
    from rooflens.kernels.dispatch import weight_copies

    w = torch.randn(n, k, device=device, generator=torch.Generator(device=device).manual_seed(n * k)) * 0.02
    if bits is not None:
        return weight_copies(quantize(w, bits, group_size, symmetric), rotate_mb * 2**20)
    w = w.half()
    return [w] + [w.clone() for _ in range(max(2, math.ceil(rotate_mb * 2**20 / (n * k * 2))) - 1)]


def time_row(kind: str, m: int, n: int, k: int, args, bits: Optional[int] = None, device: str = "cuda") -> dict:
    """Time one ``(kind, M, N, K)`` row on ``device`` (``kind`` "fp16" or a low-bit path, at ``bits``)."""
    from rooflens.kernels import reference_linear
    from rooflens.kernels.dispatch import time_ms
    from rooflens.kernels.triton_lowbit import lowbit_linear

    weights = _weights(
        n, k, None if kind == "fp16" else bits, args.group_size, not args.asymmetric, args.rotate_mb, device
    )
    x = torch.randn(m, k, device=device, generator=torch.Generator(device=device).manual_seed(m)).half()
    if kind == "fp16":

        def call(w):
            return torch.nn.functional.linear(x, w)

        nbytes, bpw, rel = n * k * 2, 16.0, None
    else:
        split_k = None if args.split_k == "auto" else int(args.split_k)

        def call(q):
            return lowbit_linear(x, q, path=kind, split_k=split_k, autotune=not args.no_autotune)

        q0 = weights[0]
        nbytes = q0.storage_bytes + (2 * n * k * 2 if kind == "dense" else 0)
        ref = reference_linear(x.float(), q0)
        bpw, rel = q0.bits_per_weight, ((call(q0).float() - ref).norm() / ref.norm()).item()

    def one_pass():
        for w in weights:
            call(w)

    us = time_ms(one_pass, args.reps, args.warmup, graph=not args.no_graph) * 1e3 / len(weights)
    return dict(
        kind=kind,
        N=n,
        K=k,
        M=m,
        bits=bits if kind != "fp16" else 16,
        bits_per_weight=bpw,
        us=us,
        GBps=nbytes / (us * 1e-6) / 1e9,
        rel_err_vs_reference=rel,
    )


def _copy_bandwidth(device_name: str) -> Optional[float]:
    """Bytes/s of the saved `rooflens hw probe` copy for this GPU, or None (says why)."""
    from rooflens.roofline.probe import load_probe

    try:
        probe = load_probe(device_name)
    except ValueError as exc:
        print(f"ignoring the saved probe: {exc}")
        return None
    if probe is None:
        print(f"no `rooflens hw probe` saved for {device_name}: GB/s is not related to a measured copy bandwidth")
        return None
    print(f"copy bandwidth ({device_name}, probed {probe.measured_at}): {probe.bandwidth_si() / 1e9:.0f} GB/s")
    return probe.bandwidth_si()


def run_cuda(args) -> list[dict]:
    from rooflens.kernels.dispatch import calibrate, decide

    dev = torch.device("cuda", torch.cuda.current_device())
    shapes = [s for s in LLAMA2_7B_SHAPES if args.shapes is None or s[0] in args.shapes]
    props = torch.cuda.get_device_properties(dev)
    print(
        f"device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
        f"group_size={args.group_size}, {'asymmetric' if args.asymmetric else 'symmetric'}, "
        f"split_k={args.split_k}, autotune={not args.no_autotune}, "
        f"timing={'cuda-graph' if not args.no_graph else 'eager'} median of {args.reps}, "
        f"rotating >= {args.rotate_mb:g} MiB of weights per pass"
    )
    copy_bw = _copy_bandwidth(props.name)
    if args.calibrate:
        print("calibrating the gemv / flat / dense crossovers (autotunes every path at every M: minutes) ...")
        table = calibrate(
            dev,
            [(n, k) for _, n, k in shapes],
            bits=args.bits[0],
            group_size=args.group_size,
            symmetric=not args.asymmetric,
            reps=args.reps,
            warmup=args.warmup,
            rotate_mb=args.rotate_mb,
        )
        for key, c in sorted(table.buckets.items()):
            print(
                f"  bucket {key}: gemv for M <= {c.gemv_max_m}, flat for M <= {c.flat_max_m}, dense above "
                f"({c.source}, {c.format})"
            )
    rows = []
    for name, n, k in shapes:
        base = {m: time_row("fp16", m, n, k, args) for m in args.m}
        rows += [_report(dict(shape=name, **base[m]), base[m], copy_bw) for m in args.m]
        for bits in args.bits:
            for m in args.m:
                decision = decide(m, n, k, dev)
                for kind in args.kinds:
                    row = dict(
                        shape=name,
                        **time_row(kind, m, n, k, args, bits),
                        chosen=kind == decision.path,
                        choice_source=decision.source,
                    )
                    rows.append(_report(row, base[m], copy_bw))
        _weights.cache_clear()
        torch.cuda.empty_cache()
    print_table(rows)
    return rows


def _report(row: dict, fp16_row: dict, copy_bw: Optional[float]) -> dict:
    """Add the speedup over fp16 and the fraction of the probed copy bandwidth; print the row."""
    row.update(
        speedup_vs_fp16=fp16_row["us"] / row["us"],
        copy_bw_frac=None if copy_bw is None else row["GBps"] * 1e9 / copy_bw,
    )
    err = "" if row["rel_err_vs_reference"] is None else f" | rel err {row['rel_err_vs_reference']:.1e}"
    print(
        f"{row['shape']:>13} N={row['N']:>5} K={row['K']:>5} M={row['M']:>2} {row['kind']:>5}"
        f"{'*' if row.get('chosen') else ' '} {row['bits']:>2}b: {row['us']:8.1f} us {row['GBps']:6.0f} GB/s "
        f"x{row['speedup_vs_fp16']:.2f}{err}",
        flush=True,
    )
    return row


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    head = ["shape", "N", "K", "M", "kind", "bits", "b/w", "us", "x fp16", "GB/s", "% copy", "rel err"]
    body = [
        [
            r["shape"],
            r["N"],
            r["K"],
            r["M"],
            r["kind"] + ("*" if r.get("chosen") else ""),
            r["bits"],
            f"{r['bits_per_weight']:.3f}",
            f"{r['us']:.1f}",
            f"{r['speedup_vs_fp16']:.2f}",
            f"{r['GBps']:.0f}",
            "-" if r["copy_bw_frac"] is None else f"{100 * r['copy_bw_frac']:.0f}",
            "-" if r["rel_err_vs_reference"] is None else f"{r['rel_err_vs_reference']:.1e}",
        ]
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    line = " | ".join(h.rjust(w) for h, w in zip(head, widths))
    print("\n" + line + "\n" + "-" * len(line))
    for b in body:
        print(" | ".join(str(c).rjust(w) for c, w in zip(b, widths)))


def smoke_interpreter() -> int:
    os.environ["TRITON_INTERPRET"] = "1"  # before the (lazy) kernel decoration
    try:
        import triton  # noqa: F401

        from rooflens.kernels.triton_lowbit import lowbit_linear
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
            for path in LOWBIT_KINDS:
                got, ref = lowbit_linear(x, qw, path=path), reference_linear(x, qw)
                rel = ((got - ref).norm() / ref.norm()).item()
                worst = max(worst, rel)
                print(f"interpreter smoke: {path:>5} bits={bits} M={m} N=40 K=128 rel err {rel:.1e}")
    ok = worst < 1e-5
    print("interpreter smoke check " + ("passed" if ok else f"FAILED (worst rel err {worst:.1e})"))
    return 0 if ok else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, cpu_argv = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parse_args(own)
    if args.smoke:
        return smoke_interpreter()
    if not torch.cuda.is_available():
        print("no CUDA GPU: running the CPU mode (benchmarks/kernel_lowbit_cpu.py)")
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import kernel_lowbit_cpu

        return kernel_lowbit_cpu.main(cpu_argv)
    rows = run_cuda(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
