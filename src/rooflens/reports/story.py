"""A few plain sentences drawn from a run's records: what a reader should take away from the table.

Every sentence quotes figures from the records (medians of measured repetitions, the roofline
position computed from them) and names the engine, batch and workload it is about; nothing is
said about a figure that is missing, except why it is missing. A cell whose measurement is invalid
(:class:`~rooflens.results.record.Validity`) is never ranked (fastest, closest to the roofline, best
trade), nor is a speedup over an invalid baseline cell: one sentence names the invalid cells and why.
"""

from __future__ import annotations

from collections import defaultdict

from rooflens.reports.attribution import attribution_sentences
from rooflens.reports.compiled import compile_sentences
from rooflens.reports.pareto import pareto_frontier
from rooflens.results.derived import baseline_of, speedup
from rooflens.results.record import Record


def _where(r: Record, several_workloads: bool) -> str:
    return f"batch {r.cell.batch_size}" + (f" on {r.cell.workload}" if several_workloads else "")


def _decode(r: Record) -> float:
    return r.metrics["decode_tok_s"].median


def _quality(r: Record) -> tuple[float, str] | None:
    """ROUGE-L against the baseline's text when there is one, else greedy token agreement."""
    q = r.quality
    if q is None:
        return None
    if q.rouge_l is not None and isinstance(q.rouge_l.value, (int, float)):
        return float(q.rouge_l.value), f"ROUGE-L {q.rouge_l.value:.2f}"
    if q.agreement is not None and isinstance(q.agreement.value, (int, float)):
        return float(q.agreement.value), f"token agreement {100 * q.agreement.value:.0f}%"
    return None


def _ranked_speedup(r: Record, records: list[Record]) -> float | None:
    """The speedup over the run's baseline cell, None where there is none or its measurement is invalid."""
    base = baseline_of(r, records)
    return None if base is None or base.validity.invalid else speedup(r, records)


