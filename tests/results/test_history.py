"""history: one step in a series is found where it happened; a flat noisy series has none; the page and
the markdown name the commits around a change."""

from __future__ import annotations

import random

import pytest
from typer.testing import CliRunner

from factories import CPU_ENV, make_record
from rooflens.cli import app
from rooflens.results.history import build_series, find_changes, history
from rooflens.results.store import write_record


def noisy(level: float, n: int, sd: float, rng: random.Random) -> list[float]:
    return [level * (1 + rng.gauss(0, sd)) for _ in range(n)]


def test_one_step_is_located_within_one_run_in_19_of_20_series():
    located = 0
    for seed in range(20):
        rng = random.Random(seed)
        values = noisy(100, 12, 0.03, rng) + noisy(85, 10, 0.03, rng)  # 15 % slower from run 12 on
        changes = find_changes(values, "higher")
        if len(changes) == 1 and abs(changes[0].index - 12) <= 1:
            located += 1
            assert changes[0].change == pytest.approx(-0.15, abs=0.05) and changes[0].p_value <= 0.01
    assert located >= 19


def test_a_flat_noisy_series_has_no_change_point_in_19_of_20():
    flagged = sum(bool(find_changes(noisy(100, 30, 0.05, random.Random(100 + seed)), "higher")) for seed in range(20))
    assert flagged <= 1


def test_a_lower_is_better_metric_reads_a_rise_as_worse_and_short_series_have_none():
    (change,) = find_changes([1.0] * 6 + [1.3] * 6, "lower")
    assert change.index == 6 and change.change == pytest.approx(1 / 1.3 - 1)
    assert find_changes([1.0, 2.0, 1.0, 2.0, 1.0], "higher") == []  # fewer than 2 x 3 points


def runs_with_a_step(tmp_path, n=14, at=9):
    rng = random.Random(7)
    records = []
    for i in range(n):
        env = {**CPU_ENV, "rooflens_git": {"commit": f"{i:02d}" + "c" * 38, "dirty": False}}
        speed = (100 if i < at else 80) * (1 + rng.gauss(0, 0.02))
        r = make_record(engine="hf", decode=speed, seed=i, run_id=f"run{i:02d}", env=env)
        r.started_at = f"2026-01-{i + 1:02d}T00:00:00"
        records.append(r)
        write_record(tmp_path / "results" / r.experiment["run_id"], r)
    return records


def test_series_follow_the_runs_in_time_and_carry_their_commits(tmp_path):
    records = runs_with_a_step(tmp_path)
    (series,) = build_series(list(reversed(records)), ("decode_tok_s",))
    assert [p.run_id for p in series.points] == [f"run{i:02d}" for i in range(14)]
    assert series.points[0].commit == "00cccccccccc"
    (found,) = history(records)
    assert [c.index for c in found.changes] == [9]


def test_the_cli_writes_the_page_and_the_markdown_naming_the_commits(tmp_path):
    runs_with_a_step(tmp_path)
    md = tmp_path / "changes.md"
    r = CliRunner().invoke(
        app, ["history", str(tmp_path / "results"), "--out", str(tmp_path / "reports"), "--markdown", str(md)]
    )
    assert r.exit_code == 0, r.output
    assert "14 runs, 1 series, 1 change point(s)" in r.output
    page = (tmp_path / "reports" / "history.html").read_text()
    assert "08cccccccccc (run08) -&gt; 09cccccccccc (run09)" in page and "data:image/png;base64," in page
    assert "| exp/m/hf/w/b1 decode_tok_s | 08cccccccccc (run08) -> 09cccccccccc (run09) |" in md.read_text()
    bad = CliRunner().invoke(app, ["history", str(tmp_path / "results"), "--metric", "speed"])
    assert bad.exit_code == 2 and "--metric speed: allowed decode_tok_s" in bad.output
