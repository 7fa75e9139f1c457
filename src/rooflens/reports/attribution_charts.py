"""The attribution's two figures: where a pass's time goes (a stacked bar per engine, batch and phase, in the
families of :mod:`rooflens.reports.attribution`), and each operator class of the decode pass on the roofline."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rooflens.reports.attribution import (  # noqa: E402
    FAMILIES,
    family_of,
    family_shares,
    first_per_engine,
    phase_of,
)
from rooflens.reports.roofline_chart import Point, palette, panel, roofs_of  # noqa: E402
from rooflens.results.record import Record  # noqa: E402

MAX_PANELS = 6
FAMILY_COLORS = dict(zip(FAMILIES, plt.get_cmap("tab10").colors))
FAMILY_COLORS["outside operators"] = (0.75, 0.75, 0.75)
ENGINE_COLORS = plt.get_cmap("tab20b").colors  # no grey: outside operators is grey


def _attributed(records: list[Record]) -> list[Record]:
    return [r for r in records if r.status == "ok" and r.attribution is not None and r.attribution.phases]


def _color(family: str, engine_families: list[str]) -> tuple:
    if family in FAMILY_COLORS:
        return FAMILY_COLORS[family]
    return ENGINE_COLORS[engine_families.index(family) % len(ENGINE_COLORS)]


def time_split(records: list[Record]) -> Figure | None:
    """Per phase, one horizontal bar per engine and cell: the pass's time in families, adding up to 100 %."""
    recs = _attributed(records)
    if not recs:
        return None
    phases = [p for p in ("prefill", "decode") if any(phase_of(r, p) for r in recs)]
    bars = {
        p: [(f"{r.cell.engine_label} {r.cell.workload} b{r.cell.batch_size}", phase_of(r, p)) for r in recs]
        for p in phases
    }
    engine_families = sorted(
        {
            f
            for r in recs
            for p in r.attribution.phases
            for row in p.rows
            if (f := family_of(row)).startswith("engine: ")
        }
    )  # type: ignore[union-attr]
    order = [*(f for f in FAMILIES if f != "outside operators"), *engine_families, "outside operators"]
    height = max(2.5, 0.32 * max(len(b) for b in bars.values()) + 1.6)
    fig, axes = plt.subplots(1, len(phases), figsize=(6.5 * len(phases), height), squeeze=False)
    for ax, phase in zip(axes[0], phases):
        rows = [(label, p) for label, p in bars[phase] if p is not None]
        for i, (_, p) in enumerate(rows):
            left = 0.0
            shares = family_shares(p)
            for family in order:
                share = shares.get(family, 0.0)
                if share <= 0:
                    continue
                ax.barh(
                    i, share * 100, left=left * 100, color=_color(family, engine_families), edgecolor="white", lw=0.5
                )
                if share >= 0.08:
                    ax.text((left + share / 2) * 100, i, f"{share:.0%}", ha="center", va="center", fontsize=7)
                left += share
        ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel(f"share of a {phase} pass (%)")
        ax.set_title(f"{phase}: where a pass's time goes", fontsize=10)
    present = [f for f in order if any(family_shares(p).get(f, 0) > 0 for r in recs for p in r.attribution.phases)]  # type: ignore[union-attr]
    handles = [plt.Rectangle((0, 0), 1, 1, color=_color(f, engine_families)) for f in present]
    fig.legend(handles, present, loc="lower center", ncol=min(5, len(present)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(present) // 5), 1, 1))
    return fig


def operator_rooflines(records: list[Record]) -> Figure | None:
    """Per engine (its smallest batch), each modelled class of the decode pass at its analytic intensity and
    achieved FLOP/s, under the run's ceilings."""
    panels = first_per_engine(_attributed(records))[:MAX_PANELS]
    roofs = roofs_of(panels)
    if not panels or not roofs:
        return None
    families = [f for f in FAMILIES if f != "outside operators"]
    colors = {**palette(families), **{f: FAMILY_COLORS[f] for f in families}}
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax, r in zip(axes.flat, panels):
        phase = phase_of(r, "decode")
        assert phase is not None
        points = [
            Point(row.intensity, row.achieved_flops.value, family_of(row), "decode", row.name)
            for row in phase.rows
            if row.intensity and row.achieved_flops and row.achieved_flops.value and family_of(row) in colors
        ]
        if not points:
            ax.set_axis_off()
            continue
        panel(ax, roofs, points, colors, f"{r.cell.engine_label} decode, batch {r.cell.batch_size}: per operator class")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    shown = [
        f for f in families if any(f == family_of(row) for r in panels for p in r.attribution.phases for row in p.rows)
    ]  # type: ignore[union-attr]
    handles = [plt.Line2D([], [], ls="", marker="o", color=colors[f], label=f) for f in shown]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)) or 1, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
