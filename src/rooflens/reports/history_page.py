"""The history page: one trend plot per series with its change points marked, the detected changes as a table
(:mod:`rooflens.results.history`), and their markdown twin for a CI job summary."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

import rooflens
from rooflens.fsutil import write_atomic
from rooflens.reports import plots
from rooflens.reports.html import jinja_env, render_figure
from rooflens.results.history import Series, summary_table
from rooflens.text import safe_name


def trend(series: Series) -> Figure:
    """The series over its runs; each change point a dashed line labelled with the commits around it."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    xs = range(len(series.points))
    ax.plot(xs, [p.value for p in series.points], marker="o", lw=1)
    for c in series.changes:
        a, b = series.points[c.index - 1], series.points[c.index]
        ax.axvline(c.index - 0.5, ls="--", color="tab:red" if c.change < 0 else "tab:green")
        ax.annotate(
            f"{a.commit} -> {b.commit}\n{100 * c.change:+.1f}%", (c.index - 0.5, c.after), fontsize=7, ha="left"
        )
    ax.set_xticks(list(xs), [p.commit for p in series.points], rotation=60, fontsize=6)
    ax.set_ylabel(series.metric)
    ax.set_title(series.name, fontsize=9)
    fig.tight_layout()
    return fig


def render_history_html(
    series: list[Series], runs: int, out_dir: Path, name: str, alpha: float, min_change: float
) -> Path:
    """``<out_dir>/<name>.html`` with the trend of every series; the PNGs beside it in ``<out_dir>/<name>/``."""
    folder = out_dir / safe_name(name)
    figures = []
    for s in series:
        with plt.rc_context(plots.PLAIN_TEXT):
            fig = trend(s)
        file = folder / f"{safe_name(s.name)}.png"
        figures.append({"title": s.name, "data": render_figure(fig, file)})
    html = (
        jinja_env()
        .get_template("history.html.j2")
        .render(
            title=name,
            runs=runs,
            series=series,
            changes=summary_table(series),
            figures=figures,
            alpha=alpha,
            min_change=min_change,
            generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            version=rooflens.__version__,
        )
    )
    path = out_dir / f"{safe_name(name)}.html"
    write_atomic(path, html)
    return path


def render_history_markdown(series: list[Series]) -> str:
    rows = summary_table(series)
    lines = [f"**rooflens history**: {len(rows)} change point(s) in {len(series)} series", ""]
    if rows:
        lines += ["| series | between | before | after | change | p |", "|:---|:---|---:|---:|---:|---:|"]
        lines += [
            f"| {r['series']} | {r['between']} | {r['before']} | {r['after']} | {r['change']} | {r['p']} |"
            for r in rows
        ]
    return "\n".join(lines) + "\n"
