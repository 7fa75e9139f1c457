#!/usr/bin/env python
"""Does a worker process carry its own speed? A/A trials of ``rooflens ab`` with a fixed number of rounds,
each with two fresh worker processes, and the spread of their estimates against the spread the rounds predict.

    python benchmarks/ab_process_effect.py --trials 8 --rounds 12 --out results/ab-process [--env THP_MEM_ALLOC_ENABLE=1]

Within a trial, ab's verdict takes the paired rounds as independent: the standard error of a cell's change is
the rounds' spread over their count. If each worker process has a fixed offset of its own (its memory layout,
the pages its weights landed on), the changes of A/A trials scatter more than that standard error says, and
a test at alpha 0.01 flags A/A cells far more often than 1 %. Printed per cell: the trials' changes, their
standard deviation, the mean standard error within a trial, and the process offset's standard deviation that
the difference implies (sqrt((var(change) - mean(se^2)) / 2), one offset per side). Nothing else may compute
on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

from rooflens.results.ab_verdict import EFFICIENCY, hodges_lehmann, paired_logs, round_medians
from rooflens.results.store import load_records

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "ci-ab.yaml"


def one_trial(exp: Path, args, out: Path, env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Per cell: the A/A change (Hodges-Lehmann of the round log ratios) and its standard error within the trial."""
    cmd = [sys.executable, "-m", "rooflens.cli", "ab", "--configs", str(exp), "--configs", str(exp)]
    cmd += ["--metric", "decode_tok_s", "--rounds", str(args.rounds), "--max-rounds", str(args.rounds)]
    cmd += ["--allow-inconclusive", "--results", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (out / "ab.log").write_text(done.stdout + done.stderr)
    sides: dict[str, dict] = defaultdict(dict)
    for r in load_records(out):
        side = r.environment.get("placement", {}).get("ab", {}).get("side")  # "base" or "head"
        sides[r.cell.engine_label][side] = r
    cells = {}
    for label, pair in sides.items():
        if set(pair) != {"base", "head"} or any(r.status != "ok" for r in pair.values()):
            continue
        a, b = (round_medians(pair[side], "decode_tok_s") for side in ("base", "head"))
        logs = paired_logs(a, b, "higher")
        if len(logs) >= 3:
            se = statistics.stdev(logs) * math.sqrt(EFFICIENCY / len(logs))
            cells[label] = (hodges_lehmann(logs), se)
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--engines", default="", help="comma-separated labels to keep (default: all of ci-ab.yaml)")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the workers (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("results/ab-process"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    experiment = yaml.safe_load(EXPERIMENT.read_text())
    if args.engines:
        keep = set(args.engines.split(","))
        experiment["engines"] = [e for e in experiment["engines"] if (e.get("label") or e["name"]) in keep]
    exp = args.out / "experiment.yaml"
    exp.write_text(yaml.safe_dump(experiment))
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.env))
    changes: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t in range(args.trials):
        started = time.time()
        cells = one_trial(exp, args, args.out / f"aa-{t}", env)
        for label, c in cells.items():
            changes[label].append(c)
        shown = ", ".join(f"{k} {math.expm1(c):+.1%} (se {se:.1%})" for k, (c, se) in cells.items())
        print(f"A/A {t} ({time.time() - started:.0f} s): {shown}", flush=True)
    print(f"\n{args.trials} trials x {args.rounds} rounds, workers' env {args.env or 'as is'}")
    for label, cs in changes.items():
        if len(cs) < 3:
            continue
        sd = statistics.stdev(c for c, _ in cs)
        se2 = statistics.mean(se**2 for _, se in cs)
        offset = math.sqrt(max(sd**2 - se2, 0.0) / 2)
        print(
            f"  {label:<14} changes sd {sd:.1%}, within-trial se {math.sqrt(se2):.1%} (ratio {sd / math.sqrt(se2):.2f}); "
            f"implied process offset sd {offset:.1%}"
        )


if __name__ == "__main__":
    main()
