"""The two-folder report: the changes of :mod:`rooflens.reports.changes` as HTML and as its markdown twin."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import rooflens
from rooflens.fsutil import write_atomic
from rooflens.reports.changes import Change, ChangeReport
from rooflens.reports.html import jinja_env
from rooflens.results.compare import BOOTSTRAP_DRAWS
from rooflens.text import safe_name

SIGNIFICANT = ("regression", "improvement")


def _number(change: Change, value: float) -> str:
    m = change.metric
    return f"{value * m.scale:.{m.digits}f}"


def _direction(change: Change) -> str:
    """'better' or 'worse' by the metric's good direction; '' when unchanged or not computable."""
    if not change.change:
        return ""
    up = change.change > 0
    return "better" if up == (change.metric.better == "higher") else "worse"


def _p(value: float | None) -> str:
    """A bootstrap p of 0 means no draw went the other way: below one draw's weight, not zero."""
    if value is None:
        return "-"
    return f"<{1 / BOOTSTRAP_DRAWS:.2g}" if value == 0 else f"{value:.3g}"


def rows(report: ChangeReport) -> list[dict[str, Any]]:
    """One display row per cell and metric (the HTML table and the markdown share them)."""
    out = []
    for cell in report.cells:
        for ch in cell.changes:
            unit = f" ({ch.metric.unit})" if ch.metric.unit else ""
            out.append(
                {
                    "cell": cell.cell,
                    "metric": ch.metric.title + unit,
                    "source": ch.source,
                    "base": _number(ch, ch.base),
                    "current": _number(ch, ch.current),
                    "base_value": ch.base * ch.metric.scale,
                    "current_value": ch.current * ch.metric.scale,
                    "change": "-" if ch.change is None else f"{100 * ch.change:+.1f}%",
                    "change_value": "" if ch.change is None else 100 * ch.change,
                    "direction": _direction(ch),
                    "p": _p(ch.p_value),
                    "p_value": "" if ch.p_value is None else ch.p_value,
                    "verdict": ch.verdict,
                    "verdict_class": ch.verdict if ch.verdict in SIGNIFICANT else "",
                    "test": ch.test,
                }
            )
    return out


def render_changes_html(report: ChangeReport, out_dir: Path, name: str) -> Path:
    """Write ``<out_dir>/<name>.html`` atomically; return its path."""
    name = safe_name(name)
    html = (
        jinja_env()
        .get_template("changes.html.j2")
        .render(
            title=name,
            report=report,
            rows=rows(report),
            generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            version=rooflens.__version__,
        )
    )
    path = Path(out_dir) / f"{name}.html"
    write_atomic(path, html)
    return path


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_changes_markdown(report: ChangeReport) -> str:
    """The same tables as GitHub markdown (CI job summaries, pull requests)."""
    lines = [
        f"**rooflens changes**: {_md(report.base.label)} -> {_md(report.current.label)}: {len(report.cells)} matching "
        f"cell(s), {report.count('regression')} significant regression(s), {report.count('improvement')} significant "
        f"improvement(s) (threshold {report.threshold:.0%}, alpha {report.alpha})",
        "",
        "| cell | metric | source | base | current | change | p | verdict |",
        "|:---|:---|:---|---:|---:|---:|---:|:---|",
    ]
    for r in rows(report):
        cells = (r["cell"], r["metric"], r["source"], r["base"], r["current"], r["change"], r["p"], r["verdict"])
        lines.append("| " + " | ".join(_md(str(c)) for c in cells) + " |")
    lines.append("")
    if report.status_changes:
        lines += ["| cell not ok on a side | base | current | reason |", "|:---|:---|:---|:---|"]
        lines += [f"| {_md(s.cell)} | {s.base} | {s.current} | {_md(s.reason)} |" for s in report.status_changes]
        lines.append("")
    if report.only_base:
        lines.append("_only in base: " + ", ".join(report.only_base) + "_")
    if report.only_current:
        lines.append("_only in current: " + ", ".join(report.only_current) + "_")
    lines += [f"_{n}_" for n in report.notes]
    return "\n".join(lines) + "\n"
