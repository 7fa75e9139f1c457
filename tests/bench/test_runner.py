"""The runner: fixed-length generation, repetitions, records written atomically, failures recorded."""

import json

import pytest
import torch

from factories import FakeActivity, ScriptedEngine, StepMeter, lenient_probe_rules, tiny_experiment
from rooflens.bench.energy import EnergyMeter, NvmlEnergyCounterMeter, UnavailableMeter
from rooflens.bench.repetitions import FixedLengthError, measure, run_once
from rooflens.bench.runner import ExperimentRunner
from rooflens.bench.validate import validate_experiment
from rooflens.config import Repetitions
from rooflens.data.prompts import make_prompts
from rooflens.engines.base import TokenClock
from rooflens.engines.hf import HFEngine, HFOptions
from rooflens.results.store import load_records, records_dataframe

CPU = torch.device("cpu")


experiment = tiny_experiment


# ---------------------------------------------------------------------------- the hf engine


def test_hf_generates_exactly_n_tokens_even_when_eos_comes_first(tiny_llama):
    prompts = make_prompts(tiny_llama, "synthetic", 2, 8, seed=0)
    model = tiny_llama.model
    first = model.generate(prompts, max_new_tokens=1, do_sample=False)[:, -1]
    old_eos = model.config.eos_token_id
    model.config.eos_token_id = int(first[0])  # the very first greedy token of row 0 is now EOS
    try:
        stopped = model.generate(
            prompts[:1], max_new_tokens=6, do_sample=False, eos_token_id=int(first[0]), pad_token_id=0
        )
        assert stopped.shape[1] - prompts.shape[1] == 1  # plain generate stops at that EOS ...
        engine = HFEngine(HFOptions(), tiny_llama)
        clock = TokenClock(CPU)
        clock.start()
        new = engine.generate(prompts, 6, clock)
        clock.stop()
    finally:
        model.config.eos_token_id = old_eos
    assert new.shape == (2, 6)  # ... the engine does not
    assert clock.n_tokens == 6 and len(clock.events) == 6
    assert clock.t_start < clock.events[0][0] <= clock.events[-1][0] <= clock.t_stop


def test_hf_static_cache_matches_dynamic(tiny_llama):
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=1)
    outs = []
    for opts in (HFOptions(), HFOptions(cache="static")):
        clock = TokenClock(CPU)
        clock.start()
        outs.append(HFEngine(opts, tiny_llama).generate(prompts, 5, clock))
    assert torch.equal(outs[0], outs[1])


def test_run_once_rejects_wrong_length(test_engines, tiny_llama):
    engine = ScriptedEngine(ScriptedEngine.Options(short_by=1), tiny_llama)
    with pytest.raises(FixedLengthError, match=r"shape \(1, 4\), expected \(1, 5\)"):
        run_once(engine, torch.zeros(1, 8, dtype=torch.long), 5, CPU)


def test_synthetic_prompts_are_exact_deterministic_and_free_of_special_tokens(tiny_llama):
    a = make_prompts(tiny_llama, "synthetic", 3, 17, seed=5)
    b = make_prompts(tiny_llama, "synthetic", 3, 17, seed=5)
    assert a.shape == (3, 17) and torch.equal(a, b)
    assert not torch.equal(a, make_prompts(tiny_llama, "synthetic", 3, 17, seed=6))
    special = tiny_llama.special_token_ids
    assert special and not any(int(t) in special for t in a.flatten())


def test_corpus_prompts_need_a_tokenizer(tiny_llama):
    with pytest.raises(ValueError, match="needs a tokenizer"):
        make_prompts(tiny_llama, "corpus", 1, 8, seed=0)


@pytest.mark.slow
def test_corpus_prompts_are_real_text_of_exact_length(smollm2):
    p = make_prompts(smollm2, "corpus", 2, 40, seed=0)
    assert p.shape == (2, 40) and not torch.equal(p[0], p[1])
    text = smollm2.tokenizer.decode(p[0])
    assert sum(c.isalpha() for c in text) > 0.6 * len(text.replace(" ", ""))


# ---------------------------------------------------------------------------- repetitions


class FakeClock:
    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


