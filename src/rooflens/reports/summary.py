"""The terminal summary table of a set of records (the HTML report is built elsewhere)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table

from rooflens.results.record import Record


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _median(r: Record, name: str, scale: float = 1.0, digits: int = 1) -> str:
    m = r.metrics.get(name)
    return "-" if m is None else f"{m.median * scale:.{digits}f}"


def _cv(r: Record, name: str) -> str:
    m = r.metrics.get(name)
    return "-" if m is None else f"{100 * m.cv:.1f}"


def energy_cell(r: Record) -> str:
    """tokens/J, or n/a (the reason is printed once under the table by :func:`energy_notes`)."""
    e = r.energy
    if e is None or e.tokens_per_joule is None or e.tokens_per_joule.value is None:
        return "n/a"
    return f"{e.tokens_per_joule.value:.2f}" + (" (short window)" if e.short_window else "")


def energy_notes(records: Iterable[Record]) -> list[str]:
    """Why tokens/J is missing, once per distinct reason."""
    reasons = {r.energy.reason for r in records if r.energy is not None and not r.energy.measured and r.energy.reason}
    return [f"tok/J n/a: {reason}" for reason in sorted(reasons)]


def summary_table(records: Iterable[Record], title: str = "rooflens results") -> Table:
    records = list(records)
    table = Table(title=title, show_lines=False)
    for col in (
        "engine", "batch", "prompt/gen", "TTFT ms", "TPOT ms", "decode tok/s", "CV %", "e2e tok/s",
        "tok/J", "peak mem MB", "reps", "status",
    ):  # fmt: skip
        table.add_column(col, justify="left" if col in ("engine", "tok/J", "status") else "right", overflow="fold")
    for r in records:
        c = r.cell
        status = r.status if r.reason is None else f"{r.status}: {r.reason.message.splitlines()[0][:160]}"
        table.add_row(
            c.engine_label,
            str(c.batch_size),
            f"{c.prompt_len}/{c.gen_len}",
            _median(r, "ttft_s", 1e3),
            _median(r, "tpot_s", 1e3, 2),
            _median(r, "decode_tok_s"),
            _cv(r, "decode_tok_s"),
            _median(r, "e2e_tok_s"),
            energy_cell(r),
            _fmt(r.memory.peak_bytes.value if r.memory else None, 1e-6, 0),
            str(r.repetitions.measured) if r.repetitions else "-",
            status,
        )
    table.caption = "\n".join(["medians over the measured repetitions; CV = std/mean of decode tok/s", *energy_notes(records)])
    return table
