"""The log-log roofline chart: ceilings (datasheet dashed, measured solid), ridge points, points and moves."""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from rooflens.reports.moves import REASON_SOURCES, Move, phase_moves  # noqa: E402
from rooflens.results.record import Record  # noqa: E402
from rooflens.roofline.whatif import WhatIf  # noqa: E402

COLORS = plt.get_cmap("tab10").colors
MANY_COLORS = plt.get_cmap("tab20").colors  # more than ten engines: tab10 would repeat colours in one panel
MARKERS = {"prefill": "s", "decode": "o"}
MAX_PANELS = 6  # zoomed panels (workload x batch cells with arrows); past this the figure gets too tall


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


def _palette(series: list[str]) -> dict[str, tuple]:
    colors = COLORS if len(series) <= len(COLORS) else MANY_COLORS
    return {s: colors[i % len(colors)] for i, s in enumerate(series)}


def _x_range(roofs: list[Roof], points: list[Point]) -> tuple[float, float]:
    xs = [p.intensity for p in points] + [r.peak / r.bandwidth for r in roofs]
    return min([*xs, 1.0]) / 4, max([*xs, 10.0]) * 4


def _draw_roofs(ax: Axes, roofs: list[Roof], x_lo: float, x_hi: float, labels: bool = True) -> None:
    for roof in roofs:
        ridge = roof.peak / roof.bandwidth
        style = "-" if roof.measured else "--"
        color = "black" if roof.measured else "dimgray"
        ax.plot([x_lo, ridge, x_hi], [x_lo * roof.bandwidth, roof.peak, roof.peak], style, color=color, lw=1.4)
        if labels:
            ax.annotate(
                f"{roof.label}: {roof.peak / 1e12:.3g} TFLOP/s, {roof.bandwidth / 1e9:.4g} GB/s (ridge {ridge:.3g})",
                (x_hi, roof.peak),
                ha="right",
                va="bottom",
                fontsize=7,
                color=color,
            )
        ax.plot([ridge], [roof.peak], "o", color=color, ms=3)


def _draw_points(ax: Axes, points: list[Point], colors: dict[str, tuple]) -> None:
    for p in points:
        ax.scatter(
            p.intensity,
            p.flops,
            marker=MARKERS.get(p.phase, "o"),
            color=colors[p.series],
            s=45,
            zorder=3,
            edgecolor="black",
            linewidth=0.4,
        )
        ax.annotate(p.label, (p.intensity, p.flops), xytext=(4, 3), textcoords="offset points", fontsize=7)


def _draw_moves(ax: Axes, moves: list[Move], colors: dict[str, tuple]) -> None:
    """An arrow from the baseline's point to each engine's (the annotation's xytext is the start, xy the end)."""
    for m in moves:
        ax.annotate(
            "",
            xy=m.end,
            xytext=m.start,
            arrowprops={
                "arrowstyle": "-|>",
                "color": colors[m.engine],
                "lw": 1.3,
                "shrinkA": 4,
                "shrinkB": 5,
                "mutation_scale": 11,
                "alpha": 0.85,
            },
            zorder=2,
        )


