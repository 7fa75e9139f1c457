"""`rooflens report BASE CURRENT`: the changes between two sets of records, cell by cell and metric by metric."""

import pytest
from typer.testing import CliRunner

from factories import judged, make_record, two_runs
from rooflens.cli import app
from rooflens.reports.changes import changes
from rooflens.reports.changes_page import render_changes_html, render_changes_markdown, rows
from rooflens.results.store import write_record


def test_changes_per_cell_and_metric_use_the_gate_tests():
    report = changes(*two_runs(), base_label="A", current_label="B")
    assert [c.cell for c in report.cells] == ["hf w b1", "fast w b1"]
    fast = {ch.metric.key: ch for ch in report.cells[1].changes}
    assert list(fast) == ["decode_tok_s", "prefill_tok_s", "ttft_s", "tpot_s", "speedup:decode_tok_s", "agreement"]
    d = fast["decode_tok_s"]
    assert d.base == pytest.approx(160, rel=0.03) and d.current == pytest.approx(130, rel=0.03)
    assert d.change == pytest.approx(-30 / 160, abs=0.02) and d.verdict == "regression" and d.p_value < 0.01
    assert d.test == "one-sided Mann-Whitney U (n=10 vs 10)" and d.source == "measured"
    speed = next(r for r in rows(report) if r["metric"].startswith("decode speedup"))
    assert speed["p"] == "<0.00025"  # no bootstrap draw of 4000 went the other way: not "0"
    assert fast["tpot_s"].verdict == "regression" and fast["tpot_s"].change > 0  # TPOT went up: worse
    assert fast["ttft_s"].verdict == "unchanged" and fast["ttft_s"].change == 0  # same samples on both sides
    s = fast["speedup:decode_tok_s"]
    assert s.verdict == "regression" and s.test.startswith("bootstrap") and s.source == "derived"
    assert s.base == pytest.approx(1.6, rel=0.03) and s.current == pytest.approx(1.3, rel=0.03)
    q = fast["agreement"]
    assert (q.verdict, q.p_value, q.change) == ("one value", None, 0.0)
    hf = {ch.metric.key for ch in report.cells[0].changes}
    assert "speedup:decode_tok_s" not in hf  # the baseline has no speedup over itself
    assert [(s.cell, s.base, s.current, s.reason) for s in report.status_changes] == [
        ("broke w b1", "ok", "failed", "broke broke")
    ]
    assert report.only_base == ["gone w b1"] and report.only_current == ["new w b1"]
    assert report.count("regression") == 3 and report.count("improvement") == 0


def test_unrelated_sets_still_list_both_sides():
    base = [make_record("hf", 1, 100.0, experiment="x")]
    current = [make_record("hf", 1, 100.0, experiment="y")]
    report = changes(base, current)
    assert report.cells == [] and report.only_base == ["x/m: hf w b1"] and report.only_current == ["y/m: hf w b1"]
    assert any(n.startswith("no cell matches") for n in report.notes)


def test_changes_page_and_markdown(tmp_path):
    report = changes(*two_runs(), base_label="A", current_label="B")
    path = render_changes_html(report, tmp_path, "A-vs-B")
    html = path.read_text()
    assert path == tmp_path / "A-vs-B.html" and not list(tmp_path.glob(".*.tmp"))
    assert html.count('<tr class="regression">') == 3 and "broke broke" in html and "gone w b1" in html
    assert "http://" not in html and "https://" not in html
    decode = next(r for r in rows(report) if r["cell"] == "fast w b1" and r["metric"] == "decode (tok/s)")
    assert decode["direction"] == "worse" and decode["change"].startswith("-1")
    md = render_changes_markdown(report)
    assert md.startswith("**rooflens changes**: A -> B: 2 matching cell(s), 3 significant regression(s)")
    assert (
        "| fast w b1 | decode (tok/s) | measured | 158.3 | 128.6 | -18.7% |" in md
        and "| broke w b1 | ok | failed | broke broke |" in md
    )


def test_report_command_with_two_folders_writes_the_changes(tmp_path):
    base, current = two_runs()
    for folder, recs in (("A", base), ("B", current)):
        for r in recs:
            write_record(tmp_path / folder, r)
    runner = CliRunner()
    args = ["report", str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(tmp_path / "rep")]
    r = runner.invoke(app, [*args, "--markdown", str(tmp_path / "changes.md")])
    assert r.exit_code == 0, r.output
    assert "3 significant regression(s)" in r.output and (tmp_path / "rep" / "A-vs-B.html").exists()
    assert (tmp_path / "changes.md").read_text().startswith("**rooflens changes**")
    r = runner.invoke(app, [*args, "--threshold", "150%"])
    assert r.exit_code == 2 and "--threshold" in r.output
    r = runner.invoke(app, ["report", str(tmp_path / "A"), str(tmp_path / "B"), str(tmp_path / "A")])
    assert r.exit_code == 2 and "give one" in r.output


def test_a_cell_measured_invalid_is_not_called_a_regression_in_the_changes():
    base, current = two_runs()
    judged(current[1], "cv 14% > 10%")  # fast, which slowed down 160 -> 130
    fast = {ch.metric.key: ch for ch in changes(base, current).cells[1].changes}
    d = fast["decode_tok_s"]
    assert d.verdict == "invalid" and d.test == "not judged, measurement invalid (current: cv 14% > 10%)"
    assert fast["agreement"].verdict == "one value"
