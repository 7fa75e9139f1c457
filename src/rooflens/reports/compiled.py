"""Eager and compiled side by side: how much of a technique's speedup survives once framework overhead is gone.

A technique measured both ways (the same engine and options but ``compile``) is compared with the baseline
measured both ways: its speedup over eager ``hf`` when both run eager, and over compiled ``hf`` when both run
compiled. A technique that saves bytes is under-credited while the baseline is overhead-bound, and one that adds
small operators is over-charged; the compiled pair is the answer that transfers to a fast runtime.
"""

from __future__ import annotations

import json
from typing import Any

from rooflens.results.record import Record

COMPILE_KEYS = ("compile", "compile_mode", "cache")  # a compiled loop brings its own static cache


def technique_key(r: Record) -> tuple[str, str, str, int]:
    """What a cell is apart from compilation (and the KV cache it needs): engine, other options, workload, batch."""
    opts = {k: v for k, v in (r.cell.engine_options or {}).items() if k not in COMPILE_KEYS}
    return (r.cell.engine, json.dumps(opts, sort_keys=True, default=str), r.cell.workload, r.cell.batch_size)


def compiled(r: Record) -> bool:
    return bool((r.cell.engine_options or {}).get("compile"))


def _decode(r: Record) -> float:
    return r.metrics["decode_tok_s"].median


def pairs(ok: list[Record]) -> dict[tuple[str, str, str, int], dict[bool, Record]]:
    """Per technique (and workload and batch), its eager and its compiled record, where both were measured."""
    both: dict[tuple[str, str, str, int], dict[bool, Record]] = {}
    for r in ok:
        side = both.setdefault(technique_key(r), {})
        seen = side.get(compiled(r))
        if seen is None or "cache" in (seen.cell.engine_options or {}):  # the plain eager engine over its variants
            side[compiled(r)] = r
    return {k: v for k, v in both.items() if len(v) == 2}


def _baseline_pair(found: dict[Any, dict[bool, Record]], r: Record) -> dict[bool, Record] | None:
    """The baseline engine's eager and compiled records in the cell of ``r`` (plain ``hf``: no options but compile)."""
    for (engine, opts, workload, batch), pair in found.items():
        if engine == "hf" and workload == r.cell.workload and batch == r.cell.batch_size:
            if not json.loads(opts):
                return pair
    return None


def compile_sentences(ok: list[Record]) -> list[str]:
    """One sentence for the baseline (compiled over eager) and one per technique (its speedup both ways)."""
    found = pairs(ok)
    out = []
    for key, pair in sorted(found.items(), key=lambda kv: (kv[0][3], kv[0][2], kv[0][0], kv[0][1])):
        eager, comp = pair[False], pair[True]
        where = f"batch {key[3]} on {key[2]}"
        base = _baseline_pair(found, eager)
        if base is None:
            continue
        if base is pair:
            out.append(
                f"Compiled, {comp.cell.engine_label} decodes at {_decode(comp):.1f} tok/s, "
                f"{_decode(comp) / _decode(eager):.2f}x its eager {eager.cell.engine_label} ({where})."
            )
            continue
        s_eager = _decode(eager) / _decode(base[False])
        s_comp = _decode(comp) / _decode(base[True])
        out.append(
            f"{eager.cell.engine_label}'s speedup over the baseline is {s_eager:.2f}x eager and {s_comp:.2f}x compiled "
            f"({comp.cell.engine_label} over {base[True].cell.engine_label}, {where}): "
            f"{_survival(s_eager, s_comp)} once framework overhead is gone."
        )
    return out


def _survival(eager: float, comp: float) -> str:
    if eager <= 1.0:
        return "no speedup to keep eager; compiled it is " + ("faster" if comp > 1.0 else "not faster either")
    kept = (comp - 1.0) / (eager - 1.0)
    return f"{max(kept, 0.0):.0%} of the gain survives"
