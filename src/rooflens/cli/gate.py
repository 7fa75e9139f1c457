"""What `compare` and `ab` do with a verdict: print it, and exit as docs/ci.md's table says."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from rooflens.cli.common import INCONCLUSIVE_EXIT, INVALID_EXIT, console

if TYPE_CHECKING:
    from rooflens.results.compare import CompareResult


def print_verdict(result: CompareResult, title: str) -> None:
    """The verdict table, the lost cells, the notes and the cells found on one side only."""
    from rooflens.reports.console import compare_table, lost_table

    console.print(compare_table(result, title))
    if result.lost:
        console.print(lost_table(result))
    for note in result.notes:
        console.print(f"[yellow]{note}[/]")
    if result.only_in_current:
        console.print(f"[dim]only in current: {', '.join(result.only_in_current)}[/]")


def gate_exit(
    result: CompareResult, threshold: float, *, strict: bool = False, allow_inconclusive: bool = False
) -> None:
    """Exit 1 on a lost cell or a significant regression; else 3 on an inconclusive comparison (unless allowed);
    else 4 with ``strict`` on an invalid one; else return (exit 0)."""
    if result.invalid:
        console.print(
            f"[magenta]{len(result.invalid)} comparison(s) not judged: a measurement is invalid"
            f"{'' if strict else ' (--strict fails on them)'}[/]"
        )
    if result.failed:
        console.print(
            f"[bold red]{len(result.lost)} lost cell(s), {len(result.regressions)} significant regression(s) "
            f"over {threshold:.0%}[/]"
        )
        raise typer.Exit(1)
    if result.inconclusive:
        console.print(
            f"[yellow]{len(result.inconclusive)} comparison(s) inconclusive: the threshold could not have been "
            f"detected with the noise and repetitions measured{'' if allow_inconclusive else ' (exit 3)'}[/]"
        )
        if not allow_inconclusive:
            raise typer.Exit(INCONCLUSIVE_EXIT)
    console.print("no significant regression")
    if strict and result.invalid:
        raise typer.Exit(INVALID_EXIT)
