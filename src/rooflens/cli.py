"""The ``rooflens`` command line: run, validate, engines, models, show, hw."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Known-harmless import noise of optional libraries (torchao's CUDA-only extensions on a CPU build,
# torch's pytree deprecation notes): keep the CLI's output about the measurement.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Hardware-aware LLM inference benchmarks and roofline analysis."
)
hw_app = typer.Typer(no_args_is_help=True, help="Hardware profiles: list, show, detect.")
app.add_typer(hw_app, name="hw")
train_app = typer.Typer(no_args_is_help=True, help="Train what an engine needs, ahead of a run (cached for it).")
app.add_typer(train_app, name="train")
# a pipe or CI log gets a wide table instead of rich's default 80 columns
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def _unwritable(what: str, path: Path, err: OSError) -> None:
    from rooflens.results.store import describe_os_error

    _fail(f"{what} {path}: cannot write there ({describe_os_error(err)})")


def _write_text(path: Path, text: str, what: str) -> None:
    """Write ``text`` to ``path`` ('-' = stdout), or exit 2 saying why it cannot be written."""
    if str(path) == "-":
        print(text)
        return
    try:
        path.write_text(text)
    except OSError as err:
        _unwritable(what, path, err)


def _device(value: str) -> str:
    """A --device option: auto, cpu, cuda or cuda:N (the experiment schema's rule), or exit 2."""
    from rooflens.device.spec import DEVICE_RE
    from rooflens.text import quote

    if not DEVICE_RE.fullmatch(value):
        _fail(f"--device {quote(value)}: allowed auto, cpu, cuda, cuda:N")
    return value


def _load(path: Optional[Path]):
    from rooflens.bench.validate import load_experiment
    from rooflens.config import ConfigError, builtin_experiment_path

    source = path or builtin_experiment_path()
    try:
        return load_experiment(source), str(source)
    except ConfigError as err:
        _fail(f"invalid experiment\n{err}")


def _records(folder: Path) -> list:
    """The records under ``folder``, or a clean exit 2 saying why there are none."""
    from rooflens.results.store import RecordLoadError, load_records

    try:
        records = load_records(folder)
    except RecordLoadError as err:
        _fail(str(err))
    if not records:
        _fail(f"{folder}: no records")
    return records


def _progress_bar(quiet: bool = False) -> Progress:
    """The progress bar of long commands (run, train): what it does now, how far, for how long."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )


class _ProgressObserver:
    """One progress row per experiment. It counts finished cells, not cell indices: under ray, groups run
    side by side and their records arrive interleaved."""

    def __init__(self, progress: Progress, name: str = ""):
        self.progress = progress
        self.prefix = f"{name}: " if name else ""
        self.finished = 0
        self.task = progress.add_task(f"{self.prefix}loading", total=None)

    def _say(self, text: str, **fields) -> None:
        self.progress.update(self.task, description=f"{self.prefix}{text}", **fields)

    def model_loading(self, label: str) -> None:
        self._say(f"loading model {label}")

    def note(self, text: str) -> None:
        """Something the run does besides measuring cells (a first probe of the machine): shown and kept."""
        self._say(text)
        self.progress.console.print(f"[dim]{self.prefix}{text}[/]")

    def cell_started(self, index: int, total: int, cell) -> None:
        self._say(f"{cell.engine.display} {cell.workload.display} b{cell.batch_size}: warm-up", total=total)

    def repetition_done(self, cell, measured: int, warmup: bool) -> None:
        phase = "warm-up" if warmup else "rep"
        self._say(f"{cell.engine.display} {cell.workload.display} b{cell.batch_size}: {phase} {measured}")

    def cell_finished(self, index: int, total: int, record, path: Path) -> None:
        self.finished += 1
        cell = record.cell
        self._say(f"{cell.engine_label} {cell.workload} b{cell.batch_size} done", total=total, completed=self.finished)
        if record.status != "ok":
            self.progress.console.print(
                f"[yellow]{self.prefix}{cell.engine_label} b{cell.batch_size}: {record.status}[/] - "
                f"{record.reason.message.splitlines()[0]}"
            )


def _executor(loaded: list, name: Optional[str], ray_address: Optional[str]):
    """The one executor of `run` for all its experiments ``loaded`` ((experiment, source) pairs): --executor
    overrides theirs; exit 2 when they name different ones or it cannot be used here."""
    from rooflens.bench.executors import EXECUTORS, ExecutorError, make_executor
    from rooflens.text import quote

    if name is not None and name not in EXECUTORS:
        _fail(f"--executor {quote(name)}: allowed {', '.join(EXECUTORS)}")
    named = {exp.executor for exp, _ in loaded}
    if name is None and len(named) > 1:
        which = ", ".join(f"{source}: {exp.executor}" for exp, source in loaded)
        _fail(f"the experiments name different executors ({which}); pick one for all with --executor")
    chosen = name or named.pop()
    if ray_address is not None and chosen != "ray":
        _fail(f"--ray-address applies to executor 'ray' only (this run uses '{chosen}')")
    try:
        return make_executor(chosen, ray_address=ray_address)
    except ExecutorError as err:
        from rich.markup import escape

        _fail(escape(str(err)))  # "rooflens[ray]" is not markup


@app.command()
def run(
    experiment: Optional[list[Path]] = typer.Argument(
        None, help="experiment YAML file(s), all run by one executor (default: the shipped quickstart)"
    ),
    results: Optional[Path] = typer.Option(
        None, "--results", help="results folder (default: the experiment's output.results_dir)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    report: bool = typer.Option(False, "--report", help="render the HTML/PNG report of this run when done"),
    executor: Optional[str] = typer.Option(
        None,
        "--executor",
        help="where cells run: inline | subprocess (a fresh process per engine) | ray (default: the experiment's)",
    ),
    ray_address: Optional[str] = typer.Option(
        None,
        "--ray-address",
        help="Ray cluster to join (e.g. auto, ray://head:10001); default: RAY_ADDRESS, else a local cluster",
    ),
) -> None:
    """Run experiments: every engine x workload x batch size, one JSON record per cell.

    Several files share one executor: under ray one cluster, with all their groups in flight together;
    otherwise one experiment after another. Each keeps its own results folder, summary and report.

    Exit codes: 0 every cell ok or unavailable (an engine that cannot run on this device);
    1 at least one cell failed; 2 the experiment could not start (invalid file, a model that
    cannot be loaded or does not fit, an output folder that cannot be written); 130 interrupted
    (Ctrl-C): the records of finished cells are kept. With several files: the worst of theirs.
    """
    loaded = [_load(path) for path in experiment or [None]]  # every file is checked before anything runs
    runner_executor = _executor(loaded, executor, ray_address)
    if executor is not None:
        loaded = [(exp.model_copy(update={"executor": executor}), source) for exp, source in loaded]
    from rich.markup import escape

    from rooflens.bench.executors import run_experiments
    from rooflens.bench.preflight import PreflightError
    from rooflens.bench.runner import ExperimentRunner
    from rooflens.models.loader import ModelLoadError
    from rooflens.reports.story import story
    from rooflens.reports.summary import summary_table
    from rooflens.results.store import OutputError, RecordExistsError, ensure_writable

    progress = _progress_bar(quiet)

    runners: list = []
    try:
        if report:
            for exp, _ in loaded:
                ensure_writable(Path(exp.output.reports_dir), "reports folder")
        for exp, source in loaded:
            runner = ExperimentRunner(
                exp,
                source=source,
                results_root=results,
                observer=_ProgressObserver(progress, exp.name if len(loaded) > 1 else ""),
                executor=runner_executor,
            )
            runners.append(runner)
            console.print(
                f"rooflens: experiment [bold]{exp.name}[/] ({source}) on {runner.device}, "
                f"dtype {str(runner.dtype).removeprefix('torch.')}"
                + (f", executor {exp.executor}" if exp.executor != "inline" else "")
            )
        with progress:
            outcomes = run_experiments(runners, runner_executor)
    except (ModelLoadError, OutputError, RecordExistsError) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        done = sum(len(r.records) for r in runners)
        total = sum(r.total_cells for r in runners) if len(runners) == len(loaded) else "?"
        folders = ", ".join(str(r.folder) for r in runners if r.records)
        where = f"; their records are in {folders}" if folders else ""
        sweep = "sweep" if len(loaded) == 1 else "sweeps"
        _fail(f"interrupted: the {sweep} stopped after {done} of {total} cell(s){where}", 130)
    code = 0
    for (exp, source), runner, result in zip(loaded, runners, outcomes):
        if isinstance(result, Exception):  # this experiment stopped; the others ran on
            message = f"{source}: {result}" if isinstance(result, PreflightError) else str(result)
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
            code = max(code, 2)
            continue
        console.print(summary_table(result.records, title=f"{exp.name} - {runner.profile_info['display_name']}"))
        ok = sum(r.status == "ok" for r in result.records)
        console.print(f"{ok}/{len(result.records)} cells ok; records in {result.folder}")
        if runner.probe is not None:
            console.print(
                f"[dim]roofline ceilings: measured by `rooflens hw probe` at {runner.probe.measured_at}"
                f"{'' if runner.profile_info['matched'] else ' (no datasheet profile for this device)'}[/]"
            )
        elif not runner.profile_info["matched"]:
            console.print(f"[dim]hardware: {runner.profile_info['reason']}[/]")
        for line in story(result.records):
            console.print(f"- {escape(line)}", highlight=False)
        if report:
            _render_report(result.records, Path(exp.output.reports_dir), exp.name)
        failed = [r for r in result.records if r.status == "failed"]
        if failed:
            err_console.print(
                f"[bold red]{len(failed)} cell(s) failed:[/] "
                + ", ".join(f"{r.cell.engine_label} {r.cell.workload} b{r.cell.batch_size}" for r in failed)
            )
            code = max(code, 1)
    if code:
        raise typer.Exit(code)


def _render_report(records: list, out: Path, name: str) -> Path:
    from rooflens.reports.html import render_html

    try:
        path = render_html(records, out, name)
    except OSError as err:
        _unwritable("report folder", out, err)
    console.print(f"report: {path} ({len(records)} records; PNGs in {path.with_suffix('')})")
    return path


@app.command("report")
def report_cmd(
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
        _fail(f"report: {len(folders)} folders given; give one (a report) or two (BASE CURRENT: the changes)")
    if name is not None and safe_name(name) != name:
        _fail(
            f"--name {quote(name)}: use letters, digits, '_', '-' and '.', starting and ending with a letter or digit"
        )
    if len(folders) == 2:
        from rooflens.reports.changes import changes
        from rooflens.reports.changes_page import render_changes_html, render_changes_markdown
        from rooflens.results.compare import CompareInputError, parse_threshold

        if not 0 < alpha < 1:
            _fail(f"--alpha {alpha:g}: must be between 0 and 1 (exclusive), e.g. 0.05")
        try:
            limit = parse_threshold(threshold)
        except CompareInputError as err:
            _fail(f"--threshold: {err}")
        base_dir, current_dir = folders
        labels = [str(f) for f in folders]
        report = changes(
            _records(base_dir),
            _records(current_dir),
            base_label=labels[0],
            current_label=labels[1],
            threshold=limit,
            alpha=alpha,
        )
        name = name or safe_name(f"{base_dir.resolve().name}-vs-{current_dir.resolve().name}")
        try:
            path = render_changes_html(report, out, name)
        except OSError as err:
            _unwritable("report folder", out, err)
        console.print(
            f"report: {path} ({len(report.cells)} matching cells, {report.count('regression')} significant "
            f"regression(s), {report.count('improvement')} significant improvement(s))"
        )
        if markdown is not None:
            _write_text(markdown, render_changes_markdown(report), "--markdown")
        return
    results = folders[0]
    records = _records(results)
    experiments = sorted({str(r.experiment.get("name")) for r in records})
    name = name or (experiments[0] if len(experiments) == 1 else results.resolve().name)
    _render_report(records, out, name)
    if markdown is not None:
        _write_text(markdown, render_markdown(records), "--markdown")


@app.command()
def validate(experiment: Path = typer.Argument(..., help="experiment YAML")) -> None:
    """Check an experiment file without running it."""
    exp, source = _load(experiment)
    from rooflens.bench.cells import expand_cells

    cells = expand_cells(exp)
    console.print(
        f"{source}: ok - model {exp.model.label}, {len(exp.engines)} engine(s), {len(cells)} cell(s), "
        f"config hash {exp.config_hash()}"
    )


@app.command()
def engines(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The registered engines, what each needs, and whether it can run here."""
    import torch

    from rooflens.engines.base import describe_engine, entry_point_errors, registered_engines

    here = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for cls in registered_engines().values():
        d = describe_engine(cls)
        d["here"] = {str(dev): cls.unavailable_reason(dev) or "available" for dev in here}
        rows.append(d)
    if as_json:
        console.print_json(json.dumps({"engines": rows, "plugin_errors": entry_point_errors()}))
        return
    table = Table(title="rooflens engines")
    for col in ("engine", "what it is", "devices", "batch > 1", "options", "here"):
        table.add_column(col, overflow="fold")
    for d in rows:
        table.add_row(
            d["name"],
            d["summary"],
            ", ".join(d["devices"]) + (f"\nneeds: {', '.join(d['packages'])}" if d["packages"] else ""),
            "yes" if d["batch"] else "no",
            "\n".join(f"{k}: {v}" for k, v in d["options"].items()) or "-",
            "\n".join(f"{k}: {v}" for k, v in d["here"].items()),
        )
    console.print(table)
    for name, error in entry_point_errors().items():
        console.print(f"[yellow]plug-in engine '{name}' failed to load:[/] {error}")


@app.command()
def models() -> None:
    """Models rooflens can run without a download: built-in (real weights) and shape-only configs."""
    from rooflens.models.catalog import BUILTIN_MODELS, shipped_config_names

    table = Table(title="models")
    table.add_column("experiment `model:`")
    table.add_column("weights")
    table.add_column("what")
    for name, entry in BUILTIN_MODELS.items():
        table.add_row(name, "real", f"{entry['note']} (needs: {entry['pip']})")
    for name in shipped_config_names():
        table.add_row(f"shape:{name}", "random", "shipped config, random weights: speed only, no quality")
    table.add_row("hf:<id or path>", "real", "any Hugging Face causal LM (downloads need network access)")
    console.print(table)


@app.command()
def show(folder: Path = typer.Argument(Path("results"), help="a results folder (searched recursively)")) -> None:
    """Print the summary table of the records in a folder, and what they say in a few sentences."""
    from rich.markup import escape

    from rooflens.reports.story import story
    from rooflens.reports.summary import summary_table

    records = _records(folder)
    console.print(summary_table(records, title=str(folder)))
    for line in story(records):
        console.print(f"- {escape(line)}", highlight=False)


@app.command()
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
    allow_hardware_mismatch: bool = typer.Option(False, "--allow-hardware-mismatch"),
    markdown: Optional[Path] = typer.Option(
        None, "--markdown", help="also write the result as markdown ('-' = stdout)"
    ),
) -> None:
    """Exit 1 when a cell ok in BASE failed, is unavailable or is missing in CURRENT, or on a significant
    regression larger than the threshold; 0 otherwise; 2 on unusable input."""
    from rooflens.results.compare import (
        DEFAULT_METRICS,
        CompareInputError,
        compare_records,
        parse_threshold,
        to_markdown,
    )
    from rooflens.results.store import RecordLoadError, load_records

    if not 0 < alpha < 1:
        _fail(f"--alpha {alpha:g}: must be between 0 and 1 (exclusive), e.g. 0.05")
    try:
        threshold = parse_threshold(max_regression)
        result = compare_records(
            load_records(base),
            load_records(current),
            metrics=tuple(metric or DEFAULT_METRICS),
            threshold=threshold,
            alpha=alpha,
            allow_hardware_mismatch=allow_hardware_mismatch,
        )
    except (CompareInputError, RecordLoadError) as err:
        _fail(str(err))
    table = Table(title=f"compare: {base} -> {current} (threshold {threshold:.0%}, alpha {alpha})")
    for col in ("cell", "metric", "base", "current", "change", "p", "verdict"):
        table.add_column(col, justify="left" if col in ("cell", "metric", "verdict") else "right")
    style = {"regression": "bold red", "improvement": "green"}
    for r in result.rows:
        table.add_row(
            r.cell,
            r.metric,
            f"{r.base_median:.4g}",
            f"{r.current_median:.4g}",
            f"{r.change:+.1%}",
            "-" if r.p_value is None else f"{r.p_value:.3g}",
            f"[{style.get(r.verdict, '')}]{r.verdict}[/]" if r.verdict in style else r.verdict,
        )
    console.print(table)
    if result.lost:
        lost = Table(title="cells ok in base that are not ok now (regressions)")
        for col in ("cell", "now", "reason"):
            lost.add_column(col, overflow="fold")
        for x in result.lost:
            lost.add_row(x.cell, f"[bold red]{x.status}[/]", x.reason)
        console.print(lost)
    for note in result.notes:
        console.print(f"[yellow]{note}[/]")
    if result.only_in_current:
        console.print(f"[dim]only in current: {', '.join(result.only_in_current)}[/]")
    if markdown is not None:
        _write_text(markdown, to_markdown(result, threshold, alpha), "--markdown")
    if result.failed:
        console.print(
            f"[bold red]{len(result.lost)} lost cell(s), {len(result.regressions)} significant regression(s) "
            f"over {threshold:.0%}[/]"
        )
        raise typer.Exit(1)
    console.print("no significant regression")


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        _fail(f"{option} {text!r}: expected comma-separated positive integers, e.g. 1,8")
    return values


