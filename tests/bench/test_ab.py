"""rooflens ab: two commits of a plug-in engine measured side by side; a slower head is caught, an equal one is
not; the verdict's pairing and power check."""

from __future__ import annotations

import math
import statistics
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factories import make_record, metric
from rooflens.cli import app
from rooflens.results.ab_verdict import ab_verdict, round_medians
from rooflens.results.record import RepetitionInfo
from rooflens.results.store import load_records

ENGINE = '''
"""A plug-in engine under test: each token takes {ms} ms (a sleep), so its speed is known."""

import time

import torch

from rooflens.engines.base import Engine


class SleepyEngine(Engine):
    name = "sleepy"
    summary = "test engine: sleeps per token"

    def generate(self, input_ids, max_new_tokens, clock):
        for _ in range(max_new_tokens):
            time.sleep({ms} / 1000)
            clock.tokens(1)
        return torch.zeros(input_ids.shape[0], max_new_tokens, dtype=torch.long)
'''

EXPERIMENT = """
name: ab-test
model: shape:tiny-llama
engines: [{name: sleepy}]
workloads: [{prompt_len: 4, gen_len: 6}]
repetitions: {warmup: 1, min_reps: 1, min_seconds: 0}
device: cpu
dtype: float32
threads: 1
energy: false
validity: {max_cv: 1.0, max_other_load: 64}
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, ms: float, message: str, comment: str = "") -> str:
    pkg = repo / "src" / "rooflens_sleepy"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(ENGINE.format(ms=ms) + comment)
    info = repo / "src" / "rooflens_sleepy-0.1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rooflens-sleepy\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[rooflens.engines]\nsleepy = rooflens_sleepy:SleepyEngine\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def plugin_repo(tmp_path):
    repo = tmp_path / "plugin"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "exp.yaml").write_text(EXPERIMENT)
    revs = {
        "base": commit(repo, 4, "base"),
        "slower": commit(repo, 5, "head: 25 % more per token"),
    }
    git(repo, "checkout", "-q", revs["base"])
    revs["same"] = commit(repo, 4, "head: a comment only", comment="# nothing that runs\n")
    return repo, revs


def ab(repo: Path, base: str, head: str, tmp_path: Path, *extra: str):
    args = ["ab", base, head, str(repo / "exp.yaml"), "--src", str(repo / "src"), "--rounds", "6"]
    args += ["--block-reps", "2", "--max-regression", "10%", "--metric", "decode_tok_s", "--results", str(tmp_path)]
    return CliRunner().invoke(app, [*args, *extra])


@pytest.mark.slow
def test_ab_catches_a_head_that_sleeps_longer_and_passes_one_that_does_not(plugin_repo, tmp_path):
    repo, revs = plugin_repo
    slower = ab(repo, revs["base"], revs["slower"], tmp_path / "slower")
    assert slower.exit_code == 1, slower.output
    assert "regression" in slower.output
    base_records = load_records(tmp_path / "slower")
    sides = {r.environment["placement"]["ab"]["side"]: r for r in base_records}
    assert sides["base"].environment["placement"]["ab"]["revision"] == revs["base"]
    assert sides["head"].environment["placement"]["ab"]["revision"] == revs["slower"]
    assert sides["head"].experiment["run_id"].endswith("-head") and sides["base"].repetitions.schedule == "ab"
    assert sides["base"].repetitions.rounds == [r for r in range(6) for _ in range(2)]
    head_over_base = sides["head"].metrics["decode_tok_s"].median / sides["base"].metrics["decode_tok_s"].median
    assert head_over_base == pytest.approx(4 / 5, rel=0.1)

    same = ab(repo, revs["base"], revs["same"], tmp_path / "same")
    assert same.exit_code == 0, same.output
    assert "unchanged" in same.output and "regression" not in same.output.replace("significant regression", "")


@pytest.mark.slow
def test_ab_stops_a_side_whose_engine_hangs(plugin_repo, tmp_path):
    repo, revs = plugin_repo
    (repo / "exp.yaml").write_text(EXPERIMENT + "cell_timeout_s: 3\n")
    hung = commit(repo, 10**7, "head: a token takes hours")
    r = ab(repo, revs["base"], hung, tmp_path)
    assert r.exit_code == 2, r.output
    assert "the head worker" in r.output and "was stopped: timeout after 3 s without progress" in " ".join(
        r.output.split()
    )


@pytest.mark.slow
def test_ab_refuses_a_revision_that_is_not_a_commit(plugin_repo, tmp_path):
    repo, revs = plugin_repo
    r = ab(repo, revs["base"], "no-such-branch", tmp_path)
    assert r.exit_code == 2 and "HEAD 'no-such-branch': not a commit of" in r.output


# ---------------------------------------------------------------------------- the verdict, on made-up records


def ab_record(side: str, per_round: list[float], reps: int = 2, engine: str = "hf"):
    r = make_record(engine=engine, run_id=f"x-{side}")
    samples = [v for v in per_round for _ in range(reps)]
    r.metrics["decode_tok_s"] = metric(samples)
    r.repetitions = RepetitionInfo(
        warmup=1,
        measured=len(samples),
        measured_seconds=1.0,
        stopped_by="min_reps_and_seconds",
        schedule="ab",
        rounds=[k for k in range(len(per_round)) for _ in range(reps)],
    )
    return r


DRIFT = [100, 80, 120, 90, 130, 85, 115, 95, 125, 105]  # the machine, round by round (CV ~16 %)


def test_rounds_pair_the_sides_so_a_10_percent_loss_shows_through_the_drift():
    base = ab_record("base", DRIFT)
    head = ab_record("head", [0.9 * x for x in DRIFT])
    assert round_medians(base, "decode_tok_s") == {k: float(v) for k, v in enumerate(DRIFT)}
    (row,) = ab_verdict([base], [head], metrics=("decode_tok_s",), threshold=0.05, alpha=0.05).rows
    assert row.verdict == "regression" and row.change == pytest.approx(-0.1)


def test_a_design_that_cannot_see_the_threshold_is_inconclusive_never_unchanged():
    rng = [1.0, 1.3, 0.75, 1.2, 0.8]  # the head/base ratio of each round: noise of ~25 %
    base = ab_record("base", DRIFT[:5])
    head = ab_record("head", [x * f for x, f in zip(DRIFT[:5], rng)])
    (row,) = ab_verdict([base], [head], metrics=("decode_tok_s",), threshold=0.05, alpha=0.05).rows
    assert row.verdict == "inconclusive" and "5 paired rounds catch a 10% slowdown" in row.reason
    assert "would catch it 95%" in row.reason
    # two rounds: a signed-rank test cannot reach p <= 0.05 with fewer than 5 pairs, whatever they show
    (two,) = ab_verdict([ab_record("base", [100, 100])], [ab_record("head", [50, 50])], metrics=("decode_tok_s",)).rows
    assert two.verdict == "inconclusive" and not math.isnan(two.change)


def test_quiet_equal_sides_are_unchanged_and_a_lost_cell_fails():
    base = ab_record("base", DRIFT)
    head = ab_record("head", [x * (1 + 0.002 * (-1) ** k) for k, x in enumerate(DRIFT)])
    res = ab_verdict([base], [head], metrics=("decode_tok_s",), threshold=0.05)
    assert [r.verdict for r in res.rows] == ["unchanged"] and not res.failed
    broken = make_record(engine="hf", run_id="x-head", status="failed")
    res = ab_verdict([base], [broken], metrics=("decode_tok_s",))
    assert res.failed and [x.status for x in res.lost] == ["failed"]


def test_the_cli_needs_two_revisions_and_an_experiment(tmp_path):
    r = CliRunner().invoke(app, ["ab", "main"])
    assert r.exit_code == 2 and "give BASE HEAD EXPERIMENT" in r.output
    r = CliRunner().invoke(app, ["ab", "--configs", str(tmp_path / "a.yaml")])
    assert r.exit_code == 2 and "--configs takes two experiment files" in r.output


def test_a_sides_cv_across_rounds_is_the_drift_the_pairing_cancels_other_reasons_still_count():
    from factories import judged
    from rooflens.results.record import ValidityReason

    base, head = ab_record("base", DRIFT), ab_record("head", [0.9 * x for x in DRIFT])
    judged(base, "cv 16% > 10%")  # a CV reason: not a reason here
    (row,) = ab_verdict([base], [head], metrics=("decode_tok_s",)).rows
    assert row.verdict == "regression"
    busy = ValidityReason(
        check="load_at_start", value=3.0, limit=1.5, unit="load", source="measured", message="load 3.0 > 1.5"
    )
    head.validity = head.validity.model_copy(update={"status": "invalid", "reasons": [busy]})
    (row,) = ab_verdict([base], [head], metrics=("decode_tok_s",)).rows
    assert row.verdict == "invalid" and row.reason == "head: load 3.0 > 1.5"


@pytest.mark.slow
def test_ab_configs_measures_two_variants_on_the_working_tree(plugin_repo, tmp_path):
    repo, _ = plugin_repo
    variant = repo / "variant.yaml"
    variant.write_text(EXPERIMENT.replace("name: ab-test", "name: ab-variant"))  # same cells, another name
    args = ["ab", "--configs", str(repo / "exp.yaml"), "--configs", str(variant), "--src", str(repo / "src")]
    args += ["--rounds", "6", "--max-regression", "10%", "--metric", "decode_tok_s", "--results", str(tmp_path)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    sides = {rec.environment["placement"]["ab"]["side"]: rec for rec in load_records(tmp_path)}
    assert sides["base"].experiment["name"] == "ab-test" and sides["head"].experiment["name"] == "ab-variant"
    assert sides["head"].environment["placement"]["ab"]["revision"] == "working tree"
    mismatch = repo / "other.yaml"
    mismatch.write_text(EXPERIMENT.replace("gen_len: 6", "gen_len: 7"))
    r = CliRunner().invoke(app, ["ab", "--configs", str(repo / "exp.yaml"), "--configs", str(mismatch)])
    assert r.exit_code == 2 and "different cells" in r.output


# ---------------------------------------------------------------------------- the power rule, against simulation


def simulate_flags(n: int, sd: float, true_change: float, threshold: float, alpha: float, trials: int = 1500):
    """How often the verdict's rule flags a regression on n paired rounds of normal log-ratio noise."""
    import numpy as np
    from scipy.stats import wilcoxon

    from rooflens.results.ab_verdict import hodges_lehmann

    rng = np.random.default_rng(7)
    flagged = 0
    for _ in range(trials):
        logs = list(rng.normal(math.log1p(-true_change), sd, n))
        est = math.expm1(hodges_lehmann(logs))
        flagged += est < -threshold and wilcoxon(logs, alternative="less").pvalue <= alpha
    return flagged / trials


