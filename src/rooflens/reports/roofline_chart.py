"""The log-log roofline chart: ceilings (datasheet dashed, measured solid), ridge points, and points."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rooflens.results.record import Record  # noqa: E402

COLORS = plt.get_cmap("tab10").colors
MARKERS = {"prefill": "s", "decode": "o"}


@dataclass(frozen=True)
class Roof:
    label: str
    bandwidth: float  # B/s
    peak: float  # FLOP/s
    measured: bool


@dataclass(frozen=True)
class Point:
    intensity: float  # FLOP/B
    flops: float  # FLOP/s
    series: str  # colour group (engine)
    phase: str  # "prefill" | "decode"
    label: str  # text next to the point (e.g. "b4")


def draw(roofs: list[Roof], points: list[Point], title: str, note: str = "") -> Figure:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs = [p.intensity for p in points] + [r.peak / r.bandwidth for r in roofs]
    x_lo = min([*xs, 1.0]) / 4
    x_hi = max([*xs, 10.0]) * 4
    for i, roof in enumerate(roofs):
        ridge = roof.peak / roof.bandwidth
        style = "-" if roof.measured else "--"
        color = "black" if roof.measured else "dimgray"
        ax.plot([x_lo, ridge, x_hi], [x_lo * roof.bandwidth, roof.peak, roof.peak], style, color=color, lw=1.4)
        ax.annotate(f"{roof.label}: {roof.peak / 1e12:.3g} TFLOP/s, {roof.bandwidth / 1e9:.4g} GB/s (ridge {ridge:.3g})",
                    (x_hi, roof.peak), ha="right", va="bottom", fontsize=7, color=color)  # fmt: skip
        ax.plot([ridge], [roof.peak], "o", color=color, ms=3)
    series = list(dict.fromkeys(p.series for p in points))
    for p in points:
        color = COLORS[series.index(p.series) % len(COLORS)]
        ax.scatter(p.intensity, p.flops, marker=MARKERS.get(p.phase, "o"), color=color, s=45, zorder=3,
                   edgecolor="black", linewidth=0.4)  # fmt: skip
        ax.annotate(p.label, (p.intensity, p.flops), xytext=(4, 3), textcoords="offset points", fontsize=7)
    handles = [plt.Line2D([], [], ls="", marker="o", color=COLORS[i % len(COLORS)], label=s) for i, s in enumerate(series)]
    handles += [plt.Line2D([], [], ls="", marker=m, color="gray", label=ph) for ph, m in MARKERS.items()]
    handles += [plt.Line2D([], [], ls="--", color="dimgray", label="datasheet ceiling"),
                plt.Line2D([], [], ls="-", color="black", label="measured ceiling")]  # fmt: skip
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ys = [p.flops for p in points] + [r.peak for r in roofs]
    if ys:
        ax.set_ylim(min(ys) / 10, max(ys) * 3)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("performance (FLOP/s)")
    ax.set_title(title, fontsize=10)
    if note:
        ax.text(0.01, 0.99, note, transform=ax.transAxes, fontsize=7, va="top", color="dimgray")
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    return fig


def roofs_of(records: list[Record]) -> list[Roof]:
    seen: dict[tuple, Roof] = {}
    for r in records:
        for c in r.roofline.ceilings if r.roofline else []:
            key = (c.source, c.dtype, c.ref)
            seen.setdefault(key, Roof(f"{c.source} {c.dtype}", c.bandwidth.value, c.peak_flops.value, c.source == "measured"))
    return list(seen.values())


def records_chart(records: list[Record]) -> Figure:
    """Every successful run as one point per phase, coloured by engine, labelled with the batch size."""
    points = []
    for r in records:
        if r.status != "ok" or r.roofline is None:
            continue
        for pos in (r.roofline.prefill, r.roofline.decode):
            if pos is not None:
                points.append(Point(pos.intensity.value, pos.achieved_flops.value, r.cell.engine_label, pos.phase,
                                    f"b{r.cell.batch_size}"))  # fmt: skip
    roofs = roofs_of(records)
    note = "" if roofs else "no ceilings: the hardware profile has no datasheet numbers and no probe was found (rooflens hw probe)"
    models = sorted({r.model.label for r in records if r.model})
    return draw(roofs, points, f"roofline: {', '.join(models)} (achieved = analytic FLOPs / measured time)", note)
