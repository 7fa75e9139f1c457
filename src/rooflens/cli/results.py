"""`rooflens show`, `report`, `compare` and `history`: what records say, as a table, a report, a verdict or a trend."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rooflens.cli.common import (
    console,
    fail,
    records_or_exit,
    render_report,
    unwritable,
    warn_skipped,
    write_text,
)
from rooflens.cli.gate import gate_exit, print_verdict


def show(
    folder: Path = typer.Argument(Path("results"), help="a results folder (searched recursively)"),
    ops: bool = typer.Option(False, "--ops", help="also each record's per-operator attribution, per phase"),
) -> None:
    """Print the summary table of the records in a folder, and what they say in a few sentences."""
    from rich.markup import escape

    from rooflens.reports.attribution import attribution_table
    from rooflens.reports.story import story
    from rooflens.reports.summary import summary_table

    records = records_or_exit(folder)
    console.print(summary_table(records, title=str(folder)))
    for line in story(records):
        console.print(f"- {escape(line)}", highlight=False)
    for r in records if ops else []:
        where = f"{r.cell.engine_label} {r.cell.workload} batch {r.cell.batch_size}"
        if r.attribution is None or not r.attribution.phases:
            reason = r.attribution.reason if r.attribution else "no attribution in this record"
            console.print(f"{where}: {reason}", markup=False)
        for phase in r.attribution.phases if r.attribution else []:
            console.print(attribution_table(phase, f"{where}, {phase.phase} (per pass)"))


def report(
    results: Optional[list[Path]] = typer.Argument(
        None,
        help="a results folder or record file (searched recursively; default: results); two of them, BASE then "
        "CURRENT: a report of what changed between them",
    ),
    out: Path = typer.Option(Path("reports"), "--out", help="where the HTML and PNGs go"),
    name: Optional[str] = typer.Option(
        None, "--name", help="report name (default: the experiment's, or the folder's; two folders: A-vs-B)"
    ),
    markdown: Optional[Path] = typer.Option(
        None, "--markdown", help="also write the summary as markdown to this file ('-' = stdout)"
    ),
    threshold: str = typer.Option(
        "5%", "--threshold", help="two folders: smallest change of a median called a regression or improvement"
    ),
    alpha: float = typer.Option(0.05, "--alpha", help="two folders: significance level of the one-sided tests"),
) -> None:
    """Render the HTML report (+ PNG plots) of a set of records, or of the changes between two sets."""
    from rooflens.reports.html import render_markdown
    from rooflens.text import quote, safe_name

    folders = results or [Path("results")]
    if len(folders) > 2:
        fail(f"report: {len(folders)} folders given; give one (a report) or two (BASE CURRENT: the changes)")
    if name is not None and safe_name(name) != name:
        fail(f"--name {quote(name)}: use letters, digits, '_', '-' and '.', starting and ending with a letter or digit")
    if len(folders) == 2:
        _report_changes(folders[0], folders[1], out, name, markdown, threshold, alpha)
        return
    records = records_or_exit(folders[0])
    experiments = sorted({str(r.experiment.get("name")) for r in records})
    render_report(records, out, name or (experiments[0] if len(experiments) == 1 else folders[0].resolve().name))
    if markdown is not None:
        write_text(markdown, render_markdown(records), "--markdown")


def _report_changes(
    base: Path, current: Path, out: Path, name: Optional[str], markdown: Optional[Path], threshold: str, alpha: float
) -> None:
    """`report BASE CURRENT`: the page of what changed between two sets of records."""
    from rooflens.reports.changes import changes
    from rooflens.reports.changes_page import render_changes_html, render_changes_markdown
    from rooflens.results.compare import CompareInputError, parse_threshold
    from rooflens.text import safe_name

    alpha = _alpha(alpha)
    try:
        limit = parse_threshold(threshold)
    except CompareInputError as err:
        fail(f"--threshold: {err}")
    report = changes(
        records_or_exit(base),
        records_or_exit(current),
        base_label=str(base),
        current_label=str(current),
        threshold=limit,
        alpha=alpha,
    )
    try:
        path = render_changes_html(report, out, name or safe_name(f"{base.resolve().name}-vs-{current.resolve().name}"))
    except OSError as err:
        unwritable("report folder", out, err)
    console.print(
        f"report: {path} ({len(report.cells)} matching cells, {report.count('regression')} significant "
        f"regression(s), {report.count('improvement')} significant improvement(s))"
    )
    if markdown is not None:
        write_text(markdown, render_changes_markdown(report), "--markdown")


def _alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        fail(f"--alpha {alpha:g}: must be between 0 and 1 (exclusive), e.g. 0.05")
    return alpha


def compare(
    base: Path = typer.Argument(..., help="records of the baseline (folder or file)"),
    current: Path = typer.Argument(..., help="records to check (folder or file)"),
    max_regression: str = typer.Option("5%", "--max-regression", help="largest tolerated worsening of a median"),
    metric: list[str] = typer.Option(
        None,
        "--metric",
        help="metric to compare (repeatable); speedup:<metric> compares the ratio to the run's baseline engine",
    ),
    alpha: float = typer.Option(0.05, "--alpha", help="significance level of the one-sided Mann-Whitney U test"),
    allow_hardware_mismatch: bool = typer.Option(
        False, "--allow-hardware-mismatch", help="compare records measured on different detected hardware"
    ),
    allow_mismatch: list[str] = typer.Option(
        None,
        "--allow-mismatch",
        help="compare cells that differ in this setting (repeatable): dtype, threads, engine_options, kernel, "
        "config_hash",
    ),
    markdown: Optional[Path] = typer.Option(
        None, "--markdown", help="also write the result as markdown ('-' = stdout)"
    ),
    strict: bool = typer.Option(
        False, "--strict", help="exit 4 when a comparison is invalid (a cell measured invalid on either side)"
    ),
    allow_inconclusive: bool = typer.Option(
        False,
        "--allow-inconclusive",
        help="exit 0 (not 3) when a comparison could not have detected the threshold with the noise it saw",
    ),
) -> None:
    """Exit 1 when a cell ok in BASE failed, is unavailable or is missing in CURRENT, or on a significant
    regression larger than the threshold; 0 otherwise; 2 on unusable input (nothing matches, different
    hardware, cells measured with different settings); 3 when nothing failed but a comparison is inconclusive
    (with the noise it saw and its repetitions it could not have detected the threshold: the verdict says how
    many repetitions would), unless --allow-inconclusive. Of a folder holding several runs of an
    experiment, the newest complete run is compared. A cell measured invalid (on either
    side) gets the verdict `invalid` and never fails the gate, except with --strict: exit 4 (when nothing
    else failed)."""
    from rooflens.results.compare import (
        DEFAULT_METRICS,
        CompareInputError,
        compare_records,
        parse_threshold,
        to_markdown,
    )
    from rooflens.results.store import RecordLoadError, load_records

    alpha = _alpha(alpha)
    skipped: list[str] = []
    try:
        threshold = parse_threshold(max_regression)
        result = compare_records(
            load_records(base, skipped),
            load_records(current, skipped),
            metrics=tuple(metric or DEFAULT_METRICS),
            threshold=threshold,
            alpha=alpha,
            allow_hardware_mismatch=allow_hardware_mismatch,
            allow_mismatch=frozenset(allow_mismatch or ()),
        )
    except (CompareInputError, RecordLoadError) as err:
        warn_skipped(skipped)
        fail(str(err))
    warn_skipped(skipped)
    print_verdict(result, f"compare: {base} -> {current} (threshold {threshold:.0%}, alpha {alpha})")
    if markdown is not None:
        write_text(markdown, to_markdown(result, threshold, alpha), "--markdown")
    gate_exit(result, threshold, strict=strict, allow_inconclusive=allow_inconclusive)


def history(
    results: list[Path] = typer.Argument(..., help="folders (or files) of records of many runs"),
    metric: list[str] = typer.Option(None, "--metric", help="metric to follow (repeatable; default decode_tok_s)"),
    out: Path = typer.Option(Path("reports"), "--out", help="folder of the page"),
    name: str = typer.Option("history", "--name", help="the page's name: <out>/<name>.html"),
    alpha: float = typer.Option(0.01, "--alpha", help="significance a change point must reach"),
    min_change: str = typer.Option("5%", "--min-change", help="smallest change of the medians kept as a change point"),
    markdown: Optional[Path] = typer.Option(
        None, "--markdown", help="also write the changes as markdown ('-' = stdout)"
    ),
) -> None:
    """Runs in time order, one series per cell and metric, change points found and marked with the commits
    around them: a page with one trend plot per series. Exit 0; 2 on unusable input."""
    from rooflens.reports.history_page import render_history_html, render_history_markdown
    from rooflens.results.compare import BETTER, CompareInputError, parse_threshold
    from rooflens.results.history import history as find_history
    from rooflens.results.runs import runs_of

    alpha = _alpha(alpha)
    metrics = tuple(metric or ("decode_tok_s",))
    unknown = [m for m in metrics if m not in BETTER]
    if unknown:
        fail(f"--metric {unknown[0]}: allowed {', '.join(BETTER)}")
    try:
        threshold = parse_threshold(min_change)
    except CompareInputError as err:
        fail(str(err).replace("threshold", "--min-change"))
    records = [r for folder in results for r in records_or_exit(folder)]
    series = find_history(records, metrics, alpha=alpha, min_change=threshold)
    runs = len(runs_of(records))
    try:
        path = render_history_html(series, runs, out, name, alpha, threshold)
    except OSError as err:
        unwritable("report folder", out, err)
    changes = sum(len(s.changes) for s in series)
    console.print(f"history: {path} ({runs} runs, {len(series)} series, {changes} change point(s))", markup=False)
    for s in series:
        for c in s.changes:
            a, b = s.points[c.index - 1], s.points[c.index]
            console.print(
                f"  {s.name}: {a.commit} -> {b.commit} {100 * c.change:+.1f}% (p {c.p_value:.2g})", markup=False
            )
    if markdown is not None:
        write_text(markdown, render_history_markdown(series), "--markdown")