def spread(sd: float, n: int) -> list[float]:
    """n log ratios with mean 0 and standard deviation exactly ``sd``."""
    xs = [k - (n - 1) / 2 for k in range(n)]
    return [x * sd / statistics.stdev(xs) for x in xs]


@pytest.mark.parametrize("sd", [0.05, 0.15])
def test_a_powered_design_catches_the_slowdown_it_was_sized_for_and_flags_no_change_rarely(sd):
    from rooflens.results.ab_verdict import CATCH, catch_chance

    threshold, detect, alpha = 0.05, 0.10, 0.01
    n = next(n for n in range(3, 500) if catch_chance(spread(sd, n), threshold, detect, alpha) >= CATCH)
    caught = simulate_flags(n, sd, detect, threshold, alpha)
    assert caught >= 0.95, (n, caught)  # the rule's promise, checked against the test it is made for
    assert simulate_flags(max(8, n // 3), sd, detect, threshold, alpha) < caught  # fewer rounds, fewer catches
    assert simulate_flags(n, sd, 0.0, threshold, alpha) <= alpha  # no change: flagged at most alpha of the time


def test_the_rank_tests_floor_keeps_a_quiet_design_below_eight_rounds_unpowered():
    from rooflens.results.ab_verdict import catch_chance

    quiet = [-0.001, 0.001, 0.0, 0.002, -0.002, 0.001]  # 6 rounds: the smallest p is 1/64 > 0.01
    assert catch_chance(quiet, 0.05, 0.10, 0.01) == 0.0
    assert catch_chance([*quiet, 0.0005], 0.05, 0.10, 0.01) > 0.99  # 7 rounds: 1/128


# ---------------------------------------------------------------------------- rounds until powered (the driver)


class FakeSide:
    """A side whose blocks give decode speeds from a list (or fail at a given round)."""

    def __init__(self, speeds, fail_at=None):
        self.speeds, self.fail_at = iter(speeds), fail_at
        self.blocks, self.failed, self.asked = {}, set(), 0

    def ask(self, op, until):
        self.asked += 1
        if op["round"] == self.fail_at:
            self.failed.add(op["index"])
            values = {}
        else:
            values = {"decode_tok_s": [next(self.speeds)]}
        self.blocks.setdefault(op["index"], {})[op["round"]] = values


def drive(base_speeds, head_speeds, rounds=8, max_rounds=40, fail_at=None):
    from functools import partial

    from rooflens.bench.ab import AbPlan, _measure_cell
    from rooflens.results.ab_verdict import powered

    enough = partial(powered, metrics=("decode_tok_s",), threshold=0.05, detect=0.10, alpha=0.01)
    plan = AbPlan(None, None, rounds=rounds, max_rounds=max_rounds, enough=enough)  # type: ignore[arg-type]
    a, b = FakeSide(base_speeds), FakeSide(head_speeds, fail_at)
    _measure_cell(0, a, b, plan)  # type: ignore[arg-type]
    return a.asked


def test_a_quiet_cell_stops_at_the_minimum_a_noisy_one_gets_rounds_until_powered_or_the_cap():
    import numpy as np

    rng = np.random.default_rng(3)
    assert drive([100.0] * 100, [100.0 * (1 + 0.002 * (-1) ** k) for k in range(100)]) == 8
    noisy = list(100 * np.exp(rng.normal(0, 0.06, 200)))  # per-round log-ratio sd ~8.5 %: ~20-30 rounds
    asked = drive([100.0] * 200, noisy)
    assert 12 < asked < 40
    assert drive([100.0] * 200, list(100 * np.exp(rng.normal(0, 0.4, 200)))) == 40  # never powered: the cap
    assert drive([100.0] * 200, noisy, fail_at=3) == 4  # a cell whose block failed gets no more rounds


def test_a_worker_job_leaves_out_what_a_base_from_before_attribution_would_refuse(tmp_path):
    """The base revision's worker validates the job with its own schema, which forbids unknown fields: ab never
    profiles, so ``experiment.attribution`` is left out (CI's base, d83370d, refused the job with it)."""
    from factories import tiny_experiment
    from rooflens.bench.ab import worker_job
    from rooflens.bench.job import GroupJob
    from rooflens.bench.runner import ExperimentRunner

    runner = ExperimentRunner(tiny_experiment([{"name": "hf"}], attribution=True), results_root=tmp_path)
    job = runner.job(range(len(runner.cells)), "ab")
    sent = worker_job(job)
    assert "attribution" not in sent["experiment"]
    # fields at their defaults are left to the worker's schema: a workload's chat_template (added after CI's base)
    assert all("chat_template" not in w for w in sent["experiment"]["workloads"])
    # and the job's own fields at their defaults: task_answers (added after CI's base) made its worker exit 1
    assert "task_answers" not in sent and sent["run_id"] == job.run_id
    back = GroupJob.model_validate(sent)
    assert back.experiment.attribution  # a worker of today fills the defaults back
    assert back.experiment.model_dump(exclude={"attribution"}) == job.experiment.model_dump(exclude={"attribution"})
    assert back.model_dump(exclude={"experiment"}) == job.model_dump(exclude={"experiment"})
