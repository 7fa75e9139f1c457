"""compare keys what matters: settings named when they differ, runs not folders, hardware as detected, and
speedups from paired rounds."""

import pytest
from typer.testing import CliRunner

from factories import CPU_ENV, make_record, metric
from rooflens.cli import app
from rooflens.results.compare import CompareInputError, compare_records
from rooflens.results.identity import hardware_id
from rooflens.results.record import EngineStat, RepetitionInfo
from rooflens.results.runs import newest_complete_runs
from rooflens.results.store import write_record

CONFIG = {"engines": [{"name": "hf"}, {"name": "fast"}], "workloads": [{"batch_sizes": [1]}]}


def run(run_id, seed=0, fast=150.0, minute=0, engines=("hf", "fast"), **kw):
    records = []
    for i, (engine, decode) in enumerate((("hf", 100.0), ("fast", fast))):
        if engine not in engines:
            continue
        r = make_record(engine=engine, decode=decode, seed=seed + i, run_id=run_id, **kw)
        r.experiment["config"] = CONFIG
        r.started_at = f"2026-01-01T00:{minute:02d}:{i:02d}"
        records.append(r)
    return records


def test_cells_measured_in_another_dtype_are_refused_naming_the_field_unless_allowed():
    base, cur = run("a"), run("b", seed=10)
    for r in cur:
        r.model.dtype = "bfloat16"
    with pytest.raises(CompareInputError, match=r"exp/m/hf/w/b1: dtype float32 in base, bfloat16 in current") as err:
        compare_records(base, cur)
    assert "--allow-mismatch dtype" in str(err.value)
    res = compare_records(base, cur, allow_mismatch=frozenset({"dtype"}))
    assert res.rows and any("settings differ (allowed): exp/m/hf/w/b1: dtype" in n for n in res.notes)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r.environment.__setitem__("torch_threads", 1), "threads"),
        (lambda r: r.cell.engine_options.__setitem__("bits", 4), "engine_options"),
        (lambda r: r.engine_stats.__setitem__("kernel", EngineStat(value="torch", description="path")), "kernel"),
        (lambda r: r.experiment.__setitem__("config_hash", "other"), "config_hash"),
    ],
)
def test_every_setting_of_a_cells_identity_is_checked(change, field):
    base, cur = run("a"), run("b", seed=10, env={**CPU_ENV})
    for r in cur:
        change(r)
    with pytest.raises(CompareInputError, match=f"--allow-mismatch {field}"):
        compare_records(base, cur)
    compare_records(base, cur, allow_mismatch=frozenset({field}))
    with pytest.raises(CompareInputError, match="--allow-mismatch colour: allowed dtype, threads"):
        compare_records(base, cur, allow_mismatch=frozenset({"colour"}))


def test_a_crashed_newest_run_is_not_filled_in_by_an_older_one():
    older, crashed = run("old", minute=1), run("new", minute=2, engines=("hf",))  # 'fast' never reported
    chosen, notes = newest_complete_runs([*older, *crashed], "base")
    assert {r.experiment["run_id"] for r in chosen} == {"old"}
    assert notes == ["base: 2 run(s) of exp; using old (the newest complete one)"]
    chosen, notes = newest_complete_runs(crashed, "current")
    assert notes == ["current: 1 run(s) of exp; using new (the newest; none is complete)"]
    # a crashed run alone: its missing cell is lost, never borrowed from another run
    res = compare_records(run("base"), crashed)
    assert [(x.cell, x.status) for x in res.lost] == [("exp/m/fast/w/b1", "missing")]
    # beside an older complete run, the complete one is compared, and the choice is said
    res = compare_records(run("base"), [*older, *crashed])
    assert not res.lost and "current: 2 run(s) of exp; using old (the newest complete one)" in res.notes