def test_repetitions_stop_when_both_minima_are_met(test_engines, tiny_llama):
    engine = ScriptedEngine(ScriptedEngine.Options(), tiny_llama)
    prompts = torch.zeros(1, 4, dtype=torch.long)
    meter = UnavailableMeter("test")
    # each rep advances the fake clock by 2 s: 3 reps are needed for 5 s, min_reps 2 is met before
    m = measure(engine, prompts, 3, Repetitions(warmup=2, min_reps=2, min_seconds=5.0), meter, CPU, now=FakeClock(2.0))
    assert len(m.timings) == 3 and m.stopped_by == "min_reps_and_seconds" and m.warmup == 2
    # min_reps dominates when the time minimum is already met
    m = measure(engine, prompts, 3, Repetitions(warmup=0, min_reps=4, min_seconds=0.5), meter, CPU, now=FakeClock(2.0))
    assert len(m.timings) == 4
    # max_reps caps
    m = measure(
        engine,
        prompts,
        3,
        Repetitions(warmup=0, min_reps=1, min_seconds=100, max_reps=5),
        meter,
        CPU,
        now=FakeClock(1.0),
    )
    assert len(m.timings) == 5 and m.stopped_by == "max_reps"


def test_energy_window_is_lengthened_to_the_meter_resolution(test_engines, tiny_llama):
    engine = ScriptedEngine(ScriptedEngine.Options(), tiny_llama)
    counter = iter(range(0, 10**9, 500))  # +0.5 J per read
    meter = NvmlEnergyCounterMeter(0, read_mj=lambda: next(counter), min_window_s=3.0)
    m = measure(
        engine,
        torch.zeros(1, 4, dtype=torch.long),
        3,
        Repetitions(warmup=0, min_reps=1, min_seconds=0.0),
        meter,
        CPU,
        now=FakeClock(1.0),
    )
    assert len(m.timings) == 3  # 1 s per rep, the meter wants 3 s


# ---------------------------------------------------------------------------- the sweep


def with_meter(monkeypatch, meter: EnergyMeter) -> None:
    """Every cell measured in this process reads ``meter`` (the measuring process chooses its meter)."""
    monkeypatch.setattr("rooflens.bench.workbench.meter_for", lambda exp, device: meter)


@pytest.mark.slow
def test_sweep_writes_every_cell_and_survives_a_failing_cell(test_engines, tmp_path, monkeypatch):
    exp = experiment([{"name": "hf"}, {"name": "scripted", "options": {"fail_on_batch": 2}}], schedule="blocks")
    with_meter(monkeypatch, StepMeter())  # blocks: one window per cell
    result = ExperimentRunner(exp, results_root=tmp_path).run()
    files = sorted(p.name for p in result.folder.glob("*"))
    assert files == ["hf__p8-g5__b1.json", "hf__p8-g5__b2.json", "scripted__p8-g5__b1.json", "scripted__p8-g5__b2.json"]
    records = {(r.cell.engine_label, r.cell.batch_size): r for r in load_records(tmp_path)}
    assert [records[k].status for k in sorted(records)] == ["ok", "ok", "ok", "failed"]
    failed = records[("scripted", 2)]
    assert failed.reason.type == "RuntimeError" and failed.reason.message == "boom at batch 2"
    assert "Traceback" in failed.reason.traceback and failed.metrics == {}

    ok = records[("hf", 2)]
    assert ok.model.weights == "random" and ok.model.id == "tiny-llama"
    assert ok.repetitions.measured >= 2 and ok.repetitions.warmup == 1
    ttft, tpot, e2e = ok.metrics["ttft_s"], ok.metrics["tpot_s"], ok.metrics["e2e_s"]
    assert ttft.n == ok.repetitions.measured == len(ttft.samples) and ttft.source == "measured"
    for i in range(ttft.n):  # the derived metrics follow from the measured ones, repetition by repetition
        assert tpot.samples[i] == pytest.approx((e2e.samples[i] - ttft.samples[i]) / 4)
        assert ok.metrics["decode_tok_s"].samples[i] == pytest.approx(2 * 4 / (e2e.samples[i] - ttft.samples[i]))
    assert ok.metrics["itl_s"].n == 4 * ttft.n
    tokens = ok.repetitions.measured * 2 * 5
    assert ok.energy.measured and ok.energy.joules.value == 2.0 and ok.energy.joules.source == "measured"
    assert ok.energy.tokens_per_joule.value == pytest.approx(tokens / 2.0)
    assert ok.energy.tokens_per_joule.source == "derived"
    assert ok.memory.kind == "process_rss" and ok.memory.peak_bytes.value >= ok.memory.baseline_bytes.value > 0
    env = ok.environment
    assert env["libraries"]["torch"] == torch.__version__.split("+")[0] or env["libraries"]["torch"].startswith("2.")
    assert env["rooflens_version"] and env["hardware"]["cpu_model"] and len(env["hostname_hash"]) == 12
    assert ok.experiment["config_hash"] == exp.config_hash() and ok.hardware_profile["name"] == "cpu-generic"
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave nothing behind


