"""compare: detects a real regression, ignores noise, refuses unusable input."""

import pytest
from typer.testing import CliRunner

from factories import judged, make_record
from rooflens.cli import app
from rooflens.results.compare import CompareInputError, compare_records, parse_threshold
from rooflens.results.store import write_record


def run(engine_decode: dict, seed: int, run_id: str, rel_sd=0.02, n=10, **kw):
    return [
        make_record(engine=e, decode=d, seed=seed + i, run_id=run_id, rel_sd=rel_sd, n=n, **kw)
        for i, (e, d) in enumerate(engine_decode.items())
    ]


def verdicts(result, metric="decode_tok_s"):
    return {r.cell.split("/")[2]: r.verdict for r in result.rows if r.metric == metric}


def test_injected_20_percent_slowdown_is_a_regression():
    base = run({"hf": 100.0, "fast": 150.0}, seed=0, run_id="a")
    cur = run({"hf": 100.0, "fast": 120.0}, seed=100, run_id="b")
    res = compare_records(base, cur, threshold=0.05)
    assert verdicts(res) == {"hf": "unchanged", "fast": "regression"}
    row = next(r for r in res.rows if r.cell.endswith("/fast/w/b1") and r.metric == "decode_tok_s")
    assert row.change == pytest.approx(-0.2, abs=0.03) and row.p_value < 0.01
    # TPOT is lower-is-better: the same slowdown shows as a regression there too
    assert verdicts(res, "tpot_s")["fast"] == "regression"


def test_pure_noise_of_the_same_spread_is_not_flagged():
    flagged = 0
    for trial in range(20):
        base = run({"hf": 100.0, "fast": 150.0}, seed=1000 + 10 * trial, run_id="a", rel_sd=0.05)
        cur = run({"hf": 100.0, "fast": 150.0}, seed=5000 + 10 * trial, run_id="b", rel_sd=0.05)
        flagged += len(compare_records(base, cur, threshold=0.05).regressions)
    assert flagged == 0


def test_small_change_below_threshold_is_not_a_regression_even_if_significant():
    base = run({"hf": 100.0}, seed=0, run_id="a", rel_sd=0.001)
    cur = run({"hf": 97.0}, seed=50, run_id="b", rel_sd=0.001)
    row = next(r for r in compare_records(base, cur, threshold=0.05).rows if r.metric == "decode_tok_s")
    assert row.significant and row.verdict == "unchanged"


def test_relative_metric_ignores_machine_wide_drift():
    # everything is 30% slower on the current machine, the engine's speedup is unchanged
    base = run({"hf": 100.0, "fast": 150.0}, seed=0, run_id="a")
    cur = run({"hf": 70.0, "fast": 105.0}, seed=100, run_id="b")
    absolute = compare_records(base, cur, metrics=("decode_tok_s",))
    relative = compare_records(base, cur, metrics=("speedup:decode_tok_s",))
    assert verdicts(absolute) == {"hf": "regression", "fast": "regression"}
    assert [r.verdict for r in relative.rows] == ["unchanged"]  # only 'fast' has a speedup; hf is the baseline
    # and a real loss of speedup is caught
    cur2 = run({"hf": 70.0, "fast": 84.0}, seed=200, run_id="c")
    assert [r.verdict for r in compare_records(base, cur2, metrics=("speedup:decode_tok_s",)).rows] == ["regression"]


