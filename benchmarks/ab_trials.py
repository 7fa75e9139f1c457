#!/usr/bin/env python
"""How often does the CI gate flag an injected slowdown, and how often does it flag nothing at all?

    python benchmarks/ab_trials.py --trials 20 --factor 1.111 --out results/ab-trials [--threshold 10%] [--rounds 8]

Each trial is one ``rooflens ab --configs`` at the CI settings of .ci/run (experiments/ci-ab.yaml, decode
speed, the threshold and rounds given here): an A/A trial measures the experiment against itself; an
injected trial measures it against a copy where one engine (each engine in turn, the baseline included) is
wrapped by the test-only ``slowed`` engine (tests/plugins/rooflens_slowdown: every token interval stretched
by ``--factor``; 1.111 is a 10 % lower decode speed). Both sides run the working tree; the plug-in folder is
put first on the workers' path. Prints, per trial, the exit code and the flagged cells, then the tallies.
Nothing else may compute on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "rooflens_slowdown" / "src"
EXPERIMENT = ROOT / "experiments" / "ci-ab.yaml"


def slowed(experiment: dict, label: str, factor: float) -> dict:
    """The experiment with engine ``label`` wrapped by ``slowed`` (same label, so the cells pair)."""
    out = json.loads(json.dumps(experiment))
    for i, engine in enumerate(out["engines"]):
        if (engine.get("label") or engine["name"]) == label:
            inner = {k: v for k, v in engine.items() if k != "label"}
            out["engines"][i] = {"name": "slowed", "label": label, "options": {"engine": inner, "factor": factor}}
    return out


def trial(base: Path, head: Path, args, out: Path) -> tuple[int, list[str]]:
    cmd = [sys.executable, "-m", "rooflens.cli", "ab", "--configs", str(base), "--configs", str(head)]
    cmd += ["--src", str(PLUGIN), "--metric", "decode_tok_s", "--max-regression", args.threshold, "--alpha", args.alpha]
    cmd += ["--rounds", str(args.rounds), "--results", str(out), "--markdown", str(out / "verdict.md")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    verdict = (out / "verdict.md").read_text() if (out / "verdict.md").exists() else done.stdout + done.stderr
    flagged = [line.split("|")[1].strip() for line in verdict.splitlines() if "| regression" in line]
    return done.returncode, flagged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="trials of each kind")
    ap.add_argument("--factor", type=float, default=1 / 0.9)
    ap.add_argument("--threshold", default="10%", help="as .ci/run")
    ap.add_argument("--alpha", default="0.01", help="as .ci/run")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("results/ab-trials"))
    args = ap.parse_args()
    experiment = yaml.safe_load(EXPERIMENT.read_text())
    labels = [e.get("label") or e["name"] for e in experiment["engines"]]
    args.out.mkdir(parents=True, exist_ok=True)
    tally = {"aa_flagged": 0, "injected_caught": 0, "trials": args.trials}
    for t in range(args.trials):
        victim = labels[t % len(labels)]
        head = args.out / f"slowed-{victim}.yaml"
        head.write_text(yaml.safe_dump(slowed(experiment, victim, args.factor)))
        started = time.time()
        code, flagged = trial(EXPERIMENT, EXPERIMENT, args, args.out / f"aa-{t}")
        tally["aa_flagged"] += bool(flagged)
        print(f"A/A {t}: exit {code}, flagged {flagged} ({time.time() - started:.0f} s)", flush=True)
        started = time.time()
        code, flagged = trial(EXPERIMENT, head, args, args.out / f"inj-{t}")
        tally["injected_caught"] += victim in [f.split("/")[0] for f in flagged]
        print(
            f"injected {victim} x{args.factor:.3f} {t}: exit {code}, flagged {flagged} ({time.time() - started:.0f} s)"
        )
    print(json.dumps(tally))
    (args.out / "tally.json").write_text(json.dumps(tally, indent=2))


if __name__ == "__main__":
    main()