def _fastest(ok: list[Record], records: list[Record], several: bool) -> list[str]:
    by_cell: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for r in ok:
        if r.cell.engine_label != r.experiment.get("baseline") and _ranked_speedup(r, records) is not None:
            by_cell[(r.cell.workload, r.cell.batch_size)].append(r)
    skipped = {(r.cell.workload, r.cell.batch_size) for r in records if r.validity.invalid}
    out = []
    for cell, rs in sorted(by_cell.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        among = " (of the valid cells)" if cell in skipped else ""
        best = max(rs, key=lambda r: speedup(r, records) or 0.0)
        base = baseline_of(best, records)
        s = speedup(best, records) or 0.0
        if base is None:
            continue
        noise = max(best.metrics["decode_tok_s"].cv, base.metrics["decode_tok_s"].cv)
        if abs(s - 1.0) <= noise:
            out.append(
                f"No clear winner at {_where(best, several)}{among}: the best, {best.cell.engine_label}, is {s:.2f}x the "
                f"baseline {base.cell.engine_label} ({_decode(base):.1f} decode tok/s), within the run-to-run "
                f"spread (CV {100 * noise:.0f}%)."
            )
        elif s > 1.0:
            out.append(
                f"Fastest at {_where(best, several)}{among}: {best.cell.engine_label}, {_decode(best):.1f} decode tok/s, "
                f"{s:.2f}x the baseline {base.cell.engine_label} ({_decode(base):.1f} tok/s)."
            )
        else:
            out.append(
                f"No engine{among} beat the baseline {base.cell.engine_label} at {_where(best, several)} "
                f"({_decode(base):.1f} decode tok/s); {best.cell.engine_label} came closest at {s:.2f}x."
            )
    return out


def _closest_to_roofline(ok: list[Record], several: bool) -> list[str]:
    placed = [(r, r.roofline.decode.efficiency_pct()) for r in ok if r.roofline and r.roofline.decode]
    placed = [(r, eff) for r, eff in placed if eff is not None]
    if not placed:
        return []
    r, eff = max(placed, key=lambda p: p[1])
    decode = r.roofline.decode  # type: ignore[union-attr]
    source = "measured" if "measured" in decode.efficiency else "datasheet"
    bound = decode.bound.get(source, "")
    return [
        f"Closest to the roofline: {r.cell.engine_label} at {_where(r, several)}, decoding at {eff:.0f}% of the "
        f"rate the {source} ceilings allow ({bound}-bound at {decode.intensity.value:.2g} FLOP/byte)."
    ]


def _best_trade(ok: list[Record], records: list[Record], several: bool) -> list[str]:
    """Among engines faster than their baseline, the most quality kept (the top of the Pareto frontier)."""
    faster = [
        r for r in ok if r.cell.engine_label != r.experiment.get("baseline") and (_ranked_speedup(r, records) or 0) > 1
    ]
    scored = [(r, q) for r in faster if (q := _quality(r)) is not None]
    if not scored:
        return []
    points = [(speedup(r, records) or 0.0, q[0]) for r, q in scored]
    frontier = pareto_frontier(points)
    i = max(frontier, key=lambda j: (points[j][1], points[j][0]))
    r, (_, text) = scored[i]
    out = [
        f"Best quality for its speed: {r.cell.engine_label} at {_where(r, several)}, {points[i][0]:.2f}x with "
        f"{text} against the baseline's output."
    ]
    lossy = [scored[j] for j in frontier if j != i and points[j][0] > points[i][0]]
    if lossy:
        fast, (_, ftext) = max(lossy, key=lambda p: speedup(p[0], records) or 0.0)
        out.append(
            f"Going faster costs quality: {fast.cell.engine_label} reaches {speedup(fast, records):.2f}x with {ftext}."
        )
    return out


def _invalid(records: list[Record], several: bool) -> list[str]:
    """The cells measured but not vouched for, with their reasons (they are left out of every ranking)."""
    cells = [
        f"{r.cell.engine_label} at {_where(r, several)} ({'; '.join(x.message for x in r.validity.reasons)})"
        for r in records
        if r.validity.invalid
    ]
    if not cells:
        return []
    return [f"Not ranked, measurement invalid: {', '.join(cells)}."]


def _not_measured(records: list[Record], several: bool) -> list[str]:
    """Cells that did not measure, grouped by their reason; tokens/J and roofline positions that are missing."""
    by_reason: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in records:
        if r.status != "ok" and r.reason is not None:
            first = r.reason.message.splitlines()[0][:200] if r.reason.message else r.reason.type
            by_reason[(r.status, first)].append(f"{r.cell.engine_label} at {_where(r, several)}")
    out = [
        f"{', '.join(cells)} {'is' if len(cells) == 1 else 'are'} {status}: {why}"
        for (status, why), cells in by_reason.items()
    ]
    energy = sorted({r.energy.reason for r in records if r.energy and not r.energy.measured and r.energy.reason})
    out += [f"Tokens per joule were not measured: {reason}" for reason in energy]
    roofline = set()
    for r in records:
        if r.status != "ok" or r.roofline is None:
            continue
        if r.roofline.reason:
            roofline.add(r.roofline.reason)
        elif not r.roofline.ceilings:
            hw = r.hardware_profile.get("display_name") or r.hardware_profile.get("name", "this device")
            if (r.roofline.probe_note or "").startswith("the automatic probe was refused"):
                roofline.add(
                    f"{hw} has no datasheet ceilings and the automatic probe was refused as noisy (each "
                    "record's roofline.probe_note says why; `rooflens hw probe` on a quiet machine measures them)"
                )
            else:
                roofline.add(
                    f"{hw} has no datasheet ceilings and no probe yet (`rooflens hw probe` measures them, "
                    "or `probe: auto` in the experiment)"
                )
    out += [f"No roofline efficiency: {reason}" for reason in sorted(roofline)]
    return [s if s.endswith(".") else s + "." for s in out]


def _adaptations(records: list[Record]) -> list[str]:
    """Engines whose runs depart from their paper's reference setup: adaptations, never reproductions."""
    out, seen = [], set()
    for r in records:
        f = r.fidelity
        if r.status != "ok" or f is None or r.cell.engine_label in seen:
            continue
        seen.add(r.cell.engine_label)
        if f.reproduces:
            out.append(f"{r.cell.engine_label} runs {f.technique}'s reference setup (the model and data aside).")
            continue
        n = len(f.deviations)
        out.append(
            f"{r.cell.engine_label} is an adaptation of {f.technique}, not a reproduction: {n} "
            f"deviation{'s' if n > 1 else ''} from its reference setup ({', '.join(d.setting for d in f.deviations)}; "
            "each with the paper's setting in the record's fidelity)."
        )
    return out


def story(records: list[Record]) -> list[str]:
    """The summary's closing sentences: fastest engine, closest to the roofline, best quality for its
    speed (among valid cells), where each engine's decode time goes and the analytic model's error there, how much
    of each technique's speedup survives compilation, the engines that adapt a paper's technique, the invalid cells,
    and what could not be measured here and why."""
    ok = [r for r in records if r.status == "ok" and "decode_tok_s" in r.metrics and not r.validity.invalid]
    several = len({r.cell.workload for r in records}) > 1
    return [
        *_fastest(ok, records, several),
        *_closest_to_roofline(ok, several),
        *_best_trade(ok, records, several),
        *attribution_sentences(ok),
        *compile_sentences(ok),
        *_adaptations(records),
        *_invalid(records, several),
        *_not_measured(records, several),
    ]