def test_unavailable_and_unprepared_engines_are_recorded(test_engines, tmp_path):
    exp = experiment(
        [{"name": "cuda-only"}, {"name": "broken-prepare"}, {"name": "scripted"}, {"name": "option-unavailable"}],
        batch_sizes=(1,),
    )
    records = ExperimentRunner(exp, results_root=tmp_path).run().records
    by = {r.cell.engine_label: r for r in records}
    assert by["option-unavailable"].status == "unavailable"
    assert by["option-unavailable"].reason.message == "format int4 needs CUDA"
    assert by["cuda-only"].status == "unavailable"
    assert by["cuda-only"].reason.message == "engine 'cuda-only' runs on cuda, not cpu"
    assert by["broken-prepare"].status == "failed"
    assert by["broken-prepare"].reason.message == "prepare failed: no draft model"
    assert by["scripted"].status == "ok"


def test_no_energy_counter_means_no_tokens_per_joule(test_engines, tmp_path, monkeypatch):
    exp = experiment([{"name": "scripted"}], batch_sizes=(1,))
    with_meter(monkeypatch, UnavailableMeter("no counter here"))
    rec = ExperimentRunner(exp, results_root=tmp_path).run().records[0]
    assert rec.energy.measured is False and rec.energy.reason == "no counter here"
    assert rec.energy.tokens_per_joule is None and rec.energy.joules is None


