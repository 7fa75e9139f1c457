"""User text (labels, names, error messages) is shown as written, never read as console markup."""

import pytest
from typer.testing import CliRunner

from rooflens.cli import app
from rooflens.engines.hf import HFEngine
from rooflens.results.store import load_records

runner = CliRunner()

MARKUP = "x[/]y[bold]"

EXPERIMENT = f"""
name: tiny
model: shape:tiny-llama
engines: [{{name: hf, label: "{MARKUP}"}}]
workloads: [{{name: "w{MARKUP}", prompt_len: 8, gen_len: 4}}]
repetitions: {{warmup: 0, min_reps: 1, min_seconds: 0}}
device: cpu
"""


@pytest.mark.slow
def test_labels_that_look_like_markup_are_printed_as_written(tmp_path):
    yaml = tmp_path / "x.yaml"
    yaml.write_text(EXPERIMENT)
    res = tmp_path / "res"
    r = runner.invoke(app, ["validate", str(yaml)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["run", str(yaml), "--results", str(res)])
    assert r.exit_code == 0, r.output
    assert MARKUP in r.output
    for args in (
        ["show", str(res)],
        ["compare", str(res), str(res), "--allow-inconclusive"],
        ["report", str(res), "--out", str(tmp_path / "rep")],
    ):
        r = runner.invoke(app, args)
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
        assert r.exit_code in (0, 3), (args, r.output)
    assert MARKUP in runner.invoke(app, ["show", str(res)]).output
    r = runner.invoke(app, ["report", str(res), "--out", str(tmp_path / "rep"), "--name", "r[/]"])
    assert r.exit_code == 2 and "--name 'r[/]': use letters" in r.output  # refused, saying what it was given


@pytest.mark.slow
def test_an_engine_error_without_a_message_fails_its_cell_and_the_sweep_goes_on(tmp_path, monkeypatch):
    def fails(self, *args, **kwargs):
        raise RuntimeError()

    monkeypatch.setattr(HFEngine, "generate", fails)
    yaml = tmp_path / "x.yaml"
    yaml.write_text(EXPERIMENT.replace("batch_sizes", "").replace("gen_len: 4}", "gen_len: 4, batch_sizes: [1, 2]}"))
    r = runner.invoke(app, ["run", str(yaml), "--results", str(tmp_path / "res")])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    records = load_records(tmp_path / "res")
    assert sorted(rec.cell.batch_size for rec in records) == [1, 2]
    assert all(rec.status == "failed" and rec.reason.type == "RuntimeError" for rec in records)


def test_tables_of_figures_and_platforms_show_titles_and_keys_as_written():
    from rich.console import Console

    from rooflens.reports.console import figures_table

    console = Console(record=True, width=200)
    console.print(figures_table(f"mixed precision, {MARKUP}", {f"k{MARKUP}": 1.0, "v": MARKUP}))
    text = console.export_text()
    assert f"mixed precision, {MARKUP}" in text and f"k{MARKUP}" in text and text.count(MARKUP) == 3


@pytest.mark.slow
def test_history_prints_series_names_as_written(tmp_path):
    from factories import make_record
    from rooflens.results.store import write_record

    for i, decode in enumerate([100.0] * 10 + [60.0] * 10):  # one step: a change point in the series
        record = make_record(engine=MARKUP, decode=decode, run_id=f"r{i}", seed=i)
        record.started_at = f"2026-01-{i + 1:02d}T00:00:00+00:00"
        write_record(tmp_path / "res" / f"r{i}", record)
    r = runner.invoke(app, ["history", str(tmp_path / "res"), "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    assert MARKUP in r.output
