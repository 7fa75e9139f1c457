"""The self-contained HTML report (PNG plots embedded, and also written beside it) and its markdown twin."""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

import rooflens
from rooflens.fsutil import write_atomic
from rooflens.reports import attribution_charts, engine_panels, plots, roofline_chart
from rooflens.reports.story import story
from rooflens.reports.table import cell_row, format_value, header, table_notes, visible_columns
from rooflens.results.record import Record
from rooflens.text import safe_name


@dataclass(frozen=True)
class PlotSpec:
    name: str
    title: str
    draw: Callable[[list[Record]], Figure | None]


PLOTS = (
    PlotSpec("throughput", "Decode and prefill tokens/s per engine and batch (error bars: p10-p90)", plots.throughput),
    PlotSpec("energy", "Tokens per joule per engine", plots.energy),
    PlotSpec("latency", "TTFT and TPOT distributions over repetitions", plots.latency),
    PlotSpec(
        "roofline",
        "Roofline, one panel per workload and batch: every run per phase (square: prefill, circle: decode), "
        "coloured by engine; arrows show where each technique moved the baseline's decode step "
        "(right: fewer bytes per FLOP, up: more FLOP/s), and the legend says why",
        roofline_chart.records_chart,
    ),
    PlotSpec(
        "time_split",
        "Where a pass's time goes, from profiled repetitions after the timed ones (the median of 3): operator classes of the "
        "analytic model grouped in families, each engine's own work, and the time outside every operator "
        "(Python, dispatch, framework)",
        attribution_charts.time_split,
    ),
    PlotSpec(
        "operator_roofline",
        "Each operator class of the decode pass on the roofline: analytic FLOP/byte against the FLOP/s it reached "
        "in the profiled repetition (its analytic FLOPs over its measured time)",
        attribution_charts.operator_rooflines,
    ),
    PlotSpec(
        "quality_vs_speedup",
        "Quality against speedup: the Pareto frontier (no other engine is both faster and better) is joined "
        "and outlined; dominated engines are faded",
        plots.quality_vs_speedup,
    ),
    PlotSpec(
        "task_quality_vs_speedup",
        "Task quality against speedup: ROUGE-L of each engine's answers against the prompt set's reference answers "
        "(the plot above compares with the baseline's output instead)",
        plots.task_quality_vs_speedup,
    ),
    PlotSpec(
        "engine_panels",
        "Per-engine distributions: draft tokens accepted per verify pass, layers run per decode step, "
        "weight precision over the decode steps",
        engine_panels.engine_panels,
    ),
    PlotSpec(
        "engine_stats",
        "Headline engine statistics (acceptance, layers per token, bits, compression); all of them are in the records",
        plots.engine_statistics,
    ),
)


def _group_key(r: Record) -> tuple[str, str]:
    model = r.model.label if r.model else "?"
    return model, r.hardware_profile.get("display_name") or r.hardware_profile.get("name", "?")


def _environment(records: list[Record]) -> list[tuple[str, str]]:
    env = records[0].environment
    hw = env.get("hardware", {})
    gpus = ", ".join(g["name"] for g in hw.get("gpus", [])) or "none"
    libs = env.get("libraries", {})
    git = env.get("rooflens_git", {})
    model = records[0].model
    return [
        ("device", records[0].device),
        (
            "CPU",
            f"{hw.get('cpu_model')} ({hw.get('cpu_cores_logical')} logical cores), torch threads {env.get('torch_threads')}",
        ),
        ("GPU", gpus),
        ("hardware profile", f"{records[0].hardware_profile.get('name')}: {records[0].hardware_profile.get('reason')}"),
        ("roofline ceilings", _ceiling_sources(records)),
        (
            "model",
            f"{model.label}: {model.weights} weights ({model.weights_origin or 'origin not recorded'}), "
            f"{model.n_params / 1e6:.1f} M params, {model.dtype} ({model.weights_note})"
            if model
            else "?",
        ),
        ("libraries", ", ".join(f"{k} {v}" for k, v in libs.items() if v)),
        (
            "rooflens",
            f"{env.get('rooflens_version')} commit {(git.get('commit') or 'unknown')[:12]}{' (dirty)' if git.get('dirty') else ''}",
        ),
        ("load average at start", str(env.get("loadavg_1m_at_start"))),
    ]