def test_interrupted_sweep_keeps_finished_cells(test_engines, tmp_path):
    exp = experiment([{"name": "scripted", "options": {"interrupt_on_batch": 2}}])
    runner = ExperimentRunner(exp, results_root=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    records = {r.cell.batch_size: r for r in load_records(tmp_path)}
    assert records[1].status == "ok" and records[1].metrics["ttft_s"].n >= 2
    assert records[2].status == "failed" and records[2].reason.type == "KeyboardInterrupt"


@pytest.mark.slow
def test_records_load_into_a_dataframe(test_engines, tmp_path, monkeypatch):
    exp = experiment([{"name": "hf"}, {"name": "scripted", "options": {"fail_on_batch": 2}}], schedule="blocks")
    with_meter(monkeypatch, StepMeter())  # blocks: one window per cell
    ExperimentRunner(exp, results_root=tmp_path).run()
    (tmp_path / "notes.json").write_text(json.dumps({"not": "a record"}))  # skipped, not an error
    df = records_dataframe(tmp_path)
    assert len(df) == 4
    assert set(df["status"]) == {"ok", "failed"}
    ok = df[(df.engine == "hf") & (df.batch_size == 2)].iloc[0]
    assert ok.decode_tok_s > 0 and ok.decode_tok_s_p10 <= ok.decode_tok_s <= ok.decode_tok_s_p90
    assert ok.weights == "random" and ok.tokens_per_joule > 0 and ok.peak_memory_bytes > 0
    failed = df[(df.engine == "scripted") & (df.batch_size == 2)].iloc[0]
    assert failed.reason == "boom at batch 2"


def test_records_carry_roofline_positions(test_engines, tmp_path, monkeypatch):
    from rooflens.roofline.analytic import ModelShape, Precision, decode_cost, prefill_cost
    from rooflens.roofline.hardware import get_profile

    # a profile with datasheet ceilings, so attainable and efficiency exist
    exp = experiment([{"name": "hf"}], batch_sizes=(2,), hardware="rtx-4090")
    rec = ExperimentRunner(exp, results_root=tmp_path).run().records[0]
    rl = rec.roofline
    assert rl.reason is None and rl.weight_bits == 32.0 and rl.decode_context == 8 + 5 // 2
    from rooflens.models.loader import shipped_config

    shape = ModelShape.from_config(shipped_config("tiny-llama")[0])
    p = Precision(32, 32, 32)
    pre = prefill_cost(shape, batch=2, prompt_len=8, precision=p)
    dec = decode_cost(shape, batch=2, context_len=10, precision=p)
    ttft, tpot = rec.metrics["ttft_s"].median, rec.metrics["tpot_s"].median
    assert rl.prefill.flops.value == pytest.approx(pre.flops) and rl.decode.bytes.value == pytest.approx(dec.bytes)
    assert rl.prefill.achieved_flops.value == pytest.approx(pre.flops / ttft)
    assert rl.decode.achieved_bandwidth.value == pytest.approx(dec.bytes / tpot)
    prof = get_profile("rtx-4090")
    bw, peak = prof.bandwidth_si(), prof.peak_flops_si("fp32")
    attainable = min(peak, dec.intensity * bw)
    assert rl.decode.attainable_flops["datasheet"].value == pytest.approx(attainable)
    assert rl.decode.efficiency["datasheet"].value == pytest.approx(dec.flops / tpot / attainable)
    assert rl.decode.bound["datasheet"] == "memory"
    assert rl.decode.flops.source == "modelled" and rl.decode.time_s.source == "measured"
    assert rl.decode.achieved_flops.source == "derived"


# ---------------------------------------------------------------------------- trust: what the harness itself does


def test_the_timed_path_starts_no_thread(test_engines, tiny_llama):
    """A thread beside the measured code competes for torch's cores (a 5 ms RSS poller raised TPOT ~4 %)."""
    import threading

    seen = []

    class Watching(ScriptedEngine):
        def generate(self, input_ids, max_new_tokens, clock):
            seen.append({t.ident for t in threading.enumerate()})
            return super().generate(input_ids, max_new_tokens, clock)

    before = {t.ident for t in threading.enumerate()}
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=0)
    m = measure(
        Watching(Watching.Options(), tiny_llama),
        prompts,
        4,
        Repetitions(warmup=1, min_reps=3, min_seconds=0),
        UnavailableMeter("none"),
        CPU,
    )
    assert len(seen) == 4 and all(s == before for s in seen)
    assert m.memory.kind == "process_rss" and m.memory.peak_bytes >= m.memory.baseline_bytes > 0


