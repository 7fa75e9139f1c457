"""What the commands share: the consoles, one-line errors with their exit codes, and checked inputs."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rooflens.config import Experiment
    from rooflens.results.record import Record

INVALID_EXIT = 4
"""The exit code of `run --strict` and `compare --strict` when a measurement is invalid (and nothing worse happened)."""
INCONCLUSIVE_EXIT = 3
"""The exit code of `compare` when a comparison could not have detected the threshold (too few repetitions for the
noise it saw) and nothing worse happened; --allow-inconclusive turns it into 0."""

# a pipe or CI log gets a wide table instead of rich's default 80 columns
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``. The message is plain text, never markup: it
    often holds user text (a path, a label, an engine's error) where ``[/]`` is just characters."""
    from rich.text import Text

    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    raise typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a batch scheduler, a CI job cancelled, a closed terminal), handled as Ctrl-C is: the
    workers are stopped and the finished cells' records kept; the exit code is 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` in the main thread while the block runs."""

    def raise_terminated(signum: int, _frame) -> None:
        raise Terminated(signum)

    old = {s: signal.signal(s, raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def interrupted_exit(err: KeyboardInterrupt) -> int:
    """130 for Ctrl-C; 128 + the signal for SIGTERM/SIGHUP."""
    return err.exit_code if isinstance(err, Terminated) else 130


def unwritable(what: str, path: Path, err: OSError) -> NoReturn:
    from rooflens.results.store import describe_os_error

    fail(f"{what} {path}: cannot write there ({describe_os_error(err)})")


def write_text(path: Path, text: str, what: str) -> None:
    """Write ``text`` to ``path`` ('-' = stdout), or exit 2 saying why it cannot be written."""
    if str(path) == "-":
        print(text)
        return
    try:
        path.write_text(text)
    except OSError as err:
        unwritable(what, path, err)


def machine_lock_policy(no_wait: bool):
    """The machine lock's policy for a measuring command: wait, telling the user once whom for (stderr), or
    with ``--no-wait`` stop at once (:class:`~rooflens.device.lock.MachineBusy`)."""
    from rich.markup import escape

    from rooflens.device.lock import waiting

    return waiting(not no_wait, lambda text: err_console.print(f"[yellow]{escape(text)}[/]", highlight=False))


def check_device(value: str) -> str:
    """A --device option: auto, cpu, cuda or cuda:N (the experiment schema's rule), or exit 2."""
    from rooflens.device.spec import DeviceSpecError, parse_device
    from rooflens.text import quote

    try:
        parse_device(value)
    except DeviceSpecError:
        fail(f"--device {quote(value)}: allowed auto, cpu, cuda, cuda:N")
    return value


def load_experiment_or_exit(path: Optional[Path]) -> tuple[Experiment, str]:
    """The experiment in ``path`` (default: the shipped quickstart) and where it came from, or exit 2."""
    from rooflens.bench.validate import load_experiment
    from rooflens.config import ConfigError, builtin_experiment_path

    source = path or builtin_experiment_path()
    try:
        return load_experiment(source), str(source)
    except ConfigError as err:
        fail(f"invalid experiment\n{err}")


def records_or_exit(folder: Path) -> list[Record]:
    """The records under ``folder`` (a warning naming each file that cannot be read as one, left out), or a
    clean exit 2 saying why there are none."""
    from rooflens.results.store import RecordLoadError, load_records

    skipped: list[str] = []
    try:
        records = load_records(folder, skipped)
    except RecordLoadError as err:
        fail(str(err))
    warn_skipped(skipped)
    if not records:
        fail(f"{folder}: no records")
    return records


def warn_skipped(skipped: list[str]) -> None:
    """One warning line per file left out of a folder's records."""
    from rich.text import Text

    for why in skipped:
        err_console.print(Text.assemble(("warning:", "yellow"), " skipped ", why), highlight=False)


def int_list(text: str, option: str) -> list[int]:
    """Comma-separated positive integers (``--batch 1,8``), or exit 2."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        fail(f"{option} {text!r}: expected comma-separated positive integers, e.g. 1,8")
    return values


def save_chart(draw: Callable[[], Figure], png: Path, as_json: bool) -> None:
    """Draw a --png chart with plain text (no math text) and write it, or exit 2 saying why it cannot be written."""
    import matplotlib.pyplot as plt

    from rooflens.reports.plots import PLAIN_TEXT

    with plt.rc_context(PLAIN_TEXT):
        fig = draw()
        try:
            if png.is_dir():  # savefig would write <png>.png beside it instead of failing
                raise IsADirectoryError(21, "Is a directory")
            png.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(png, dpi=110)
        except OSError as err:
            unwritable("--png", png, err)
    (console if not as_json else err_console).print(f"chart: {png}")


def render_report(records: list[Record], out: Path, name: str) -> Path:
    """Write the HTML report (+ PNGs) of ``records`` to ``out`` and say where, or exit 2."""
    from rooflens.reports.html import render_html

    try:
        path = render_html(records, out, name)
    except OSError as err:
        unwritable("report folder", out, err)
    console.print(f"report: {path} ({len(records)} records; PNGs in {path.with_suffix('')})")
    return path
