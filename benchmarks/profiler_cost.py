"""What ``torch.profiler`` costs a prefill, measured directly (issue 24): the same forward timed bare, with the
attribution's ranges but no profiler, under the profiler without the ranges, and under both; and one prefill-sized
GEMM of each kind bare and under the profiler. The four ways are interleaved round by round (ABCD, DCBA, ...), so
the machine's drift hits them alike; the medians are printed.

    python benchmarks/profiler_cost.py --dtype bfloat16 --tokens 116 --rounds 15

Run it with nothing else computing on the machine; it says its load before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext

import torch

from rooflens.bench.attribution import _kineto_quiet
from rooflens.bench.attribution.instrument import instrumented
from rooflens.config import ModelSpec
from rooflens.models.loader import load_model


def _profiler():
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU])


def _timed(fn: Callable[[], object], ranges: bool, profiled: bool, model: torch.nn.Module) -> float:
    with ExitStack() as stack:
        if ranges:
            stack.enter_context(instrumented(model, "llama", {}))
        prof = stack.enter_context(_profiler()) if profiled else None
        if prof is not None:
            fn()  # the profiler's first events cost far more (see bench/attribution); not the figure asked for
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    return dt


def _interleaved(ways: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    names, seen = list(ways), {k: [] for k in ways}
    for r in range(rounds):
        for k in names if r % 2 == 0 else reversed(names):
            seen[k].append(ways[k]())
    return {k: statistics.median(v) for k, v in seen.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--tokens", type=int, default=116)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("ROOFLENS_THREADS", "2")))
    dtype = getattr(torch, args.dtype)
    print(f"load before: {os.getloadavg()[0]:.2f}; threads {torch.get_num_threads()}; {args.dtype}")
    model = load_model(ModelSpec(source="builtin", id="smollm2-135m"), torch.device("cpu"), dtype).model
    ids = torch.randint(100, 40000, (1, args.tokens))

    def prefill() -> None:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=True)

    ways = {
        "bare": lambda: _timed(prefill, False, False, model),
        "ranges": lambda: _timed(prefill, True, False, model),
        "profiler": lambda: _timed(prefill, False, True, model),
        "profiler+ranges": lambda: _timed(prefill, True, True, model),
    }
    for _ in range(3):
        prefill()
    with _kineto_quiet() if True else nullcontext():
        got = _interleaved(ways, args.rounds)
    bare = got["bare"]
    print(f"prefill of {args.tokens} tokens, median of {args.rounds}:")
    for k, v in got.items():
        print(f"  {k:16s} {v * 1e3:8.2f} ms  {v / bare - 1:+6.1%}")

    cfg = model.config
    shapes = {
        "q_proj": (cfg.hidden_size, cfg.hidden_size),
        "gate_proj": (cfg.hidden_size, cfg.intermediate_size),
        "down_proj": (cfg.intermediate_size, cfg.hidden_size),
        "lm_head": (cfg.hidden_size, cfg.vocab_size),
    }
    print(f"one GEMM of {args.tokens} rows, median of {args.rounds} (x20 calls each):")
    for name, (k, n) in shapes.items():
        x, w = torch.randn(args.tokens, k, dtype=dtype), torch.randn(n, k, dtype=dtype)

        def gemm(x=x, w=w) -> None:
            for _ in range(20):
                torch.nn.functional.linear(x, w)

        gemm()
        with _kineto_quiet():
            g = _interleaved(
                {
                    "bare": lambda: _timed(gemm, False, False, model),
                    "profiler": lambda: _timed(gemm, False, True, model),
                },
                args.rounds,
            )
        print(
            f"  {name:10s} bare {g['bare'] / 20 * 1e6:9.1f} us  profiled {g['profiler'] / 20 * 1e6:9.1f} us  "
            f"{g['profiler'] / g['bare'] - 1:+6.1%}"
        )
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
