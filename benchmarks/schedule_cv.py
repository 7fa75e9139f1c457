#!/usr/bin/env python
"""How much of a speedup's spread is the machine's drift: the CV of ``speedup:decode_tok_s`` over repeated runs
of one experiment, measured in blocks and interleaved.

    python benchmarks/schedule_cv.py experiments/ci-smoke.yaml --runs 10 --out results/schedule-cv

Runs alternate between the two schedules (blocks, interleaved, blocks, ...), so that a slow drift of the
machine over the whole benchmark reaches both alike. Each run is an ordinary ``rooflens run`` of the
experiment with ``schedule`` overridden; its records stay under ``--out`` (one folder per schedule). Per run
and engine the speedup is :func:`rooflens.results.derived.speedup` (paired rounds where interleaved, the
ratio of medians in blocks); the table gives, per schedule, its mean, standard deviation and CV over the
runs, and the median within-run CV of each engine's own decode tok/s. Nothing else may compute on the
machine meanwhile (the machine lock keeps other rooflens measurements out; other programs are not).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from rooflens.bench.runner import ExperimentRunner
from rooflens.bench.validate import load_experiment
from rooflens.results.derived import speedup

SCHEDULES = ("blocks", "interleaved")


def one_run(exp, schedule: str, out: Path) -> dict[str, dict[str, float]]:
    run = ExperimentRunner(exp.model_copy(update={"schedule": schedule}), results_root=out / schedule).run()
    figures = {}
    for r in run.records:
        if r.status != "ok" or r.cell.engine_label == exp.baseline_label:
            continue
        key = f"{r.cell.engine_label} {r.cell.workload} b{r.cell.batch_size}"
        figures[key] = {"speedup": speedup(r, run.records), "cv": r.metrics["decode_tok_s"].cv}
    return figures


def summary(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": mean, "sd": sd, "cv": sd / mean if mean else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("--runs", type=int, default=10, help="runs per schedule")
    ap.add_argument("--out", type=Path, default=Path("results/schedule-cv"))
    args = ap.parse_args()
    exp = load_experiment(args.experiment)
    runs: dict[str, list[dict]] = {s: [] for s in SCHEDULES}
    started = time.time()
    for i in range(args.runs):
        for schedule in SCHEDULES if i % 2 == 0 else reversed(SCHEDULES):
            load = os.getloadavg()[0]
            figures = one_run(exp, schedule, args.out)
            runs[schedule].append({"load_before": load, "cells": figures})
            print(f"run {i + 1}/{args.runs} {schedule:<11} load {load:.2f}  " + json.dumps(figures), flush=True)
    table = {}
    for schedule, rs in runs.items():
        for cell in rs[0]["cells"]:
            s = [r["cells"][cell]["speedup"] for r in rs if cell in r["cells"]]
            cvs = [r["cells"][cell]["cv"] for r in rs if cell in r["cells"]]
            table[f"{schedule} | {cell}"] = {**summary(s), "median_within_run_cv": statistics.median(cvs)}
    print(f"\n{args.runs} runs per schedule in {time.time() - started:.0f} s")
    print("| schedule | cell | runs | mean speedup | sd | CV of the speedup | median within-run CV of decode tok/s |")
    print("|---|---|---|---|---|---|---|")
    for key, t in table.items():
        schedule, cell = key.split(" | ")
        print(
            f"| {schedule} | {cell} | {t['n']} | {t['mean']:.3f} | {t['sd']:.3f} | {100 * t['cv']:.1f} % "
            f"| {100 * t['median_within_run_cv']:.1f} % |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"runs": runs, "table": table}, indent=2))


if __name__ == "__main__":
    main()