def test_cpu_peak_memory_sees_an_allocation_made_and_freed_inside_the_window():
    import mmap

    from rooflens.bench.memory import PeakMemory

    with PeakMemory(CPU) as mem:
        # 64 MiB of fresh pages (an allocator could reuse resident memory it keeps), touched, then freed
        block = mmap.mmap(-1, 64 * 2**20)
        block[:: mmap.PAGESIZE] = b"x" * (64 * 2**20 // mmap.PAGESIZE)
        block.close()
    if "high-water mark" in mem.result.how:
        assert mem.result.peak_bytes - mem.result.baseline_bytes >= 60 * 2**20
    else:  # no resettable VmHWM on this kernel: the record says that peaks in between are missed
        assert "missed" in mem.result.how


def test_a_record_is_never_replaced(test_engines, tmp_path):
    from rooflens.results.store import RecordExistsError, write_record

    result = ExperimentRunner(experiment([{"name": "scripted"}], batch_sizes=(1,)), results_root=tmp_path).run()
    path = next(result.folder.glob("*.json"))
    original = path.read_text()
    with pytest.raises(RecordExistsError, match="never replaces a record"):
        write_record(result.folder, result.records[0])
    assert path.read_text() == original and not list(result.folder.glob(".*.tmp"))


def test_an_unwritable_results_folder_is_found_before_the_model_loads(test_engines, tmp_path):
    from rooflens.results.store import OutputError

    blocker = tmp_path / "file"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(OutputError, match="results folder .*: cannot write there"):
        ExperimentRunner(experiment([{"name": "scripted"}]), results_root=blocker / "results").run()


def test_a_prompt_longer_than_the_context_is_refused_before_measuring(test_engines, tmp_path):
    from rooflens.bench.preflight import PreflightError

    exp = validate_experiment(
        {
            "name": "long",
            "model": "shape:tiny-llama",
            "engines": [{"name": "scripted"}],
            "device": "cpu",
            "workloads": [
                {"name": "ok", "prompt_len": 8, "gen_len": 4},
                {"name": "huge", "prompt_len": 1020, "gen_len": 8},
            ],
        }
    )
    runner = ExperimentRunner(exp, results_root=tmp_path)
    with pytest.raises(PreflightError) as err:
        runner.run()
    assert str(err.value) == (
        "workloads[1] (huge): prompt_len 1020 + gen_len 8 = 1028 tokens exceed the context of "
        "shape:tiny-llama (max_position_embeddings = 1024); allowed: prompt_len + gen_len <= 1024"
    )
    assert not list(tmp_path.rglob("*.json")) and not runner.folder.exists()  # nothing measured, no empty run folder


def test_a_cell_that_would_not_fit_is_unavailable_with_the_numbers(test_engines, tmp_path, monkeypatch):
    from rooflens.bench import preflight

    # 40 MB free: batch 1 of tiny-llama fits; batch 2000 needs ~68 MB (KV cache, activations, logits)
    monkeypatch.setattr(preflight, "free_memory", lambda device: (40_000_000, "available RAM"))
    exp = experiment([{"name": "scripted"}], batch_sizes=(1, 2000))
    by = {r.cell.batch_size: r for r in ExperimentRunner(exp, results_root=tmp_path).run().records}
    assert by[1].status == "ok"
    big = by[2000]
    assert big.status == "unavailable" and big.reason.type == "InsufficientMemory"
    # tiny-llama: 4 layers x 2 (K, V) x 2000 x 13 tokens x kv_dim 32 x 4 bytes = 26.6 MB of KV cache
    assert "KV cache 0.03 GB for batch 2000 x (prompt 8 + gen 5) tokens" in big.reason.message
    assert "available RAM is 0.04 GB" in big.reason.message


@pytest.mark.slow
def test_a_draft_model_counts_in_the_memory_check(tmp_path, monkeypatch):
    from rooflens.bench import preflight

    monkeypatch.setattr(preflight, "free_memory", lambda device: (400_000_000, "available RAM"))
    exp = experiment(
        [
            {"name": "hf"},
            {"name": "speculative", "label": "big-draft", "options": {"draft": "shape:smollm2-135m", "gamma": 2}},
        ],
        batch_sizes=(1,),
    )
    by = {r.cell.engine_label: r for r in ExperimentRunner(exp, results_root=tmp_path).run().records}
    assert by["hf"].status == "ok"
    draft = by["big-draft"]
    assert (
        draft.status == "unavailable"
        and "draft model shape:smollm2-135m (134.5 M params) 0.54 GB" in draft.reason.message
    )


@pytest.mark.slow
def test_an_engine_can_run_in_its_own_dtype(test_engines, tmp_path):
    exp = experiment(
        [{"name": "hf"}, {"name": "hf", "label": "hf-bf16", "dtype": "bfloat16"}], batch_sizes=(1,), dtype="float32"
    )
    by = {r.cell.engine_label: r for r in ExperimentRunner(exp, results_root=tmp_path).run().records}
    assert by["hf"].status == by["hf-bf16"].status == "ok"
    assert (by["hf"].model.dtype, by["hf-bf16"].model.dtype) == ("float32", "bfloat16")
    assert by["hf"].model.dtype_reason == "float32, as the experiment says"
    assert by["hf-bf16"].model.dtype_reason == "bfloat16, set for engine 'hf-bf16'"
    assert by["hf-bf16"].roofline.weight_bits == 16 and by["hf"].roofline.weight_bits == 32


# ---------------------------------------------------------------------------- probe: auto


class _Notes:
    def __init__(self):
        self.lines = []

    def model_loading(self, label): ...
    def note(self, text):
        self.lines.append(text)

    def cell_started(self, *a): ...
    def repetition_done(self, *a): ...
    def cell_finished(self, *a): ...


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "never"])
def test_probe_auto_measures_missing_ceilings_once_and_says_so(mode, tmp_path, monkeypatch):
    from rooflens.roofline import probe as probe_module

    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path / "home"))  # no saved probe for this CPU
    FakeActivity().install(monkeypatch)  # a quiet machine, and rules nothing fails: timing is not tested here
    lenient_probe_rules(monkeypatch)
    calls = []
    real = probe_module.probe

    def small_probe(device, **kw):  # the real probe at tiny sizes: seconds matter in a unit test
        calls.append(kw)
        return real(device, quick=True, copy_bytes=1 << 22, gemm_n=64, reps=2, dtypes=["fp32"])

    monkeypatch.setattr(probe_module, "probe", small_probe)
    exp = tiny_experiment([{"name": "hf"}], batch_sizes=(1,), dtype="float32", probe=mode)
    notes = _Notes()
    first = ExperimentRunner(exp, results_root=tmp_path / "r1", observer=notes).run().records
    second = ExperimentRunner(exp, results_root=tmp_path / "r2", observer=_Notes()).run().records
    sources = {c.source for r in first + second for c in r.roofline.ceilings}
    if mode == "never":
        assert calls == [] and notes.lines == [] and sources == set()
        assert all("no probe of" in r.roofline.probe_note for r in first + second)  # the records say why
        return
    assert len(calls) == 1, "the saved probe is reused by the second run"
    assert calls[0].get("quick") is None, "the automatic probe measures what `rooflens hw probe` does"
    assert "measuring them once" in notes.lines[0] and "saved to" in notes.lines[-1]
    assert sources == {"measured"}
    assert all(r.roofline.decode.efficiency_pct() is not None for r in first + second)
    threads = torch.get_num_threads()
    for r in first + second:  # each record names the probe it used
        (measured,) = [c for c in r.roofline.ceilings if c.source == "measured"]
        assert measured.probe.file.endswith(f"-t{threads}.json") and measured.probe.valid
        assert measured.probe.threads == threads and measured.probe.age_s >= 0 and r.roofline.probe_note is None