def _save_chart(fig, png: Path, as_json: bool) -> None:
    """Write a --png chart, or exit 2 saying why it cannot be written."""
    try:
        if png.is_dir():  # savefig would write <png>.png beside it instead of failing
            raise IsADirectoryError(21, "Is a directory")
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=110)
    except OSError as err:
        _unwritable("--png", png, err)
    (console if not as_json else err_console).print(f"chart: {png}")


@app.command()
def roofline(
    model: str = typer.Argument(
        ..., help="shipped config (llama-2-7b, smollm2-135m, ...; see `rooflens models`) or hf:<id or path>"
    ),
    hw: str = typer.Option(
        "auto",
        "--hw",
        help="hardware profile name, auto (this machine; CPUs need `rooflens hw probe`), or 'all' / a comma-separated "
        "list of profiles: the platform comparison (decode tok/s and modelled tok/J per profile, grouped by class)",
    ),
    batch: str = typer.Option("1", "--batch", help="batch sizes, e.g. 1,8"),
    prompt: int = typer.Option(512, "--prompt", min=1, help="prompt length (tokens)"),
    gen: int = typer.Option(128, "--gen", min=1, help="generated tokens (decode is shown at the mean context)"),
    bits: str = typer.Option("16", "--bits", help="weight bits, e.g. 16,8,4 (8/4/3/2: group-wise with fp16 scales)"),
    group_size: int = typer.Option(128, "--group-size", min=1, help="group size of low-bit weights"),
    kv_bits: Optional[int] = typer.Option(
        None, "--kv-bits", min=1, help="KV cache bits (default: the activations' width, 32 with --bits 32, else 16)"
    ),
    ops: Optional[bool] = typer.Option(None, "--ops/--no-ops", help="per-op tables (default: when one batch x bits)"),
    png: Optional[Path] = typer.Option(None, "--png", help="write the roofline chart to this PNG"),
    as_json: bool = typer.Option(False, "--json", help="print the analysis as JSON"),
    records: Optional[Path] = typer.Option(
        None, "--records", help="with --hw all: a results folder whose records appear as measured points"
    ),
) -> None:
    """Analytic roofline of a model on a hardware profile: per-op table, totals, bound-limited tokens/s.

    Without ceilings for the hardware (a CPU before `rooflens hw probe`) it prints FLOPs and bytes only.
    With --hw all (or a list of profiles) it compares platforms: bound-limited decode tokens/s and a tokens/J
    modelled from each profile's TDP, grouped into cloud GPU, PC GPU and CPU/edge.
    """
    from rooflens.roofline.whatif import NoCeilingsError, WhatIfError, ceilings, model_config, phase_costs, projections

    batches, bit_list = _int_list(batch, "--batch"), _int_list(bits, "--bits")
    if hw.strip().lower() == "all" or "," in hw:
        # platform comparison: modelled rows from datasheets, measured records (if any) kept apart
        from dataclasses import asdict

        from rooflens.reports.platform_chart import measured_table, platform_table
        from rooflens.roofline.hardware import UnknownProfileError, get_profile, list_profiles
        from rooflens.roofline.platforms import measured_points, platform_rows

        if len(bit_list) != 1:
            _fail(f"--hw {hw} compares platforms at one --bits value; got {bits}")
        try:
            config = model_config(model)
            chosen = (
                list_profiles() if hw.strip().lower() == "all" else [get_profile(n) for n in hw.split(",") if n.strip()]
            )
            rows = platform_rows(
                config,
                chosen,
                batches=batches,
                bits=bit_list[0],
                prompt_len=prompt,
                gen_len=gen,
                group_size=group_size,
                kv_bits=kv_bits,
            )
        except (WhatIfError, UnknownProfileError, ValueError) as err:
            _fail(str(err))
        points, left_out = measured_points(_records(records), config) if records is not None else ([], [])
        if as_json:
            out = {
                "model": model,
                "bits": bit_list[0],
                "prompt_len": prompt,
                "gen_len": gen,
                "modelled": [{**asdict(r), "fits": r.fits} for r in rows],
                "measured": [asdict(p) for p in points],
                "measured_left_out": left_out,
            }
            print(json.dumps(out, indent=2))
        else:
            console.print(
                platform_table(
                    rows,
                    f"{model}: bound-limited decode per platform ({bit_list[0]}-bit weights, prompt {prompt}, "
                    f"gen {gen}; modelled from datasheets)",
                )
            )
            if records is not None:
                console.print(measured_table(points, f"measured records in {records} (not modelled)"))
                for note in left_out:
                    console.print(f"[dim]{note}[/]")
        if png is not None:
            import matplotlib.pyplot as plt

            from rooflens.reports.platform_chart import draw as draw_platforms
            from rooflens.reports.plots import PLAIN_TEXT

            with plt.rc_context(PLAIN_TEXT):
                fig = draw_platforms(
                    rows,
                    points,
                    f"{model}, {bit_list[0]}-bit weights, prompt {prompt}, gen {gen}: "
                    "modelled from datasheets (bars) vs measured records (diamonds)",
                )
                _save_chart(fig, png, as_json)
        return
    if records is not None:
        _fail("--records goes with --hw all (or a comma-separated list of profiles)")
    dtypes = ("fp32",) if bit_list == [32] else ("bf16", "fp16")
    shape = dict(batches=batches, bits=bit_list, prompt_len=prompt, gen_len=gen, group_size=group_size, kv_bits=kv_bits)
    try:
        config = model_config(model)
        try:
            profile, c = ceilings(hw, dtypes)
        except NoCeilingsError as err:
            _print_costs(model, phase_costs(config, **shape), str(err), as_json)
            return
        rows = projections(config, c, **shape)
    except WhatIfError as err:
        _fail(str(err))
    if as_json:
        print(
            json.dumps(
                {
                    "model": model,
                    "hardware": profile.name,
                    "ceilings": c.__dict__,
                    "projections": [p.to_dict() for _, _, p in rows],
                },
                indent=2,
            )
        )
    else:
        console.print(
            f"{model} on {profile.name}: {c.description}; bandwidth {c.bandwidth / 1e9:.4g} GB/s, "
            f"peak {c.peak_flops / 1e12:.4g} TFLOP/s, ridge {c.peak_flops / c.bandwidth:.1f} FLOP/B ({c.source})"
        )
        if ops if ops is not None else len(rows) == 1:
            for b, w, p in rows:
                for phase in (p.prefill, p.decode):
                    console.print(
                        _op_table(
                            phase,
                            p,
                            f"{phase.phase}: batch {b}, {w}-bit weights ({p.precision.weight_bits:g} bits/weight incl. scales)",
                        )
                    )
        table = Table(title="bound-limited performance (at the roofline)")
        for col in (
            "batch",
            "bits",
            "prefill ms",
            "prefill tok/s",
            "prefill bound",
            "decode ctx",
            "decode GFLOP/step",
            "decode weight GB",
            "decode KV GB",
            "decode AI",
            "decode ms/step",
            "decode tok/s",
            "decode bound",
        ):
            table.add_column(col, justify="right")
        for b, w, p in rows:
            d = p.decode
            table.add_row(
                str(b),
                str(w),
                f"{1e3 * p.prefill_time_s:.2f}",
                f"{p.prefill_tokens_per_s:,.0f}",
                p.prefill.bound(p.bandwidth, p.peak_flops),
                str(d.context),
                f"{d.flops / 1e9:.2f}",
                f"{d.weight_bytes / 1e9:.3f}",
                f"{d.kv_bytes / 1e9:.4f}",
                f"{d.intensity:.2f}",
                f"{1e3 * p.decode_step_time_s:.3f}",
                f"{p.decode_tokens_per_s:,.1f}",
                d.bound(p.bandwidth, p.peak_flops),
            )
        console.print(table)
    if png is not None:
        import matplotlib.pyplot as plt

        from rooflens.reports.plots import PLAIN_TEXT
        from rooflens.reports.roofline_chart import Point, Roof, draw

        with plt.rc_context(PLAIN_TEXT):
            fig = draw(
                [Roof(f"{c.source} {profile.name}", c.bandwidth, c.peak_flops, c.source == "measured")],
                [
                    Point(
                        ph.intensity,
                        ph.flops / ph.time_at_roofline(p.bandwidth, p.peak_flops),
                        f"{w}-bit",
                        ph.phase,
                        f"b{b}",
                    )
                    for b, w, p in rows
                    for ph in (p.prefill, p.decode)
                ],
                f"{model} on {profile.name}: bound-limited positions (prompt {prompt}, gen {gen})",
            )
            _save_chart(fig, png, as_json)


def _print_costs(model: str, rows: list, why: str, as_json: bool) -> None:
    """FLOPs and bytes per phase, for hardware without ceilings (nothing to divide them by)."""
    if as_json:

        def phase(ph) -> dict:
            return {
                "tokens": ph.tokens,
                "context": ph.context,
                "flops": ph.flops,
                "weight_bytes": ph.weight_bytes,
                "act_bytes": ph.act_bytes,
                "kv_bytes": ph.kv_bytes,
                "intensity": ph.intensity,
            }

        print(
            json.dumps(
                {
                    "model": model,
                    "ceilings": None,
                    "why": why,
                    "costs": [
                        {"batch": b, "bits": w, "prefill": phase(pre), "decode": phase(dec)} for b, w, pre, dec in rows
                    ],
                },
                indent=2,
            )
        )
        return
    table = Table(title=f"{model}: analytic cost per phase (no ceilings, so no times)")
    for col in ("batch", "bits", "phase", "tokens", "context", "GFLOP", "weight GB", "act GB", "KV GB", "AI FLOP/B"):
        table.add_column(col, justify="right")
    for b, w, pre, dec in rows:
        for ph in (pre, dec):
            table.add_row(
                str(b),
                str(w),
                ph.phase,
                str(ph.tokens),
                str(ph.context),
                f"{ph.flops / 1e9:.4g}",
                f"{ph.weight_bytes / 1e9:.4g}",
                f"{ph.act_bytes / 1e9:.4g}",
                f"{ph.kv_bytes / 1e9:.4g}",
                f"{ph.intensity:.2f}",
            )
    console.print(table)
    console.print(f"[dim]{why}[/]")


def _op_table(phase, p, title: str) -> Table:
    table = Table(title=title)
    for col in ("op", "x", "GFLOP", "weight MB", "act MB", "KV MB", "AI FLOP/B", "bound", "time us"):
        table.add_column(col, justify="left" if col in ("op", "bound") else "right")
    for row in phase.op_rows(p.bandwidth, p.peak_flops):
        table.add_row(
            row["name"],
            f"{row['count']:g}",
            f"{row['flops'] / 1e9:.4f}",
            f"{row['weight_bytes'] / 1e6:.3f}",
            f"{row['act_bytes'] / 1e6:.3f}",
            f"{row['kv_bytes'] / 1e6:.3f}",
            f"{row['intensity']:.2f}",
            row["bound"],
            f"{row['time_s'] * 1e6:.1f}",
        )
    table.add_row(
        "[bold]total[/]",
        "",
        f"{phase.flops / 1e9:.4f}",
        f"{phase.weight_bytes / 1e6:.3f}",
        f"{phase.act_bytes / 1e6:.3f}",
        f"{phase.kv_bytes / 1e6:.3f}",
        f"{phase.intensity:.2f}",
        phase.bound(p.bandwidth, p.peak_flops),
        f"{phase.time_at_roofline(p.bandwidth, p.peak_flops) * 1e6:.1f}",
    )
    return table


# ---------------------------------------------------------------------------- hw


def _ceiling(c) -> str:
    return "-" if c is None else f"{c.value:g} {c.unit}"


@hw_app.command("list")
def hw_list() -> None:
    """All shipped hardware profiles."""
    from rooflens.roofline.hardware import list_profiles

    table = Table(title="hardware profiles (datasheet, dense)")
    for col in ("name", "device", "category", "memory", "bandwidth", "bf16", "fp32", "TDP"):
        table.add_column(col)
    for p in list_profiles():
        table.add_row(
            p.name,
            p.display_name,
            p.category,
            _ceiling(p.memory_capacity),
            _ceiling(p.memory_bandwidth),
            _ceiling(p.peak_flops.get("bf16")),
            _ceiling(p.peak_flops.get("fp32")),
            _ceiling(p.tdp),
        )
    console.print(table)


@hw_app.command("show")
def hw_show(name: str = typer.Argument(..., help="profile name (see `rooflens hw list`)")) -> None:
    """One profile with the source of every number."""
    from rooflens.roofline.hardware import UnknownProfileError, get_profile

    try:
        p = get_profile(name)
    except UnknownProfileError as err:
        _fail(str(err))
    table = Table(title=f"{p.name}: {p.display_name} ({p.category})")
    for col in ("quantity", "value", "source"):
        table.add_column(col, overflow="fold")
    rows = [("memory capacity", p.memory_capacity), ("memory bandwidth", p.memory_bandwidth), ("TDP", p.tdp)]
    rows += [(f"peak {k}", v) for k, v in p.peak_flops.items()]
    for label, c in rows:
        table.add_row(label, _ceiling(c), c.source if c else "-")
    console.print(table)
    if p.notes:
        console.print(p.notes)