def _finish_axes(ax: Axes, x_lo: float, x_hi: float, ys: list[float], title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    if ys:
        ax.set_ylim(min(ys) / 10, max(ys) * 3)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("performance (FLOP/s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    _plain_log_ticks(ax)


def _style_handles(roofs: list[Roof]) -> list:
    handles = [plt.Line2D([], [], ls="", marker=m, color="gray", label=ph) for ph, m in MARKERS.items()]
    if any(not r.measured for r in roofs):
        handles.append(plt.Line2D([], [], ls="--", color="dimgray", label="datasheet ceiling"))
    if any(r.measured for r in roofs):
        handles.append(plt.Line2D([], [], ls="-", color="black", label="measured ceiling"))
    return handles


def panel(ax: Axes, roofs: list[Roof], points: list[Point], colors: dict[str, tuple], title: str) -> None:
    """Roofs, points (coloured by series) and log axes on one panel."""
    x_lo, x_hi = _x_range(roofs, points)
    _draw_roofs(ax, roofs, x_lo, x_hi)
    _draw_points(ax, points, colors)
    _finish_axes(ax, x_lo, x_hi, [p.flops for p in points] + [r.peak for r in roofs], title)


def palette(series: list[str]) -> dict[str, tuple]:
    """A colour per series, distinct up to 20."""
    return _palette(series)


def draw(roofs: list[Roof], points: list[Point], title: str, note: str = "") -> Figure:
    """One roofline panel with every point (the what-if chart of `rooflens roofline --png`)."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    series = list(dict.fromkeys(p.series for p in points))
    colors = _palette(series)
    panel(ax, roofs, points, colors, title)
    handles = [plt.Line2D([], [], ls="", marker="o", color=colors[s], label=s) for s in series]
    handles += [
        *(plt.Line2D([], [], ls="", marker=m, color="gray", label=ph) for ph, m in MARKERS.items()),
        plt.Line2D([], [], ls="--", color="dimgray", label="datasheet ceiling"),
        plt.Line2D([], [], ls="-", color="black", label="measured ceiling"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    if note:
        ax.text(0.01, 0.99, note, transform=ax.transAxes, fontsize=7, va="top", color="dimgray")
    fig.tight_layout()
    return fig


def what_if_chart(result: WhatIf, title: str) -> Figure:
    """The bound-limited positions of a what-if's projections under the roof of its ceilings."""
    c, profile = result.ceilings, result.profile
    if c is None or profile is None:
        raise ValueError(f"no ceilings to draw ({result.why})")
    points = [
        Point(ph.intensity, ph.flops / ph.time_at_roofline(p.bandwidth, p.peak_flops), f"{w}-bit", ph.phase, f"b{b}")
        for b, w, p in result.projections
        for ph in (p.prefill, p.decode)
    ]
    return draw([Roof(f"{c.source} {profile.name}", c.bandwidth, c.peak_flops, c.source == "measured")], points, title)


def roofs_of(records: list[Record]) -> list[Roof]:
    seen: dict[tuple, Roof] = {}
    for r in records:
        for c in r.roofline.ceilings if r.roofline else []:
            key = (c.source, c.dtype, c.ref)
            seen.setdefault(
                key, Roof(f"{c.source} {c.dtype}", c.bandwidth.value, c.peak_flops.value, c.source == "measured")
            )
    return list(seen.values())


def _points_of(records: list[Record]) -> dict[tuple[str, int], list[Point]]:
    """Each workload x batch cell's points (one per phase per engine), labelled with the batch size."""
    cells: dict[tuple[str, int], list[Point]] = {}
    for r in records:
        if r.status != "ok" or r.roofline is None:
            continue
        for pos in (r.roofline.prefill, r.roofline.decode):
            if pos is not None and pos.intensity.value and pos.achieved_flops.value:
                cells.setdefault((r.cell.workload, r.cell.batch_size), []).append(
                    Point(
                        pos.intensity.value,
                        pos.achieved_flops.value,
                        r.cell.engine_label,
                        pos.phase,
                        f"b{r.cell.batch_size}",
                    )
                )
    return cells


def _plain_log_ticks(ax: Axes) -> None:
    """Log ticks as plain text (1, 2, 5, 1e12): the report draws with math text off, so no $10^{k}$."""

    def fmt(value: float, _pos: int) -> str:
        return f"{value:g}".replace("e+", "e")

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(fmt))
        axis.set_minor_formatter(NullFormatter())


def _zoom(points: list[Point], margin: float = 2.5) -> tuple[tuple[float, float], tuple[float, float]]:
    """Limits around ``points`` spanning as many decades on x as on y: a constant-bandwidth line stays at 45 degrees."""
    xs, ys = [p.intensity for p in points], [p.flops for p in points]
    x_lo, x_hi, y_lo, y_hi = min(xs) / margin, max(xs) * margin, min(ys) / margin, max(ys) * margin
    span = max(x_hi / x_lo, y_hi / y_lo)
    x_mid, y_mid = math.sqrt(x_lo * x_hi), math.sqrt(y_lo * y_hi)
    half = math.sqrt(span)
    return (x_mid / half, x_mid * half), (y_mid / half, y_mid * half)


def _overview(ax: Axes, roofs: list[Roof], points: list[Point], colors: dict[str, tuple], note: str) -> None:
    x_lo, x_hi = _x_range(roofs, points)
    _draw_roofs(ax, roofs, x_lo, x_hi)
    _draw_points(ax, points, colors)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=s) for s, c in colors.items()]
    ax.legend(handles=handles + _style_handles(roofs), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _finish_axes(
        ax,
        x_lo,
        x_hi,
        [p.flops for p in points] + [r.peak for r in roofs],
        "every run, both phases (square: prefill, circle: decode), labelled with the batch size",
    )
    if note:
        ax.text(0.01, 0.99, note, transform=ax.transAxes, fontsize=7, va="top", color="dimgray")


def _moves_panel(
    ax: Axes, roofs: list[Roof], points: list[Point], moves: list[Move], colors: dict[str, tuple], title: str
) -> None:
    """The cell's decode points, zoomed, with an arrow from the baseline to each engine and the reasons beside."""
    decode = [p for p in points if p.phase == "decode"]
    (x_lo, x_hi), (y_lo, y_hi) = _zoom(decode)
    _draw_roofs(ax, roofs, x_lo, x_hi, labels=False)
    _draw_moves(ax, moves, colors)
    numbers = {s: i + 1 for i, s in enumerate(colors)}
    _draw_points(ax, [Point(p.intensity, p.flops, p.series, p.phase, str(numbers[p.series])) for p in decode], colors)
    why = {m.engine: m.label() for m in moves}
    why.update({m.baseline: f"{m.baseline} (baseline)" for m in moves})
    engines = list(dict.fromkeys(p.series for p in decode))
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=colors[e], label=f"{numbers[e]} {why.get(e, e)}") for e in engines
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _finish_axes(ax, x_lo, x_hi, [], title)
    ax.set_ylim(y_lo, y_hi)