def test_unusable_input():
    base = run({"hf": 100.0}, seed=0, run_id="a")
    with pytest.raises(CompareInputError, match="no matching cells"):
        compare_records(base, run({"other": 100.0}, seed=0, run_id="b"))
    gpu_env = {"hardware": {"cpu_model": "Test CPU", "gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}}
    other_hw = run({"hf": 100.0}, seed=0, run_id="b", env=gpu_env)
    with pytest.raises(CompareInputError, match="different hardware"):
        compare_records(base, other_hw)
    assert compare_records(base, other_hw, allow_hardware_mismatch=True).notes
    with pytest.raises(CompareInputError, match="unknown metric 'tok_s'"):
        compare_records(base, base, metrics=("tok_s",))
    assert parse_threshold("5%") == pytest.approx(0.05) and parse_threshold("0.1") == pytest.approx(0.1)
    with pytest.raises(CompareInputError):
        parse_threshold("lots")


def test_cli_exit_codes(tmp_path):
    runner = CliRunner()
    for folder, recs in (
        ("base", run({"hf": 100.0, "fast": 150.0}, 0, "a")),
        ("slow", run({"hf": 100.0, "fast": 120.0}, 100, "b")),
        ("same", run({"hf": 100.0, "fast": 150.0}, 200, "c")),
        ("other", run({"x": 1.0}, 0, "d")),
    ):
        for r in recs:
            write_record(tmp_path / folder, r)
    r = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "slow"), "--max-regression", "5%"])
    assert r.exit_code == 1 and "regression" in r.output
    r = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "same")])
    assert r.exit_code == 0 and "no significant regression" in r.output
    r = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "other")])
    assert r.exit_code == 2 and "no matching cells" in r.output
    md = tmp_path / "c.md"
    r = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "slow"), "--markdown", str(md)])
    assert "| cell | metric |" in md.read_text() and "regression" in md.read_text()


def test_relative_metric_counts_the_baselines_own_noise():
    # the baseline engine is very noisy (30 %): a 13 % drop of the speedup cannot be told from its noise,
    # while the same drop with a quiet baseline is a clear regression
    noisy = compare_records(
        [
            make_record("hf", decode=100.0, rel_sd=0.3, seed=1, run_id="a"),
            make_record("fast", decode=150.0, seed=2, run_id="a"),
        ],
        [
            make_record("hf", decode=100.0, rel_sd=0.3, seed=3, run_id="b"),
            make_record("fast", decode=130.0, seed=4, run_id="b"),
        ],
        metrics=("speedup:decode_tok_s",),
        alpha=0.01,
    )
    quiet = compare_records(
        [make_record("hf", decode=100.0, seed=1, run_id="a"), make_record("fast", decode=150.0, seed=2, run_id="a")],
        [make_record("hf", decode=100.0, seed=3, run_id="b"), make_record("fast", decode=130.0, seed=4, run_id="b")],
        metrics=("speedup:decode_tok_s",),
        alpha=0.01,
    )
    assert [r.verdict for r in quiet.rows] == ["regression"]
    # the baseline's noise counts: the same loss is not called, and the design says it could not have seen it
    assert [r.verdict for r in noisy.rows] == ["inconclusive"] and noisy.rows[0].p_value > 0.01
    assert "only a change of" in noisy.rows[0].reason


def test_a_cell_that_broke_is_a_regression_with_its_reason(tmp_path):
    base = run({"hf": 100.0, "hf-static": 101.0}, seed=0, run_id="a")
    broken = [
        make_record("hf", decode=100.0, seed=7, run_id="b"),
        make_record("hf-static", run_id="b", status="failed"),
    ]
    res = compare_records(base, broken, metrics=("speedup:decode_tok_s",))
    assert [(x.cell, x.status, x.reason) for x in res.lost] == [("exp/m/hf-static/w/b1", "failed", "hf-static broke")]
    assert res.failed and not res.regressions  # no metric row can exist for it: the lost cell alone fails the gate
    missing = compare_records(base, run({"hf": 100.0}, seed=7, run_id="c"))
    assert [(x.cell, x.status) for x in missing.lost] == [("exp/m/hf-static/w/b1", "missing")]
    unavailable = [make_record("hf", seed=7, run_id="d"), make_record("hf-static", run_id="d", status="unavailable")]
    assert [x.status for x in compare_records(base, unavailable).lost] == ["unavailable"]
    # a cell that was not ok in the base is no reference: its failing again is not a regression
    assert not compare_records(broken, broken).failed

    runner = CliRunner()
    for folder, recs in (("base", base), ("broken", broken)):
        for r in recs:
            write_record(tmp_path / folder, r)
    md = tmp_path / "gate.md"
    r = runner.invoke(
        app,
        [
            "compare",
            str(tmp_path / "base"),
            str(tmp_path / "broken"),
            "--metric",
            "speedup:decode_tok_s",
            "--markdown",
            str(md),
        ],
    )
    assert r.exit_code == 1, r.output
    assert "hf-static" in r.output and "failed" in r.output and "hf-static broke" in r.output
    assert "| exp/m/hf-static/w/b1 | failed | hf-static broke |" in md.read_text()