def _ceiling_sources(records: list[Record]) -> str:
    refs = sorted({f"{c.source}: {c.ref}" for r in records if r.roofline for c in r.roofline.ceilings})
    return "; ".join(refs) or "none (no datasheet numbers for this device and no `rooflens hw probe` result)"


def jinja_env() -> jinja2.Environment:
    """The package's templates, HTML-escaped (engine labels and error messages are user text)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("rooflens", "reports/templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )


def render_figure(fig: Figure, path: Path) -> str:
    """Write the figure as a PNG to ``path`` (atomically) and return it base64-encoded, for an inline image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = buf.getvalue()
    write_atomic(path, data)  # a reader (a browser, CI's artifact upload) never sees half a PNG
    return base64.b64encode(data).decode()


def write_figures(records: list[Record], folder: Path) -> list[dict[str, str]]:
    """Draw every plot that applies, write ``<folder>/<name>.png``, return the figures for the page."""
    out = []
    for spec in PLOTS:
        with plt.rc_context(plots.PLAIN_TEXT):
            fig = spec.draw(records)
            if fig is None:
                continue
            file = folder / f"{spec.name}.png"
            out.append({"name": spec.name, "title": spec.title, "file": str(file), "data": render_figure(fig, file)})
    return out


def _groups(records: list[Record]) -> list[dict]:
    grouped: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        grouped.setdefault(_group_key(r), []).append(r)
    groups = []
    for (model, hardware), recs in grouped.items():
        rows = [cell_row(r, records) for r in recs]
        cols = visible_columns(rows)
        groups.append(
            {
                "model": model,
                "hardware": hardware,
                "environment": _environment(recs),
                "columns": [{"header": header(c), "numeric": c.numeric} for c in cols],
                "rows": [
                    {
                        "status_class": "invalid" if r.validity.invalid else r.status,
                        "cells": [
                            {
                                "text": format_value(c, row[c.key]),
                                "cls": "" if c.numeric else "text",
                                "sort": "" if row[c.key] is None else row[c.key],
                            }
                            for c in cols
                        ],
                    }
                    for r, row in zip(recs, rows)
                ],
                "baselines": sorted({str(r.experiment.get("baseline")) for r in recs}),
                "notes": table_notes(recs),
                "story": story(recs),
            }
        )
    return groups


def render_html(records: list[Record], out_dir: Path, name: str) -> Path:
    """Write ``<out_dir>/<name>.html`` and ``<out_dir>/<name>/*.png``; return the HTML path."""
    if not records:
        raise ValueError("no records to report")
    out_dir = Path(out_dir)
    name = safe_name(name)
    figures = write_figures(records, out_dir / name)
    env = jinja_env()
    problems = [
        {
            "engine": r.cell.engine_label,
            "batch": r.cell.batch_size,
            "workload": r.cell.workload,
            "status": r.status,
            "reason": r.reason.message if r.reason else "",
        }
        for r in records
        if r.status != "ok"
    ] + [
        {
            "engine": r.cell.engine_label,
            "batch": r.cell.batch_size,
            "workload": r.cell.workload,
            "status": "invalid",
            "reason": "; ".join(x.message for x in r.validity.reasons),
        }
        for r in records
        if r.validity.invalid
    ]
    html = env.get_template("report.html.j2").render(
        title=name,
        records_count=len(records),
        runs=sorted({str(r.experiment.get("run_id")) for r in records}),
        generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=rooflens.__version__,
        groups=_groups(records),
        problems=problems,
        figures=figures,
    )
    path = out_dir / f"{name}.html"
    write_atomic(path, html)
    return path


def render_markdown(records: list[Record]) -> str:
    """The summary table as GitHub markdown (for CI job summaries and pull requests)."""
    lines = []
    grouped: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        grouped.setdefault(_group_key(r), []).append(r)
    for (model, hardware), recs in grouped.items():
        rows = [cell_row(r, records) for r in recs]
        cols = visible_columns(rows)
        lines += [f"### {model} on {hardware}", ""]
        lines.append("| " + " | ".join(header(c) for c in cols) + " |")
        lines.append("|" + "|".join("---:" if c.numeric else ":---" for c in cols) + "|")
        for row in rows:
            lines.append("| " + " | ".join(format_value(c, row[c.key]).replace("|", "\\|") for c in cols) + " |")
        lines.append("")
        lines += [f"- {line}" for line in story(recs)]
        lines += ["", *(f"_{n}_" for n in table_notes(recs))]
        lines.append("")
    return "\n".join(lines)
