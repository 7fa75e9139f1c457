"""Per-engine distributions from engine statistics: why a technique is as fast as it is.

Speculative decoding: how many draft tokens each verify pass accepted. Early exit: how many layers
each decode step ran. Mixed precision: the weight precision at each decode step. A panel appears
only for the engines whose records carry the statistic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rooflens.results.record import Record  # noqa: E402

COLORS = plt.get_cmap("tab10").colors


@dataclass(frozen=True)
class Series:
    """One cell's statistic: a list indexed by count (histograms) or decode step (bits)."""

    label: str  # the cell: workload and batch
    values: list[float]


@dataclass(frozen=True)
class PanelSpec:
    stat: str
    title: str
    draw: Callable[[Axes, list[Series]], None]


def _shares(values: list[float]) -> list[float]:
    total = sum(values)
    return [v / total for v in values] if total else [0.0 for _ in values]


def _mean_index(values: list[float]) -> float | None:
    total = sum(values)
    return sum(i * v for i, v in enumerate(values)) / total if total else None


def _histogram(xlabel: str, ylabel: str, mean_name: str) -> Callable[[Axes, list[Series]], None]:
    """Bars of each cell's share of events per count, side by side, with the mean in the legend."""

    def draw(ax: Axes, series: list[Series]) -> None:
        width = 0.8 / len(series)
        for j, s in enumerate(series):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(s.values))]
            mean = _mean_index(s.values)
            label = f"{s.label}: {mean_name} {mean:.2f}, n={sum(s.values):g}" if mean is not None else s.label
            ax.bar(xs, _shares(s.values), width, color=COLORS[j % len(COLORS)], label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)

    return draw


def _by_step(ax: Axes, series: list[Series]) -> None:
    for j, s in enumerate(series):
        ax.step(range(len(s.values)), s.values, where="post", color=COLORS[j % len(COLORS)], label=s.label)
    ax.set_xlabel("decode step (0 = the first token after the prefill's)")
    ax.set_ylabel("weight bits, mean over generations")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


PANELS = (
    PanelSpec(
        "accepted_length_hist",
        "accepted draft tokens per verify pass",
        _histogram("draft tokens accepted in one verify pass", "share of verify passes", "mean"),
    ),
    PanelSpec(
        "layers_run_hist",
        "decoder layers run per decode step",
        _histogram("layers run", "share of decode steps", "mean layers"),
    ),
    PanelSpec("bits_by_step", "weight precision over the decode steps", _by_step),
)


def _series(records: list[Record], stat: str) -> dict[str, list[Series]]:
    """Per engine label, each ok cell's list-valued ``stat`` (cells without it are left out)."""
    out: dict[str, list[Series]] = {}
    for r in records:
        s = r.engine_stats.get(stat) if r.status == "ok" else None
        if s is None or not isinstance(s.value, list) or not s.value:
            continue
        label = f"{r.cell.workload} b{r.cell.batch_size}"
        out.setdefault(r.cell.engine_label, []).append(Series(label, [float(v) for v in s.value]))
    return out


def panels(records: list[Record]) -> list[tuple[PanelSpec, str, list[Series]]]:
    """The panels to draw: (what, engine label, its cells' series), in PANELS order then engine order."""
    return [(spec, engine, series) for spec in PANELS for engine, series in _series(records, spec.stat).items()]


def engine_panels(records: list[Record]) -> Figure | None:
    """One panel per engine and statistic; None when no record carries any of them."""
    todo = panels(records)
    if not todo:
        return None
    cols = min(3, len(todo))
    rows = (len(todo) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (spec, engine, series) in zip(axes.flat, todo):
        spec.draw(ax, series)
        ax.set_title(f"{engine}: {spec.title}\n(measured: engine statistic {spec.stat})", fontsize=9)
    for ax in list(axes.flat)[len(todo) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig
