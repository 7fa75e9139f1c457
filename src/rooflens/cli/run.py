"""`rooflens run` and `rooflens validate`: measure experiments, or check one without measuring."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from rooflens.cli.common import (
    INVALID_EXIT,
    console,
    err_console,
    fail,
    interrupted_exit,
    load_experiment_or_exit,
    machine_lock_policy,
    render_report,
    stop_signals_interrupt,
)

if TYPE_CHECKING:
    from rooflens.bench.runner import ExperimentRunner, RunResult
    from rooflens.bench.sweep import Sweep
    from rooflens.config import Experiment
    from rooflens.results.record import Record


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
    strict: bool = typer.Option(
        False, "--strict", help=f"exit {INVALID_EXIT} when any cell's measurement is invalid (CV, load, clocks, ...)"
    ),
    cell_timeout: Optional[float] = typer.Option(
        None,
        "--cell-timeout",
        help="seconds a cell may go without progress before its worker is killed and the cell fails "
        "(default: the experiment's cell_timeout_s; runs under subprocess unless --executor ray)",
    ),
    no_wait: bool = typer.Option(
        False,
        "--no-wait",
        help="exit 2 at once, naming it, when another measurement holds this machine's lock (default: wait for it)",
    ),
) -> None:
    """Run experiments: every engine x workload x batch size, one JSON record per cell.

    Several files share one executor: under ray one cluster, with all their groups in flight together;
    otherwise one experiment after another. Each keeps its own results folder, summary and report.

    One measurement per machine at a time: while another run or probe holds the machine lock, this one
    waits (saying who holds it), or with --no-wait stops.

    Exit codes: 0 every cell ok or unavailable (an engine that cannot run on this device);
    1 at least one cell failed; 2 the experiment could not start (invalid file, a model that
    cannot be loaded or does not fit, an output folder that cannot be written, with --no-wait
    another measurement holding the machine lock), or a measured record could not be written to the
    results folder (it went to $ROOFLENS_RESCUE, default <temp>/rooflens-rescued, as the message says);
    4 with --strict, a cell's measurement is invalid (its record says why) and none failed;
    130 interrupted (Ctrl-C; 143 SIGTERM, 129 SIGHUP): workers are stopped and the records of finished
    cells kept. With several files: the worst of theirs (2, then 1, then 4). Without --strict, invalid
    cells are reported and the exit code is unchanged.
    """
    from rooflens.bench.sweep import Sweep, SweepError

    loaded = [load_experiment_or_exit(path) for path in experiment or [None]]  # all checked before anything runs
    try:
        sweep = Sweep.plan(loaded, executor, ray_address, cell_timeout)
    except SweepError as err:
        fail(str(err))
    outcomes = _measure(sweep, results, report, quiet, no_wait, several=len(loaded) > 1)
    codes = [
        _outcome(exp, source, runner, result, report, strict)
        for (exp, source), runner, result in zip(sweep.experiments, sweep.runners, outcomes)
    ]
    code = max(codes, key=SEVERITY.index)
    if code:
        raise typer.Exit(code)


def _measure(sweep: Sweep, results: Path | None, report: bool, quiet: bool, no_wait: bool, several: bool) -> list:
    """Build each experiment's runner (saying what runs where), then run the sweep under the machine lock's
    policy with a progress bar; a run that cannot start, or Ctrl-C, ends the command with its exit code."""
    from rich.markup import escape

    from rooflens.cli.progress import ProgressObserver, progress_bar
    from rooflens.device.lock import MachineBusy
    from rooflens.models.loader import ModelLoadError
    from rooflens.results.store import OutputError, RecordExistsError

    progress = progress_bar(quiet)
    try:
        with stop_signals_interrupt(), machine_lock_policy(no_wait):
            for runner in sweep.build_runners(
                results, lambda exp: ProgressObserver(progress, exp.name if several else ""), reports=report
            ):
                exp = runner.exp
                console.print(
                    f"rooflens: experiment [bold]{escape(exp.name)}[/] ({escape(runner.source)}) on {runner.device}, "
                    f"dtype {str(runner.dtype).removeprefix('torch.')}"
                    + (f", executor {exp.executor}" if exp.executor != "inline" else "")
                )
            with progress:
                return sweep.run()
    except (ModelLoadError, OutputError, RecordExistsError, MachineBusy) as err:
        fail(str(err))
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, SIGHUP
        fail(sweep.interrupted(), interrupted_exit(err))


SEVERITY = (0, INVALID_EXIT, 1, 2)
"""Exit codes of one experiment, mildest first: several files exit with the worst of theirs."""


def _outcome(
    exp: Experiment, source: str, runner: ExperimentRunner, result: RunResult | Exception, report: bool, strict: bool
) -> int:
    """Print what one experiment measured (or what stopped it); its exit code."""
    from rich.markup import escape
    from rich.text import Text

    from rooflens.bench.preflight import PreflightError
    from rooflens.reports.story import story
    from rooflens.reports.summary import summary_table

    if isinstance(result, Exception):  # this experiment stopped; the others ran on
        message = f"{source}: {result}" if isinstance(result, PreflightError) else str(result)
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        return 2
    console.print(summary_table(result.records, title=f"{exp.name} - {runner.profile_info['display_name']}"))
    ok = sum(r.status == "ok" for r in result.records)
    console.print(f"{ok}/{len(result.records)} cells ok; records in {result.folder}")
    model = next((r.model for r in result.records if r.model is not None), None)
    if model is not None and model.weights_origin:
        console.print(f"[dim]model: {escape(model.label)}, weights {escape(model.weights_origin)}[/]", highlight=False)
    if runner.probe is not None:
        threads = runner.probe.key_threads
        console.print(
            f"[dim]roofline ceilings: measured by `rooflens hw probe` at {runner.probe.measured_at}"
            f"{f', {threads} threads' if threads else ''}"
            f"{'' if runner.profile_info['matched'] else ' (no datasheet profile for this device)'}[/]"
        )
    elif runner.probe_refused:
        console.print(f"[dim]no measured ceilings: {escape(runner.probe_refused)}[/]", highlight=False)
    elif not runner.profile_info["matched"]:
        console.print(f"[dim]hardware: {runner.profile_info['reason']}[/]")
    for line in story(result.records):
        console.print(f"- {escape(line)}", highlight=False)
    if report:
        render_report(result.records, Path(exp.output.reports_dir), exp.name)
    invalid = [r for r in result.records if r.validity.invalid]
    if invalid:
        err_console.print(
            f"[magenta]{len(invalid)} cell(s) invalid{'' if strict else ' (--strict fails on them)'}:[/] "
            + escape(", ".join(f"{_name(r)} ({'; '.join(x.message for x in r.validity.reasons)})" for r in invalid)),
            highlight=False,
        )
    for why in runner.unwritten:  # measured, but not where the results folder says: the exit code must show it
        err_console.print(Text.assemble(("error:", "bold red"), " a record was not saved in the run folder: ", why))
    failed = [r for r in result.records if r.status == "failed"]
    if failed:
        err_console.print(f"[bold red]{len(failed)} cell(s) failed:[/] " + escape(", ".join(map(_name, failed))))
    if runner.unwritten:
        return 2
    if failed:
        return 1
    return INVALID_EXIT if strict and invalid else 0


def _name(r: Record) -> str:
    return f"{r.cell.engine_label} {r.cell.workload} b{r.cell.batch_size}"


def validate(experiment: Path = typer.Argument(..., help="experiment YAML")) -> None:
    """Check an experiment file without running it."""
    exp, source = load_experiment_or_exit(experiment)
    from rooflens.bench.cells import expand_cells

    cells = expand_cells(exp)
    console.print(
        f"{source}: ok - model {exp.model.label}, {len(exp.engines)} engine(s), {len(cells)} cell(s), "
        f"config hash {exp.config_hash()}"
    )