@hw_app.command("detect")
def hw_detect(device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N")) -> None:
    """What this machine is and which profile it maps to."""
    import torch

    from rooflens.device.detect import detect_hardware
    from rooflens.roofline.hardware import resolve_profile

    device = _device(device)
    d = detect_hardware()
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    console.print(
        f"CPU: {d.cpu_model} ({d.cpu_cores_logical} logical cores"
        f"{f', {d.cpu_cores_physical} physical' if d.cpu_cores_physical else ''}); "
        f"SIMD: {', '.join(d.cpu_flags) or 'none detected'}; RAM {d.memory_total_bytes / 2**30:.1f} GiB"
    )
    if d.gpus:
        for g in d.gpus:
            console.print(f"GPU {g.index}: {g.name}, {g.memory_total_bytes / 2**30:.1f} GiB, driver {g.driver_version}")
    else:
        console.print("GPU: none detected")
    r = resolve_profile("auto", dev)
    console.print(f"profile for {dev}: [bold]{r.profile.name}[/] - {r.reason}")


@hw_app.command("probe")
def hw_probe(
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    quick: bool = typer.Option(False, "--quick", help="small sizes, a few seconds (less accurate)"),
    save: bool = typer.Option(True, "--save/--no-save", help="save the result as this machine's measured ceilings"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Measure this machine's real ceilings: copy bandwidth and GEMM peak per dtype, with spread."""
    import torch

    from rooflens.roofline.hardware import get_profile
    from rooflens.roofline.probe import ProbeError, probe, save_probe

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if _device(device) == "auto" else device
    try:
        result = probe(dev, quick=quick, progress=lambda msg: err_console.print(f"[dim]{msg}[/]"))
    except (ProbeError, ValueError) as err:
        _fail(str(err))
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        table = Table(
            title=f"measured ceilings: {result.device_name} ({result.device}, {result.threads} threads, "
            f"load {result.load_avg[0] if result.load_avg else float('nan'):.2f})"
        )
        for col in ("ceiling", "best", "median", "p10", "p90", "CV %", "vs datasheet", "size"):
            table.add_column(col, justify="left" if col == "ceiling" else "right")
        profile = get_profile(result.profile) if result.profile else None
        ratios = result.ratios(profile) if profile else {}
        rows = [("bandwidth GB/s", "bandwidth", result.bandwidth, 1e9)]
        rows += [(f"{k} {'TOP/s' if k == 'int8' else 'TFLOP/s'}", k, v, 1e12) for k, v in result.gemm.items()]
        for label, key, st, scale in rows:
            ratio = ratios.get(key)
            table.add_row(
                label,
                f"{st.max / scale:.4g}",
                f"{st.median / scale:.4g}",
                f"{st.p10 / scale:.4g}",
                f"{st.p90 / scale:.4g}",
                f"{100 * st.cv:.1f}",
                "-" if ratio is None else f"{ratio:.0%}",
                _probe_size(result.sizes, key),
            )
        table.caption = (
            "best = the ceiling used by `run` and `roofline`; how each was measured is in the saved JSON (`how`)"
        )
        console.print(table)
        for k, why in result.skipped.items():
            console.print(f"[dim]skipped {k}: {why}[/]")
    if save:
        path = save_probe(result)
        (err_console if as_json else console).print(
            f"saved: {path} (used as measured ceilings by `run` and `roofline` on this machine)"
        )


def _probe_size(sizes: dict[str, int], key: str) -> str:
    if key == "bandwidth":
        return f"{sizes.get('copy_bytes', 0) / 2**20:.0f} MiB copy"
    n = sizes.get(f"gemm_n.{key}", sizes.get("gemm_n"))
    return f"n={n}" if n else "-"


def _check_engine_options(engine: str, options: dict):
    """The EngineSpec of ``options``, or exit 2 naming each bad one as its command-line flag."""
    from rooflens.config import EngineSpec
    from rooflens.engines.options import validate_engine_options

    spec = EngineSpec(name=engine, options=options)
    problems = []
    for p in validate_engine_options(spec):
        field, _, message = p.partition(": ")
        name = field.removeprefix("options").removeprefix(".")
        problems.append(f"--{name.replace('_', '-')}: {message}" if name else message)
    if problems:
        _fail("; ".join(problems))
    return spec


def _training_model(model: str, device: str, dtype: str):
    """The model a `rooflens train` command works on, loaded as an experiment would load it, or exit 2."""
    from pydantic import ValidationError

    from rooflens.config import ModelSpec, parse_model_shorthand
    from rooflens.models.loader import TORCH_DTYPES, ModelLoadError, load_model, resolve_device

    if dtype not in TORCH_DTYPES:
        _fail(f"--dtype {dtype!r}: allowed {', '.join(TORCH_DTYPES)}")
    try:
        return load_model(
            ModelSpec(**parse_model_shorthand(model)), resolve_device(_device(device)), TORCH_DTYPES[dtype]
        )
    except (ModelLoadError, ValidationError, ValueError) as err:
        _fail(f"model {model!r}: {err}")


def _figures_table(title: str, figures: dict) -> None:
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)


@train_app.command("early-exit")
def train_early_exit(
    model: str = typer.Argument(..., help="smollm2-135m (built-in), shape:<config> or hf:<id or path>"),
    draft: str = typer.Option("head+lookup", help="candidate source: head, lookup, head+lookup or self:<k>"),
    k: int = typer.Option(4, help="candidate tokens per step"),
    draft_vocab: int = typer.Option(2048, "--draft-vocab", help="draft head's trimmed vocabulary"),
    prompts: int = typer.Option(16, help="training prompts cut from the shipped corpus"),
    prompt_len: int = typer.Option(64, "--prompt-len", help="tokens per training prompt"),
    gen_len: int = typer.Option(64, "--gen-len", help="greedy tokens per training prompt"),
    draft_epochs: int = typer.Option(20, "--draft-epochs"),
    predictor_epochs: int = typer.Option(300, "--predictor-epochs"),
    predictor_hidden: int = typer.Option(128, "--predictor-hidden"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N"),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16 (as the experiment will load it)"),
    force: bool = typer.Option(False, "--force", help="train again even when the cache has these settings"),
) -> None:
    """Train the early_exit engine's draft head and per-layer predictors for MODEL and cache them.

    The engine's prepare() finds them by model fingerprint and settings (the same defaults as its options).
    """
    from rooflens.engines.early_exit.engine import EarlyExitOptions
    from rooflens.engines.early_exit.training import artifact_path, load_or_train, save_artifacts, train

    options = {
        "draft": draft,
        "k": k,
        "draft_vocab": draft_vocab,
        "train_prompts": prompts,
        "train_prompt_len": prompt_len,
        "train_gen_len": gen_len,
        "draft_epochs": draft_epochs,
        "predictor_epochs": predictor_epochs,
        "predictor_hidden": predictor_hidden,
        "seed": seed,
    }
    _check_engine_options("early_exit", options)
    loaded = _training_model(model, device, dtype)
    settings = EarlyExitOptions.model_validate(options).settings
    progress = _progress_bar()
    task = progress.add_task("starting", total=None)

    def step(stage: str, done: int, total: int) -> None:
        progress.update(task, description=stage, completed=done, total=total)

    try:
        with progress:
            if force:
                path = artifact_path(loaded.model, loaded.info.label, settings)
                art, trained = train(loaded.model, loaded.tokenizer, settings, step), True
                save_artifacts(art, path)
            else:
                art, path, trained = load_or_train(loaded.model, loaded.tokenizer, loaded.info.label, settings, step)
    except ValueError as err:
        _fail(str(err))
    except OSError as err:
        _unwritable("early-exit cache", artifact_path(loaded.model, loaded.info.label, settings), err)
    console.print(f"{'trained and saved' if trained else 'already cached'}: {path}")
    rows: dict[str, object] = {}
    for key, value in art.report.items():
        if isinstance(value, dict):
            rows.update(
                {
                    f"{key} @ threshold {t}": ", ".join(f"{a} {b:.3f}" for a, b in sim.items())
                    for t, sim in value.items()
                }
            )
        else:
            rows[key] = value
    rows["offline layers (0-based)"] = " ".join(
        map(str, art.offline_layers(max(1, round(len(art.exit_histogram) / 4))))
    )
    _figures_table(f"early exit, {loaded.info.label}, draft {settings.draft}, k {settings.k}", rows)


@train_app.command("mixed-precision")
def train_mixed_precision(
    model: str = typer.Argument(..., help="smollm2-135m (built-in), shape:<config> or hf:<id or path>"),
    ladder: str = typer.Option("8,4", help="decode precisions, top first, e.g. 8,4 or 4,3,2"),
    group_size: int = typer.Option(64, "--group-size"),
    prefill_bits: str = typer.Option(
        "", "--prefill-bits", help="bits >= the top rung, or 'original' (default: the top rung)"
    ),
    lm_head: bool = typer.Option(True, "--lm-head/--no-lm-head", help="quantize the LM head too"),
    quality_budget: float = typer.Option(0.05, "--quality-budget", help="static: allowed mean ROUGE-L drop"),
    prompts: int = typer.Option(12),
    prompt_len: int = typer.Option(64, "--prompt-len"),
    gen_len: int = typer.Option(64, "--gen-len"),
    classifier_epochs: int = typer.Option(200, "--classifier-epochs"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N"),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16 (as the experiment will load it)"),
) -> None:
    """Tune the mixed_precision engine's static switch points and learned classifiers for MODEL, and cache them."""
    from rooflens.engines.base import EngineUnavailable, build_engine

    try:
        rungs = [int(b) for b in ladder.split(",")]
    except ValueError:
        _fail(f"--ladder {ladder!r}: comma-separated bits, e.g. 8,4")
    options = {
        "ladder": rungs,
        "group_size": group_size,
        "lm_head": lm_head,
        "quality_budget": quality_budget,
        "train_prompts": prompts,
        "train_prompt_len": prompt_len,
        "train_gen_len": gen_len,
        "classifier_epochs": classifier_epochs,
        "seed": seed,
    }
    if prefill_bits:
        options["prefill_bits"] = (
            prefill_bits
            if prefill_bits == "original"
            else int(prefill_bits)
            if prefill_bits.isdigit()
            else prefill_bits
        )
    spec = _check_engine_options("mixed_precision", options)
    loaded = _training_model(model, device, dtype)
    engine = build_engine(spec, loaded)
    if len(rungs) < 2:
        _fail(f"--ladder {ladder}: one rung never switches; nothing to tune")
    with console.status(f"tuning {model}: quantizing, then greedy runs at every switch point ..."):
        try:
            engine.prepare()
        except (EngineUnavailable, ValueError) as err:
            _fail(str(err))
    console.print(engine.tuning_note)
    _figures_table(f"mixed precision, {loaded.info.label}, ladder {rungs}", engine.tuning_report)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
