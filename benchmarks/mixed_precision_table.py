"""The PMPD table of a run: decode speed against hf and against uniform quantization at the top rung, mean
decode bits, agreement, ROUGE-L and switch step, per engine (averaged over the run's prompts).

    python benchmarks/mixed_precision_table.py results/mixed-precision-smollm2-cpu/<run id> [--top uniform-8]

Every figure is read from the records (``rooflens run`` measured them).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from rooflens.results.store import load_records


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(folder: str, top: str) -> str:
    """One row per engine label, averaged over the run's workloads (prompts); speedups are ratios of those means."""
    records = [r for r in load_records(folder) if r.status == "ok"]
    by_label: dict[str, list] = defaultdict(list)
    for r in records:
        by_label[r.cell.engine_label].append(r)
    baseline = records[0].experiment.get("baseline") if records else None

    def stat(rs, name):
        return _mean(
            [
                r.engine_stats[name].value
                for r in rs
                if name in r.engine_stats and isinstance(r.engine_stats[name].value, (int, float))
            ]
        )

    rows = {}
    for label, rs in by_label.items():
        rows[label] = {
            "n": len(rs),
            "tps": _mean([r.metrics["decode_tok_s"].median for r in rs]),
            "agree": _mean([r.quality.agreement.value for r in rs if r.quality and r.quality.agreement]),
            "rouge": _mean([r.quality.rouge_l.value for r in rs if r.quality and r.quality.rouge_l]),
            "bits": stat(rs, "mean_decode_bits"),
            "switch": stat(rs, "mean_first_switch_step"),
        }
    lines = [
        f"| cell | prompts | decode tok/s | speedup vs hf | speedup vs {top} | mean decode bits | agreement | ROUGE-L | first switch step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base_tps = rows.get(baseline, {}).get("tps")
    top_tps = rows.get(top, {}).get("tps")
    for label, row in sorted(rows.items(), key=lambda kv: -(kv[1]["tps"] or 0)):
        lines.append(
            f"| {label} | {row['n']} | {_fmt(row['tps'], '{:.2f}')} | {_fmt(row['tps'] / base_tps if base_tps else None)} | "
            f"{_fmt(row['tps'] / top_tps if top_tps else None)} | {_fmt(row['bits'], '{:.2f}')} | {_fmt(row['agree'])} | "
            f"{_fmt(row['rouge'])} | {_fmt(row['switch'], '{:.1f}')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--top", default="uniform-8", help="label of the uniform cell at the top rung")
    args = ap.parse_args()
    print(table(args.folder, args.top))
