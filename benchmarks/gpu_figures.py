"""The figures of a GPU check (benchmarks/gpu_check.sh), from the records of a run folder: per cell, decode speed,
the bandwidth its decode moves against each ceiling in use (probed first), the speedup over the baseline engine,
tokens per joule (NVML) and where a decode step's time goes (the attribution's three biggest parts).

    python benchmarks/gpu_figures.py results/gpu-check/7b
"""

from __future__ import annotations

import sys

from rooflens.results.store import load_records


def _value(q) -> float | None:
    return None if q is None else q.value


def _pct(q) -> str:
    v = _value(q)
    return "-" if v is None else f"{100 * v:.0f}%"


def _biggest(record, n: int = 3) -> str:
    att = record.attribution
    if att is None or att.reason is not None:
        return att.reason if att is not None else "-"
    decode = next((p for p in att.phases if p.phase == "decode"), None)
    if decode is None:
        return "-"
    rows = sorted(decode.rows, key=lambda r: r.share, reverse=True)[:n]
    return ", ".join(f"{r.name} {100 * r.share:.0f}%" for r in rows)


def main(folder: str) -> None:
    records = [r for r in load_records(folder) if r.cell is not None]
    base = {r.cell.batch_size: r for r in records if r.status == "ok" and r.cell.engine_label == "hf"}
    print(f"{folder}: {len(records)} records")
    for r in records:
        label, batch = r.cell.engine_label, r.cell.batch_size
        if r.status != "ok":
            why = r.reason.message if r.reason else r.status
            print(f"  {label:<14} b{batch}  {r.status}: {why[:160]}")
            continue
        tok_s = r.metrics["decode_tok_s"].median
        ref = base.get(batch)
        speedup = f"{tok_s / ref.metrics['decode_tok_s'].median:.2f}x" if ref is not None else "-"
        pos = r.roofline.decode if r.roofline is not None else None
        gbs = _value(pos.achieved_bandwidth) if pos is not None else None
        eff = " ".join(f"{src} {_pct(q)}" for src, q in (pos.efficiency.items() if pos else []))
        tpj = _value(r.energy.tokens_per_joule) if r.energy is not None else None
        energy = f"{tpj:.2f} tok/J" if tpj is not None else (r.energy.reason or "-") if r.energy else "-"
        print(
            f"  {label:<14} b{batch}  decode {tok_s:8.1f} tok/s ({speedup} hf)  "
            f"{(gbs or 0) / 1e9:7.1f} GB/s  of roof: {eff or '-'}  {energy}"
        )
        print(f"  {'':<14}      decode step: {_biggest(r)}")


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["results/gpu-check/7b"]:
        main(arg)
