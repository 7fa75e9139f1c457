"""Terminal tables of the commands that list or compare things: engines, models, compare, training figures.

Each function builds a rich renderable from data and prints nothing: the command prints it. The summary table
of a set of records is :func:`rooflens.reports.summary.summary_table`; the roofline and hardware tables are in
:mod:`rooflens.reports.roofline_console`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rooflens.results.compare import CompareResult

__all__ = ["compare_table", "early_exit_figures", "engines_table", "figures_table", "lost_table", "models_table"]


def engines_table(engines: Iterable[Mapping[str, Any]]) -> Table:
    """One row per engine description (``describe_engine`` plus ``here``: device -> available or why not)."""
    table = Table(title="rooflens engines")
    for col in ("engine", "what it is", "devices", "batch > 1", "options", "here"):
        table.add_column(col, overflow="fold")
    for d in engines:
        table.add_row(
            d["name"],
            d["summary"],
            ", ".join(d["devices"]) + (f"\nneeds: {', '.join(d['packages'])}" if d["packages"] else ""),
            "yes" if d["batch"] else "no",
            "\n".join(f"{k}: {v}" for k, v in d["options"].items()) or "-",
            "\n".join(f"{k}: {v}" for k, v in d["here"].items()),
        )
    return table


def models_table(builtin: Mapping[str, Mapping[str, str]], shipped_configs: Iterable[str]) -> Table:
    """The models an experiment can name without a download, and ``hf:`` for the rest."""
    table = Table(title="models")
    table.add_column("experiment `model:`")
    table.add_column("weights")
    table.add_column("what")
    for name, entry in builtin.items():
        table.add_row(name, "real", f"{entry['note']} (needs: {entry['pip']})")
    for name in shipped_configs:
        table.add_row(f"shape:{name}", "random", "shipped config, random weights: speed only, no quality")
    table.add_row("hf:<id or path>", "real", "any Hugging Face causal LM (downloads need network access)")
    return table


_VERDICT_STYLE = {"regression": "bold red", "improvement": "green", "invalid": "magenta", "inconclusive": "yellow"}


def compare_table(result: CompareResult, title: str) -> Table:
    """Per matching cell and metric: the medians, the change, the p-value and the verdict (with why, if invalid)."""
    table = Table(title=Text(title))
    for col in ("cell", "metric", "base", "current", "change", "p", "verdict"):
        table.add_column(col, justify="left" if col in ("cell", "metric", "verdict") else "right")
    for r in result.rows:
        style = _VERDICT_STYLE.get(r.verdict)
        table.add_row(
            Text(r.cell),
            r.metric,
            f"{r.base_median:.4g}",
            f"{r.current_median:.4g}",
            f"{r.change:+.1%}",
            "-" if r.p_value is None else f"{r.p_value:.3g}",
            (f"[{style}]{r.verdict}[/]" if style else r.verdict) + (f" ({escape(r.reason)})" if r.reason else ""),
        )
    return table


def lost_table(result: CompareResult) -> Table:
    """The cells ok in the base that are not ok now, with their status and reason."""
    table = Table(title="cells ok in base that are not ok now (regressions)")
    for col in ("cell", "now", "reason"):
        table.add_column(col, overflow="fold")
    for x in result.lost:
        table.add_row(Text(x.cell), f"[bold red]{x.status}[/]", Text(x.reason))
    return table


def figures_table(title: str, figures: Mapping[str, Any]) -> Table:
    """A two-column table of named figures (floats to 3 decimals)."""
    table = Table(title=Text(title))  # titles hold labels: text, never markup
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(Text(key), Text(f"{value:.3f}" if isinstance(value, float) else str(value)))
    return table


def early_exit_figures(report: Mapping[str, Any], offline_layers: Iterable[int]) -> dict[str, object]:
    """The early-exit training report as figures: one row per simulated threshold, then the offline layers."""
    rows: dict[str, object] = {}
    for key, value in report.items():
        if isinstance(value, dict):
            rows.update(
                {
                    f"{key} @ threshold {t}": ", ".join(f"{a} {b:.3f}" for a, b in sim.items())
                    for t, sim in value.items()
                }
            )
        else:
            rows[key] = value
    rows["offline layers (0-based)"] = " ".join(map(str, offline_layers))
    return rows
