"""Engines measured side by side in time: rotating rounds, paired speedups, the fallback to blocks."""

from __future__ import annotations

import statistics
from collections import Counter

import pytest
import torch

from factories import PacedEngine, ScriptedEngine, StepMeter, tiny_experiment
from rooflens.bench import interleave
from rooflens.bench.energy import EnergyReading, UnavailableMeter, combine_readings
from rooflens.bench.executors import make_executor
from rooflens.bench.memory import MemoryPeak, highest_peak
from rooflens.bench.rounds import Contender, measure_rounds, rotation, williams_order
from rooflens.bench.runner import ExperimentRunner
from rooflens.config import Repetitions
from rooflens.results.derived import paired_ratios, speedup

CPU = torch.device("cpu")
PROMPTS = torch.zeros(1, 4, dtype=torch.long)


class Logged(ScriptedEngine):
    """Appends its label to a shared log at each generation; fails at its ``fail_at``-th generation."""

    def __init__(self, label, log, tiny_llama, fail_at=None):
        super().__init__(ScriptedEngine.Options(), tiny_llama)
        self.label, self.log, self.fail_at, self.calls = label, log, fail_at, 0

    def generate(self, input_ids, max_new_tokens, clock):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError(f"{self.label} broke")
        self.log.append(self.label)
        return super().generate(input_ids, max_new_tokens, clock)


def contenders(tiny_llama, labels, log, **fail_at):
    return [Contender(Logged(x, log, tiny_llama, fail_at.get(x)), PROMPTS) for x in labels]


def test_round_k_is_row_k_of_a_williams_design():
    a, b, c = "abc"
    assert [rotation([a, b, c], k) for k in range(7)] == [
        [a, b, c], [b, c, a], [c, a, b], [c, b, a], [a, c, b], [b, a, c], [a, b, c]
    ]  # fmt: skip
    assert rotation(list("abcd"), 0) == list("abdc")


@pytest.mark.parametrize("n", range(2, 9))
def test_each_engine_follows_each_other_equally_often_and_takes_every_place(n):
    """A plain rotation by one puts engine i after engine i-1 in every round where it is not first: whatever that
    engine leaves behind (a warm cache, spinning threads) would always reach the same one."""
    period = n if n % 2 == 0 else 2 * n
    rows = [williams_order(n, k) for k in range(period)]
    assert all(sorted(row) == list(range(n)) for row in rows)
    follows = Counter(pair for row in rows for pair in zip(row, row[1:]))
    assert len(follows) == n * (n - 1) and len(set(follows.values())) == 1
    places = Counter((x, i) for row in rows for i, x in enumerate(row))
    assert len(places) == n * n and len(set(places.values())) == 1
    assert williams_order(n, period) == rows[0]  # then it starts again


def test_each_round_measures_every_engine_once_in_a_rotating_order(tiny_llama):
    log: list[str] = []
    cs = contenders(tiny_llama, "abc", log)
    result = measure_rounds(cs, 3, Repetitions(warmup=1, min_reps=3, min_seconds=0), UnavailableMeter("t"), CPU)
    warm, measured = log[:3], log[3:]
    assert warm == ["a", "b", "c"]
    assert measured == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert result.rounds == 3
    for m in result.measurements:
        assert m.rounds == [0, 1, 2] and len(m.timings) == 3 and m.warmup == 1


def test_rounds_go_on_until_every_engine_has_its_seconds_and_stop_at_max_reps(tiny_llama, virtual_time):
    fast = PacedEngine(PacedEngine.Options(token_s=[0.01]), tiny_llama)  # 3 tokens: 0.03 s a repetition
    slow = PacedEngine(PacedEngine.Options(token_s=[0.1]), tiny_llama)  # 0.3 s a repetition
    cs = [Contender(fast, PROMPTS), Contender(slow, PROMPTS)]
    reps = Repetitions(warmup=0, min_reps=2, min_seconds=0.25)
    result = measure_rounds(cs, 3, reps, UnavailableMeter("t"), CPU, now=virtual_time)
    # the fast engine needs 9 repetitions for 0.25 s (8 x 0.03 = 0.24): every engine gets as many rounds
    assert result.rounds == 9 and [len(m.timings) for m in result.measurements] == [9, 9]
    assert all(m.stopped_by == "min_reps_and_seconds" for m in result.measurements)
    assert result.measurements[0].measured_seconds == pytest.approx(0.27)
    capped = measure_rounds(
        [Contender(fast, PROMPTS), Contender(slow, PROMPTS)],
        3,
        Repetitions(warmup=0, min_reps=2, min_seconds=100, max_reps=4),
        UnavailableMeter("t"),
        CPU,
        now=virtual_time,
    )
    assert capped.rounds == 4 and all(m.stopped_by == "max_reps" for m in capped.measurements)


