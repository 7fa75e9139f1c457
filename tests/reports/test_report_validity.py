"""Validity in what a reader sees: the summary table, markdown and HTML mark invalid cells with their reasons;
records from before the check load and show no validity column."""

import io
import json

from factories import judged, make_record
from rooflens.reports.html import render_html, render_markdown
from rooflens.reports.summary import summary_table
from rooflens.reports.table import cell_row, visible_columns
from rooflens.results.store import load_records, record_row, write_record


def _records():
    return [judged(make_record("hf", 1, 100.0)), judged(make_record("fast", 1, 150.0, seed=2), "cv 14% > 10%")]


def _text(table) -> str:
    from rich.console import Console

    console = Console(width=250, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_the_summary_table_has_a_valid_column_with_the_reasons():
    records = _records()
    rows = [cell_row(r, records) for r in records]
    assert [row["validity"] for row in rows] == ["valid", "invalid (cv 14% > 10%)"]
    assert "validity" in [c.key for c in visible_columns(rows)]
    assert [(x["validity"], x["validity_reasons"]) for x in map(record_row, records)] == [
        ("valid", None),
        ("invalid", "cv 14% > 10%"),
    ]
    text = _text(summary_table(records))
    assert "invalid (cv 14% > 10%)" in text and "invalid cells are never ranked" in text


def test_markdown_and_html_mark_invalid_cells(tmp_path):
    records = _records()
    assert "| invalid (cv 14% > 10%) |" in render_markdown(records)
    html = render_html(records, tmp_path, "r").read_text()
    assert '<tr class="invalid">' in html and "Failed, unavailable and invalid cells" in html
    assert '<td class="text">invalid</td><td class="text">cv 14% &gt; 10%</td>' in html


def test_records_without_validity_still_load_and_show_no_valid_column(tmp_path):
    path = write_record(tmp_path, make_record("hf", 1, 100.0))
    data = json.loads(path.read_text())
    assert data.pop("validity") == {
        "status": "n/a",
        "reasons": [],
        "limits": {},
        "measured": {},
        "notes": [],
        "other_measurement": None,
    }
    path.write_text(json.dumps(data))
    (old,) = load_records(tmp_path)
    assert old.validity.status == "n/a" and not old.validity.invalid
    assert "validity" not in [c.key for c in visible_columns([cell_row(old, [old])])]
