"""Engine statistics as data: each engine keeps one table of what it reports (unit and description per key),
and its ``stats()`` only computes the values. The table is where a reader finds what a record's
``engine_stats`` mean; the values are where a reader finds how they are computed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rooflens.results.stat import EngineStat


@dataclass(frozen=True)
class StatSpec:
    """What one statistic is: its unit and a description, which may hold ``{placeholders}`` that the
    engine fills at run time (the kernel it picked, the layers it skipped)."""

    unit: str = ""
    description: str = ""


def stats_from_table(table: Mapping[str, StatSpec], values: Mapping[str, Any], **fill: Any) -> dict[str, EngineStat]:
    """One :class:`EngineStat` per value that is not ``None``, in the table's order. A value whose key the
    table does not describe is a programming error (every reported number needs its description)."""
    unknown = [k for k in values if k not in table]
    if unknown:
        raise KeyError(f"statistics without a description in the engine's table: {', '.join(unknown)}")
    out: dict[str, EngineStat] = {}
    for key, spec in table.items():
        value = values.get(key)
        if value is None:
            continue
        out[key] = EngineStat(value=value, unit=spec.unit, description=spec.description.format(**fill))
    return out