def test_an_engine_that_fails_sits_out_the_later_rounds_and_the_others_go_on(tiny_llama):
    log: list[str] = []
    cs = contenders(tiny_llama, "ab", log, b=3)  # b's third generation (its first measured one) raises
    result = measure_rounds(cs, 3, Repetitions(warmup=2, min_reps=3, min_seconds=0), UnavailableMeter("t"), CPU)
    a, b = result.measurements
    assert isinstance(b, RuntimeError) and "b broke" in str(b)
    assert len(a.timings) == 3 and a.rounds == [0, 1, 2]
    assert log.count("b") == 2 and log[4:] == ["a", "a", "a"]


def test_energy_and_memory_are_read_per_repetition_and_summed_or_maximised(tiny_llama):
    cs = contenders(tiny_llama, "ab", [])
    result = measure_rounds(cs, 3, Repetitions(warmup=0, min_reps=4, min_seconds=0), StepMeter(), CPU)
    for m in result.measurements:
        assert m.energy.joules == pytest.approx(4 * 2.0)  # 2 J a window, 4 windows of its own
        assert "per-repetition windows" in m.memory.how


def test_combined_readings_sum_and_say_how_many_windows_were_short():
    r = [
        EnergyReading(1.0, 0.5, "rapl", "pkg", False),
        EnergyReading(2.0, 0.05, "rapl", "pkg", True, ("window of 0.050 s is shorter than ...",)),
    ]
    c = combine_readings(r)
    assert (c.joules, c.seconds, c.short_window) == (3.0, 0.55, True)
    assert c.warnings == (
        "1 of 2 per-repetition windows were shorter than the rapl minimum; their summed energy is unreliable",
    )
    unmeasured = combine_readings([r[0], EnergyReading(None, 1.0, "rapl", "pkg", False, reason="read failed")])
    assert unmeasured.joules is None and unmeasured.reason == "read failed"
    peak = highest_peak([MemoryPeak("process_rss", 5, 3, "hwm"), MemoryPeak("process_rss", 9, 4, "hwm")])
    assert (peak.peak_bytes, peak.baseline_bytes) == (9, 3)


# ---------------------------------------------------------------------------- whole runs, on virtual time


def paced(label, token_s, **options):
    return {"name": "paced", "label": label, "options": {"token_s": token_s, **options}}


def run(tmp_path, engines, **extra):
    extra.setdefault("repetitions", {"warmup": 1, "min_reps": 6, "min_seconds": 0})
    exp = tiny_experiment(engines, batch_sizes=(1,), baseline="base", **extra)
    records = ExperimentRunner(exp, results_root=tmp_path).run().records
    return {r.cell.engine_label: r for r in records}


def test_interleaved_rounds_give_the_medians_of_blocks_on_a_quiet_machine(
    test_engines, virtual_time, quiet_machine, tmp_path
):
    engines = [paced("base", [0.02, 0.021, 0.019]), paced("fast", [0.01, 0.0105, 0.0095])]
    rounds = run(tmp_path / "i", engines)
    blocks = run(tmp_path / "b", engines, schedule="blocks")
    for label in ("base", "fast"):
        i, b = rounds[label], blocks[label]
        assert i.status == b.status == "ok"
        assert i.metrics["decode_tok_s"].median == pytest.approx(b.metrics["decode_tok_s"].median, rel=1e-9)
    assert rounds["fast"].repetitions.schedule == "interleaved" and rounds["fast"].repetitions.rounds_with == ["base"]
    assert rounds["fast"].repetitions.rounds == list(range(6))
    assert blocks["fast"].repetitions.schedule == "blocks"
    assert "schedule: blocks" in blocks["fast"].repetitions.schedule_note