@pytest.mark.slow
def test_an_unwritable_rooflens_home_keeps_the_automatic_probe_for_this_run(tmp_path, monkeypatch):
    from rooflens.roofline import probe as probe_module

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path / "file" / "home"))  # nothing can be written there
    FakeActivity().install(monkeypatch)
    lenient_probe_rules(monkeypatch)
    real = probe_module.probe
    monkeypatch.setattr(
        probe_module, "probe", lambda device, **kw: real(device, quick=True, copy_bytes=1 << 22, gemm_n=64, reps=2)
    )
    notes = _Notes()
    exp = tiny_experiment([{"name": "hf"}], batch_sizes=(1,), dtype="float32", probe="auto")
    records = ExperimentRunner(exp, results_root=tmp_path / "r", observer=notes).run().records
    assert "not saved (" in notes.lines[-1] and "used for this run only" in notes.lines[-1]
    assert [r.status for r in records] == ["ok"]
    assert {c.source for c in records[0].roofline.ceilings} == {"measured"}


@pytest.mark.slow
def test_a_refused_automatic_probe_leaves_the_run_without_measured_ceilings_and_says_why(tmp_path, monkeypatch):
    from rooflens.roofline import probe as probe_module

    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path / "home"))
    FakeActivity(share=0.6, load=(1.9, 1.0, 0.5)).install(monkeypatch)  # something else busy on one core
    exp = tiny_experiment([{"name": "hf"}], batch_sizes=(1, 2), dtype="float32", probe="auto")
    notes = _Notes()
    runner = ExperimentRunner(exp, results_root=tmp_path / "r", observer=notes)
    records = runner.run().records
    assert any("refused: no valid probe" in line and "nothing saved" in line for line in notes.lines)
    assert not (tmp_path / "home" / "probes").exists() or not list((tmp_path / "home" / "probes").iterdir())
    assert len(records) == 2 and all(r.status == "ok" for r in records), "the run goes on"
    for r in records:
        assert [c.source for c in r.roofline.ceilings] == []  # never the noisy ones
        assert r.roofline.probe_note.startswith("the automatic probe was refused")
        assert "other processes used 60.0 % of the CPU time" in r.roofline.probe_note
    assert runner.probe is None and runner.probe_refused.startswith("the automatic probe was refused")
    assert probe_module.ATTEMPTS == 3


