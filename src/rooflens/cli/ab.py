"""`rooflens ab`: two revisions, or two experiment variants, measured side by side on this machine, one verdict."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import typer

from rooflens.cli.common import console, fail, write_text
from rooflens.cli.gate import gate_exit, print_verdict

DEFAULT_SRC = Path("src")


def _schema_only(path: Path):
    """The experiment, checked against the schema only: its engines may exist only in a side's source tree (a
    plug-in under test), so the workers check them."""
    from rooflens.config import ConfigError, parse_experiment, read_experiment_file

    try:
        return parse_experiment(read_experiment_file(path), str(path)), str(path)
    except ConfigError as err:
        fail(f"invalid experiment\n{err}")


def _what_to_measure(base, head, experiment, configs, aa):
    """The two sides' experiments, and the revisions (``BASE EXPERIMENT --aa`` reads the second argument as the
    experiment); exit 2 on a combination that does not make one."""
    if configs:
        if len(configs) != 2 or base or head or experiment or aa:
            fail("--configs takes two experiment files (--configs A.yaml --configs B.yaml) and no revisions")
        return (_schema_only(configs[0]), _schema_only(configs[1])), base, head
    if aa and experiment is None and head is not None:
        experiment, head = Path(head), base
    if aa:
        head = base
    if base is None or head is None or experiment is None:
        fail("give BASE HEAD EXPERIMENT, or BASE EXPERIMENT with --aa, or --configs A.yaml --configs B.yaml")
    return (_schema_only(experiment), _schema_only(experiment)), base, head


def _thresholds(max_regression: str, detect: str | None, alpha: float) -> tuple[float, float]:
    """--max-regression and --detect as fractions; exit 2 on values that make no gate."""
    from rooflens.results.compare import CompareInputError, parse_threshold

    try:
        threshold = parse_threshold(max_regression)
        found = 2 * threshold if detect is None else parse_threshold(detect)
    except CompareInputError as err:
        fail(f"--max-regression / --detect: {err}")
    if not 0 < alpha < 1:
        fail(f"--alpha {alpha:g}: must be between 0 and 1 (exclusive), e.g. 0.05")
    if not threshold < found < 1:
        fail(f"--detect {found:.0%}: must be above --max-regression ({threshold:.0%}) and below 100%, e.g. 10%")
    return threshold, found


def ab(
    base: Optional[str] = typer.Argument(None, help="git revision measured as the base (e.g. main, HEAD~1)"),
    head: Optional[str] = typer.Argument(None, help="git revision measured against it (e.g. HEAD)"),
    experiment: Optional[Path] = typer.Argument(None, help="the experiment both revisions run"),
    src: Path = typer.Option(
        DEFAULT_SRC, "--src", help="the source folder (in a git repository) put first on the workers' path"
    ),
    configs: Optional[list[Path]] = typer.Option(
        None, "--configs", help="two experiment files measured against each other on the working tree (give twice)"
    ),
    aa: bool = typer.Option(
        False, "--aa", help="measure BASE against itself (the noise floor: nothing may be flagged)"
    ),
    rounds: int = typer.Option(8, "--rounds", min=3, help="rounds per cell at least (each: one block of each side)"),
    max_rounds: int = typer.Option(
        64, "--max-rounds", min=3, help="rounds per cell at most: more are added until the cell is powered"
    ),
    block_reps: int = typer.Option(1, "--block-reps", min=1, help="repetitions in a block"),
    max_regression: str = typer.Option("5%", "--max-regression", help="largest tolerated worsening of a metric"),
    detect: Optional[str] = typer.Option(
        None, "--detect", help="the slowdown to catch 95 % of the time before calling a cell unchanged (default 2x)"
    ),
    alpha: float = typer.Option(0.05, "--alpha", help="significance level (one-sided Wilcoxon signed-rank test)"),
    metric: list[str] = typer.Option(
        None, "--metric", help="metric to judge (repeatable; default decode_tok_s, ttft_s)"
    ),
    results: Optional[Path] = typer.Option(None, "--results", help="results folder (default: the experiment's)"),
    markdown: Optional[Path] = typer.Option(
        None, "--markdown", help="also write the verdict as markdown ('-' = stdout)"
    ),
    allow_inconclusive: bool = typer.Option(False, "--allow-inconclusive", help="exit 0 (not 3) on inconclusive cells"),
) -> None:
    """Measure BASE and HEAD (or --configs A B) in one job on this machine, interleaved, and judge every cell.

    Each side is a long-lived worker of its own revision (checked out into a temporary worktree; its --src
    folder first on an isolated path); the driver alternates short blocks between them (A B, B A, ...), so
    the machine's drift hits both alike, and pairs them round by round. Exit 1 on a lost cell or a
    significant regression beyond --max-regression (every engine, the baseline too); 3 when nothing failed
    but a cell could not have shown the threshold with the noise measured (the verdict says how many rounds
    would), unless --allow-inconclusive; 2 on unusable input; 0 otherwise. A cell gets --rounds rounds, then
    more until a slowdown of --detect would be flagged 95 % of the time (at most --max-rounds).
    """
    from rooflens.bench.ab import AbError, AbPlan, SideSource, checkouts, run_ab
    from rooflens.bench.runner import SilentObserver
    from rooflens.results.ab_verdict import AB_METRICS, ab_verdict, powered
    from rooflens.results.compare import CompareInputError, to_markdown

    loaded, base, head = _what_to_measure(base, head, experiment, configs, aa)
    threshold, found = _thresholds(max_regression, detect, alpha)
    metrics = tuple(metric or AB_METRICS)
    enough = partial(powered, metrics=metrics, threshold=threshold, detect=found, alpha=alpha)
    plan = AbPlan(loaded[0], loaded[1], rounds, max(rounds, max_rounds), block_reps, results, enough)
    try:
        if configs:
            sources = (
                SideSource("base", "working tree", src.resolve()),
                SideSource("head", "working tree", src.resolve()),
            )
            a, b = run_ab(plan, sources, SilentObserver())
        else:
            with checkouts(src, base, head, same=aa) as sources:
                a, b = run_ab(plan, sources, SilentObserver())
        result = ab_verdict(a.records, b.records, metrics=metrics, threshold=threshold, alpha=alpha, detect=found)
    except (AbError, CompareInputError) as err:
        fail(str(err))
    title = (
        f"ab: {a.source.revision[:12]} -> {b.source.revision[:12]} ({rounds}-{plan.max_rounds} rounds of "
        f"{block_reps}; threshold {threshold:.0%}, {found:.0%} caught 95 %, alpha {alpha})"
    )
    print_verdict(result, title)
    console.print(f"records: {a.runner.folder} (base), {b.runner.folder} (head)")
    if markdown is not None:
        test = "rounds paired, one-sided Wilcoxon signed-rank"
        write_text(markdown, to_markdown(result, threshold, alpha, "rooflens ab", test), "--markdown")
    gate_exit(result, threshold, allow_inconclusive=allow_inconclusive)