def test_paired_rounds_cancel_a_machine_that_slows_down_mid_run(test_engines, virtual_time, quiet_machine, tmp_path):
    """The machine runs at half speed from virtual time 0.75 s on. In blocks the baseline is measured before the
    drift and the other engine after it: its 2x speedup reads as 1x. In rounds both see the same machine."""
    drift = {"drift_at_s": 0.75, "drift_factor": 2.0}
    engines = [paced("base", [0.02], **drift), paced("fast", [0.01], **drift)]
    reps = {"warmup": 0, "min_reps": 10, "min_seconds": 0}
    blocks = run(tmp_path / "b", engines, schedule="blocks", repetitions=reps)
    virtual_time.t = 0.0
    rounds = run(tmp_path / "i", engines, repetitions=reps)
    assert speedup(blocks["fast"], list(blocks.values())) == pytest.approx(1.0, rel=0.05)
    assert speedup(rounds["fast"], list(rounds.values())) == pytest.approx(2.0, rel=1e-6)
    ratios = paired_ratios(rounds["fast"], rounds["base"], "decode_tok_s")
    assert ratios is not None and len(ratios) == 10 and statistics.pstdev(ratios) < 1e-9
    # the machine did drift: the engines' own repetitions spread
    assert rounds["base"].metrics["decode_tok_s"].cv > 0.3


def test_engines_that_do_not_fit_together_are_measured_in_blocks_and_the_records_say_why(
    test_engines, virtual_time, quiet_machine, tmp_path, monkeypatch
):
    monkeypatch.setattr(interleave, "memory_shortfall", lambda need, device, **kw: "would not fit: needs ~9 GB")
    records = run(tmp_path, [paced("base", [0.02]), paced("fast", [0.01])])
    for r in records.values():
        assert r.status == "ok" and r.repetitions.schedule == "blocks" and r.repetitions.rounds is None
        assert r.repetitions.schedule_note.startswith("the engines' prepared states do not fit in memory together")
    assert speedup(records["fast"], list(records.values())) == pytest.approx(2.0)  # the ratio of medians


def test_a_failing_engine_fails_its_cell_only_and_cells_it_cannot_run_are_refused(
    test_engines, virtual_time, quiet_machine, tmp_path
):
    engines = [
        paced("base", [0.02]),
        {"name": "scripted", "label": "broken", "options": {"fail_on_batch": 1}},
        {"name": "cuda-only", "label": "gpu"},
        paced("fast", [0.01]),
    ]
    records = run(tmp_path, engines)
    assert records["broken"].status == "failed" and "boom at batch 1" in records["broken"].reason.message
    assert records["gpu"].status == "unavailable"
    assert records["fast"].status == records["base"].status == "ok"
    assert records["fast"].repetitions.rounds_with == ["base", "broken"]  # broken dropped out in its warm-up
    assert speedup(records["fast"], list(records.values())) == pytest.approx(2.0)


TWO_HF = [{"name": "hf"}, {"name": "hf", "label": "hf-static", "options": {"cache": "static"}}]


@pytest.mark.slow
def test_the_baselines_tokens_are_the_quality_reference_within_one_interleaved_job(
    smollm2, quiet_machine, tmp_path, monkeypatch
):
    monkeypatch.setattr("rooflens.bench.group.measure_perplexity", lambda engine, model, shared: "not measured")
    monkeypatch.setattr("rooflens.bench.workbench.load_model", lambda *args, **kwargs: smollm2)
    exp = tiny_experiment(TWO_HF, model="smollm2-135m", baseline="hf")
    records = ExperimentRunner(exp, results_root=tmp_path).run().records
    assert [r.status for r in records] == ["ok"] * 4
    assert all(r.repetitions.schedule == "interleaved" for r in records)
    static = [r for r in records if r.cell.engine_label == "hf-static"]
    assert all(r.quality.agreement.value == 1.0 and "engine 'hf'" in r.quality.reference for r in static)


@pytest.mark.slow
def test_one_subprocess_worker_measures_every_engine_of_an_interleaved_run(tmp_path):
    exp = tiny_experiment(TWO_HF, batch_sizes=(1,))
    records = ExperimentRunner(exp, results_root=tmp_path, executor=make_executor("subprocess")).run().records
    pids = {r.environment["placement"]["pid"] for r in records}
    assert len(pids) == 1 and [r.repetitions.schedule for r in records] == ["interleaved", "interleaved"]