def test_a_one_thread_probe_is_not_used_by_a_two_thread_run(tmp_path, monkeypatch):
    from factories import valid_probe
    from rooflens.roofline.probe_file import save_probe

    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path / "home"))
    two = ExperimentRunner(tiny_experiment([{"name": "hf"}], threads=2, probe="auto"), results_root=tmp_path)
    two.resolve_hardware()
    save_probe(valid_probe(two.device_name, threads=1))
    two.resolve_hardware()
    assert two.probe_threads == 2 and two.probe is None and two.needs_probe  # probe: auto measures at 2
    assert "probes at 1 threads are not used" in two.probe_note
    one = ExperimentRunner(tiny_experiment([{"name": "hf"}], threads=1, probe="auto"), results_root=tmp_path)
    one.resolve_hardware()
    assert one.probe is not None and one.probe.threads == 1 and not one.needs_probe
    save_probe(valid_probe(two.device_name, threads=2))
    two.resolve_hardware()
    assert two.probe is not None and two.probe.threads == 2 and not two.needs_probe


@pytest.mark.parametrize("cpu", ["avx2-only", "avx512-bf16"])
def test_dtype_auto_follows_the_cpu_and_every_byte_count_follows_the_dtype(cpu, test_engines, tmp_path, monkeypatch):
    """Both branches of ``dtype: auto`` on a CPU, forced (the suite must not depend on the CPU CI gets): the
    record names the dtype chosen and why, and the roofline's weight bits and the KV bytes follow it."""
    from rooflens.device.cpu import CpuInfo
    from rooflens.models import loader

    flags = ["avx2", "fma"] + (["avx512f", "avx512_bf16"] if cpu == "avx512-bf16" else [])
    monkeypatch.setattr(loader, "detect_cpu", lambda: CpuInfo(model="test CPU", flags=frozenset(flags)))
    monkeypatch.setattr(loader, "_gemv_seconds", lambda dtype: 1e-4 if dtype == torch.bfloat16 else 3e-4)
    exp = experiment([{"name": "hf"}], batch_sizes=(1,), dtype="auto")
    rec = ExperimentRunner(exp, results_root=tmp_path).run().records[0]
    assert rec.status == "ok", rec.reason
    bf16 = cpu == "avx512-bf16"
    assert rec.model.dtype == ("bfloat16" if bf16 else "float32")
    assert ("native bf16 (avx512_bf16)" if bf16 else "no native bfloat16") in rec.model.dtype_reason
    bits = 16.0 if bf16 else 32.0
    assert rec.roofline.weight_bits == bits
    from rooflens.models.loader import shipped_config
    from rooflens.roofline.analytic import ModelShape, Precision, decode_cost

    shape = ModelShape.from_config(shipped_config("tiny-llama")[0])
    dec = decode_cost(shape, batch=1, context_len=rec.roofline.decode_context, precision=Precision(bits, bits, bits))
    assert rec.roofline.decode.bytes.value == pytest.approx(dec.bytes)


def test_a_refusal_reaches_the_records_of_later_jobs(tmp_path, monkeypatch):
    """Under subprocess or Ray a cell's process is not the probe's: the driver hands it the refusal."""
    from rooflens.bench import workbench
    from rooflens.roofline.hardware import resolve_profile

    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path / "home"))
    runner = ExperimentRunner(tiny_experiment([{"name": "hf"}], probe="auto"), results_root=tmp_path)
    runner.resolve_hardware()
    runner.probe_refused = "the automatic probe was refused (attempt 1: invalid ...)"
    job = runner.job([0], "subprocess")
    assert job.probe_note == runner.probe_refused and not job.probe
    assert runner.job([], "subprocess", probe=True).probe_note is None
    resolved = resolve_profile("auto", "cpu")
    probe, note = workbench._ceilings(job, resolved, torch.device("cpu"), "float32", lambda event: None)
    assert probe is None and note == runner.probe_refused
    plain = job.model_copy(update={"probe_note": None})
    assert "no probe of" in workbench._ceilings(plain, resolved, torch.device("cpu"), "float32", print)[1]
