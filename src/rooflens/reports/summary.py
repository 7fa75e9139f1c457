"""The terminal summary table of a set of records."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text

from rooflens.reports.table import cell_row, format_value, header, table_notes, visible_columns
from rooflens.results.record import Record


def summary_table(records: Iterable[Record], title: str = "rooflens results") -> Table:
    records = list(records)
    rows = [cell_row(r, records) for r in records]
    cols = visible_columns(rows)
    table = Table(title=Text(title))  # titles and cells are user text (labels), never markup
    for c in cols:
        table.add_column(header(c), justify="right" if c.numeric else "left", overflow="fold")
    for r, row in zip(records, rows):
        table.add_row(*(Text(format_value(c, row[c.key])) for c in cols), style="red" if r.validity.invalid else None)
    table.caption = Text(
        "\n".join(
            [
                "medians over the measured repetitions; CV of decode tok/s; speedup = decode tok/s over the baseline engine of the same run "
                "(median of paired rounds where interleaved, else the ratio of medians)",
                *table_notes(records),
            ]
        )
    )
    return table
