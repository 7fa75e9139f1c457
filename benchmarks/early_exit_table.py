"""The early-exit Pareto table of a run: per cell, decode speed, speedup, agreement, layers run and the
oracle bound, plus the time split that explains the speed.

    python benchmarks/early_exit_table.py results/early-exit-smollm2-cpu/<run id>

Every figure is read from the records (``rooflens run`` measured them); nothing is computed here but
ratios the records already define.
"""

from __future__ import annotations

import sys

from rooflens.results.store import load_records

PHASES = ("draft", "layers", "predictors", "exit_head", "final_head", "kv_fill")


def _stat(r, name, fmt="{:.2f}"):
    s = r.engine_stats.get(name)
    return "-" if s is None or isinstance(s.value, (str, list)) else fmt.format(s.value)


def table(folder: str) -> str:
    records = [r for r in load_records(folder) if r.status == "ok"]
    base = next((r for r in records if r.cell.engine_label == r.experiment.get("baseline")), None)
    base_tps = base.metrics["decode_tok_s"].median if base else None
    head = (
        "| cell | decode tok/s | speedup | agreement | first divergence | layers/token | exit rate | exit precision "
        "| oracle layers | oracle bound (analytic / measured) | " + " | ".join(f"{p} %" for p in PHASES) + " |"
    )
    lines = [head, "|" + "---|" * (10 + len(PHASES))]
    for r in sorted(records, key=lambda r: r.cell.engine_label):
        tps = r.metrics["decode_tok_s"].median
        q = r.quality
        agree = f"{q.agreement.value:.3f}" if q and q.agreement else "-"
        first = f"{q.first_divergence.value:.0f}" if q and q.first_divergence else "-"
        split = [_stat(r, f"time_{p}_fraction", "{:.1%}").removesuffix("%") for p in PHASES]
        lines.append(
            f"| {r.cell.engine_label} | {tps:.2f} | {tps / base_tps:.3f} | {agree} | {first} | "
            f"{_stat(r, 'layers_executed_per_token')} | {_stat(r, 'exit_rate')} | {_stat(r, 'audit_exit_precision')} | "
            f"{_stat(r, 'oracle_mean_layers')} | {_stat(r, 'oracle_speedup_bound', '{:.3f}')} / {_stat(r, 'oracle_speedup_bound_measured', '{:.3f}')} | "
            + " | ".join(split)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(table(sys.argv[1]))