def test_hardware_is_the_detected_machine_not_the_profile_it_matched():
    intel = {**CPU_ENV, "hardware": {"cpu_model": "Intel Xeon", "cpu_flags": ["avx2"], "cpu_cores_logical": 2}}
    amd = {**CPU_ENV, "hardware": {"cpu_model": "AMD EPYC", "cpu_flags": ["avx2"], "cpu_cores_logical": 2}}
    base, cur = run("a", env=intel), run("b", seed=10, env=amd)
    for r in base:
        r.hardware_profile = {"name": "xeon-datasheet"}  # a profiled CPU on one side: cells still match
    assert hardware_id(base[0]) == "cpu: Intel Xeon (avx2, 2 logical cores)"
    with pytest.raises(CompareInputError, match="different hardware: cpu: Intel Xeon .* vs  cpu: AMD EPYC"):
        compare_records(base, cur)
    res = compare_records(base, cur, allow_hardware_mismatch=True)
    assert res.rows and not res.lost


def interleaved(run_id, base_speeds, ratio):
    """hf and fast measured in the same rounds: each round's machine speed hits both."""
    records = run(run_id, seed=0)
    for r in records:
        speeds = [s * (ratio if r.cell.engine_label == "fast" else 1.0) for s in base_speeds]
        r.metrics["decode_tok_s"] = metric(speeds)
        other = "hf" if r.cell.engine_label == "fast" else "fast"
        r.repetitions = RepetitionInfo(
            warmup=1,
            measured=len(speeds),
            measured_seconds=1.0,
            stopped_by="min_reps_and_seconds",
            schedule="interleaved",
            rounds=list(range(len(speeds))),
            rounds_with=[other],
        )
    return records


def test_a_speedup_from_paired_rounds_sees_a_10_percent_loss_through_15_percent_drift():
    drift = [100, 82, 118, 95, 125, 88]  # the machine's speed round by round (CV ~15 %)
    base = interleaved("a", drift, 1.5)
    cur = interleaved("b", list(reversed(drift)), 1.35)
    (row,) = compare_records(base, cur, metrics=("speedup:decode_tok_s",), threshold=0.05).rows
    assert row.base_median == pytest.approx(1.5) and row.current_median == pytest.approx(1.35)
    assert row.verdict == "regression" and row.p_value < 0.01
    # the same samples without their rounds: the ratio of medians drowns in the drift
    for r in [*base, *cur]:
        r.repetitions = None
    (unpaired,) = compare_records(base, cur, metrics=("speedup:decode_tok_s",), threshold=0.05).rows
    assert unpaired.verdict == "inconclusive" and "only a change of" in unpaired.reason


def test_the_cli_refuses_a_mismatch_with_exit_2_and_allows_it_with_the_flag(tmp_path):
    base, cur = run("a"), run("b", seed=10)
    for r in cur:
        r.environment = {**CPU_ENV, "torch_threads": 1}
    for folder, records in (("base", base), ("cur", cur)):
        for r in records:
            write_record(tmp_path / folder, r)
    cli = CliRunner()
    r = cli.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "cur")])
    assert r.exit_code == 2 and "threads 2 in base, 1 in current" in r.output
    r = cli.invoke(app, ["compare", str(tmp_path / "base"), str(tmp_path / "cur"), "--allow-mismatch", "threads"])
    assert r.exit_code == 0, r.output


def test_the_config_hash_is_recomputed_from_the_stored_config_so_new_fields_with_defaults_change_nothing():
    from factories import tiny_experiment

    exp = tiny_experiment([{"name": "hf"}], batch_sizes=(1,))
    old_config = exp.model_dump(mode="json")
    for engine in old_config["engines"]:
        del engine["dtype"]  # a field added later, with a default: an older record's config lacks it
    base, cur = run("a", engines=("hf",)), run("b", seed=10, engines=("hf",))
    for r in base:
        r.experiment.update(config=old_config, config_hash="recorded-by-an-older-version")
    for r in cur:
        r.experiment.update(config=exp.model_dump(mode="json"), config_hash=exp.config_hash())
    assert compare_records(base, cur).rows  # not refused
    changed = exp.model_copy(update={"seed": 7})
    for r in cur:
        r.experiment.update(config=changed.model_dump(mode="json"), config_hash=changed.config_hash())
    with pytest.raises(CompareInputError, match="config_hash"):
        compare_records(base, cur)