def records_chart(records: list[Record]) -> Figure:
    """Every run on the roofline (first panel), then one zoomed panel per workload x batch with an arrow from
    the baseline's decode point to each other engine's, its legend saying why the point moved."""
    cells = _points_of(records)
    roofs = roofs_of(records)
    models = sorted({r.model.label for r in records if r.model})
    title = f"roofline: {', '.join(models)} (achieved = analytic FLOPs / measured time)"
    note = (
        ""
        if roofs
        else "no ceilings: the hardware profile has no datasheet numbers and no probe was found (rooflens hw probe)"
    )
    if not cells:
        return draw(roofs, [], title, note or "no successful run with a roofline position")
    colors = _palette(list(dict.fromkeys(r.cell.engine_label for r in records if r.status == "ok")))
    moves = phase_moves(records, "decode")
    with_moves = [k for k in cells if any((m.workload, m.batch) == k for m in moves)]
    shown = with_moves[:MAX_PANELS]
    fig = plt.figure(figsize=(13, 5.2 + 4.4 * len(shown)), layout="constrained")
    grid = fig.add_gridspec(1 + len(shown), 1, height_ratios=[5.2] + [4.4] * len(shown))
    _overview(fig.add_subplot(grid[0]), roofs, [p for ps in cells.values() for p in ps], colors, note)
    for i, key in enumerate(shown):
        here = [m for m in moves if (m.workload, m.batch) == key]
        title_i = f"{key[0]}, batch {key[1]}: where each engine moved the baseline's decode step"
        _moves_panel(fig.add_subplot(grid[1 + i]), roofs, cells[key], here, colors, title_i)
    notes = []
    if shown:
        notes.append("arrows: the baseline's decode point -> each engine's (" + REASON_SOURCES + ")")
    if len(with_moves) > len(shown):
        notes.append(f"{len(with_moves) - len(shown)} more workload x batch cell(s) not drawn (see the summary table)")
    fig.suptitle("\n".join([title, *notes]), fontsize=9)
    return fig
