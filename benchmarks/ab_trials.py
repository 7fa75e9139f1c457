#!/usr/bin/env python
"""How often does the CI gate flag an injected slowdown, and how often does it flag nothing at all?

    python benchmarks/ab_trials.py --trials 20 --out results/ab-trials [--victims all|rotate]

Each trial is one ``rooflens ab --configs`` at the CI settings of .ci/run (experiments/ci-ab.yaml, decode
speed, threshold 5 %, a 10 % slowdown caught 95 % of the time, alpha 0.01, 8-64 rounds): an A/A trial
measures the experiment against itself; an injected trial measures it against a copy where engines are
wrapped by the test-only ``slowed`` engine (tests/plugins/rooflens_slowdown: every token interval stretched
by ``--factor``; 1.111 is a 10 % lower decode speed): every engine at once (``--victims all``; the cells are
measured one after the other, each against its own base, so one trial judges each engine once), or one
engine per trial in turn. Both sides run the working tree; the plug-in folder is put first on the workers'
path. Prints, per trial, the exit code, the flagged cells and each cell's measured change and rounds, then
the tallies. Nothing else may compute on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rooflens.results.store import load_records

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "rooflens_slowdown" / "src"
EXPERIMENT = ROOT / "experiments" / "ci-ab.yaml"


def slowed(experiment: dict, labels: list[str], factor: float) -> dict:
    """The experiment with the engines ``labels`` wrapped by ``slowed`` (same labels, so the cells pair)."""
    out = json.loads(json.dumps(experiment))
    for i, engine in enumerate(out["engines"]):
        if (engine.get("label") or engine["name"]) in labels:
            inner = {k: v for k, v in engine.items() if k != "label"}
            out["engines"][i] = {"name": "slowed", "label": engine.get("label") or engine["name"]}
            out["engines"][i]["options"] = {"engine": inner, "factor": factor}
    return out


def trial(base: Path, head: Path, args, out: Path) -> tuple[int, dict[str, tuple[str, float, int]]]:
    """Exit code, and each cell's verdict, measured change and paired rounds."""
    cmd = [sys.executable, "-m", "rooflens.cli", "ab", "--configs", str(base), "--configs", str(head)]
    cmd += ["--src", str(PLUGIN), "--metric", "decode_tok_s", "--max-regression", args.threshold]
    cmd += ["--detect", args.detect, "--alpha", args.alpha, "--rounds", str(args.rounds)]
    cmd += ["--max-rounds", str(args.max_rounds), "--results", str(out), "--markdown", str(out / "verdict.md")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    (out / "ab.log").write_text(done.stdout + done.stderr)
    rounds = {r.cell.engine_label: len(set(r.repetitions.rounds)) for r in load_records(out) if r.repetitions}
    cells = {}
    for line in (out / "verdict.md").read_text().splitlines() if (out / "verdict.md").exists() else []:
        parts = [x.strip() for x in line.split("|")]
        if len(parts) == 9 and parts[2] == "decode_tok_s":
            label = parts[1].split("/")[0]
            cells[label] = (parts[7].split(" ")[0], float(parts[5].rstrip("%")) / 100, rounds.get(label, 0))
    return done.returncode, cells


def _show(cells: dict[str, tuple[str, float, int]]) -> str:
    return ", ".join(f"{k} {v} {c:+.1%} ({n} rounds)" for k, (v, c, n) in cells.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="trials of each kind")
    ap.add_argument("--factor", type=float, default=1 / 0.9)
    ap.add_argument("--victims", choices=["all", "rotate"], default="all")
    ap.add_argument("--threshold", default="5%", help="as .ci/run")
    ap.add_argument("--detect", default="10%", help="as .ci/run")
    ap.add_argument("--alpha", default="0.01", help="as .ci/run")
    ap.add_argument("--rounds", type=int, default=8, help="as .ci/run")
    ap.add_argument("--max-rounds", type=int, default=64, help="as .ci/run")
    ap.add_argument("--out", type=Path, default=Path("results/ab-trials"))
    args = ap.parse_args()
    experiment = yaml.safe_load(EXPERIMENT.read_text())
    labels = [e.get("label") or e["name"] for e in experiment["engines"]]
    args.out.mkdir(parents=True, exist_ok=True)
    tally: dict = {
        "trials": args.trials,
        "aa_flagged": 0,
        "caught": {k: 0 for k in labels},
        "injected": dict.fromkeys(labels, 0),
    }
    for t in range(args.trials):
        victims = labels if args.victims == "all" else [labels[t % len(labels)]]
        head = args.out / f"slowed-{t}.yaml"
        head.write_text(yaml.safe_dump(slowed(experiment, victims, args.factor)))
        started = time.time()
        code, cells = trial(EXPERIMENT, EXPERIMENT, args, args.out / f"aa-{t}")
        tally["aa_flagged"] += any(v == "regression" for v, _, _ in cells.values())
        print(f"A/A {t}: exit {code} ({time.time() - started:.0f} s): {_show(cells)}", flush=True)
        started = time.time()
        code, cells = trial(EXPERIMENT, head, args, args.out / f"inj-{t}")
        for victim in victims:
            tally["injected"][victim] += 1
            tally["caught"][victim] += cells.get(victim, ("",))[0] == "regression"
        print(
            f"injected x{args.factor:.3f} {t}: exit {code} ({time.time() - started:.0f} s): {_show(cells)}", flush=True
        )
        (args.out / "tally.json").write_text(json.dumps(tally, indent=2))
    print(json.dumps(tally))


if __name__ == "__main__":
    main()