def test_compare_refuses_a_bad_alpha_and_an_unwritable_markdown_path(tmp_path):
    for r in run({"hf": 100.0}, seed=0, run_id="a"):
        write_record(tmp_path / "base", r)
    runner = CliRunner()
    for alpha in ("0", "1", "-0.5", "1.5"):
        r = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "base"), "--alpha", alpha])
        assert r.exit_code == 2 and "--alpha" in r.output and "between 0 and 1" in r.output, r.output
    r = runner.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "base"), "--markdown", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in r.output and "Traceback" not in r.output


def test_no_regression_is_called_on_an_invalid_cell():
    base = run({"hf": 100.0, "fast": 150.0}, seed=0, run_id="a")
    cur = run({"hf": 100.0, "fast": 120.0}, seed=100, run_id="b")  # a real 20 % slowdown of fast
    judged(cur[1], "cv 14% > 10%")
    res = compare_records(base, cur, threshold=0.05)
    row = next(r for r in res.rows if r.cell.endswith("/fast/w/b1") and r.metric == "decode_tok_s")
    assert row.verdict == "invalid" and row.reason == "current: cv 14% > 10%"
    assert row.change == pytest.approx(-0.2, abs=0.03)  # the figures are still shown
    assert not res.regressions and not res.failed and res.invalid
    judged(base[0], "load 3.2 at end > 3.0 (2 own + 0.5 x 2 cores)")
    hf = next(r for r in compare_records(base, cur).rows if r.cell.endswith("/hf/w/b1"))
    assert hf.verdict == "invalid" and hf.reason.startswith("base: load 3.2 at end")


def test_a_speedup_over_an_invalid_baseline_cell_is_not_judged():
    base = run({"hf": 100.0, "fast": 150.0}, seed=0, run_id="a")
    cur = run({"hf": 100.0, "fast": 120.0}, seed=100, run_id="b")
    judged(cur[0], "cv 14% > 10%")  # the current run's baseline engine
    (row,) = compare_records(base, cur, metrics=("speedup:decode_tok_s",)).rows
    assert row.verdict == "invalid" and row.reason == "current's baseline: cv 14% > 10%"


def test_compare_strict_fails_on_invalid_comparisons_with_exit_4(tmp_path):
    base = run({"hf": 100.0, "fast": 150.0}, seed=0, run_id="a")
    cur = run({"hf": 100.0, "fast": 120.0}, seed=100, run_id="b")
    judged(cur[1], "cv 14% > 10%")
    for folder, recs in (("base", base), ("cur", cur)):
        for r in recs:
            write_record(tmp_path / folder, r)
    args = ["compare", str(tmp_path / "base"), str(tmp_path / "cur"), "--markdown", str(tmp_path / "c.md")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "invalid (current: cv 14% > 10%)" in r.output and "--strict fails on them" in r.output
    assert "| invalid (current: cv 14% > 10%) |" in (tmp_path / "c.md").read_text()
    r = CliRunner().invoke(app, [*args, "--strict"])
    assert r.exit_code == 4, r.output
    # a real regression elsewhere still exits 1, strict or not
    cur[0] = make_record("hf", decode=60.0, seed=300, run_id="b")
    for r in cur:
        write_record(tmp_path / "worse", r)
    r = CliRunner().invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "worse"), "--strict"])
    assert r.exit_code == 1, r.output
