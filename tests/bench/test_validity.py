"""A cell's validity: the rules on injected samples and conditions, the window watch on a fake sysfs and a
fake NVML, and whole runs of scripted engines on virtual time (nothing here depends on the machine's speed)."""

import sys
import types

import pytest
import torch

from factories import metric, tiny_experiment
from rooflens.bench import conditions
from rooflens.bench.conditions import WindowConditions, WindowWatch
from rooflens.bench.runner import ExperimentRunner
from rooflens.bench.validity import judge_cell
from rooflens.config import ConfigError, Repetitions, ValidityLimits, parse_experiment
from rooflens.device import gpu

ASKED = Repetitions(warmup=0, min_reps=3, min_seconds=1.0)


def window(device_type="cpu", threads=2, cores=4, **kw) -> WindowConditions:
    return WindowConditions(device_type, threads, cores, **{"load_start": 0.0, "load_end": 0.0, **kw})


def metrics(decode, e2e=None):
    return {"decode_tok_s": metric(decode), "e2e_tok_s": metric(e2e or decode)}


QUIET = [100.0, 101.0, 99.0, 100.5, 99.5]  # CV ~0.8 %
NOISY = [100.0, 140.0, 70.0, 120.0, 80.0]  # CV ~28 %


def judge(decode=QUIET, limits=ValidityLimits(), asked=ASKED, reps=5, seconds=2.0, w=None, e2e=None):
    return judge_cell(limits, asked, metrics(decode, e2e), reps, seconds, w or window())


# ---------------------------------------------------------------------------- the rules


def test_a_quiet_cell_is_valid_and_says_what_it_checked():
    v = judge()
    assert v.status == "valid" and v.reasons == [] and v.summary() == "valid"
    assert v.limits["max_cv"] == 0.10 and v.limits["min_reps"] == 3 and v.limits["max_load"] == 2 + 0.5 * 4
    assert v.measured["cv_decode_tok_s"] == pytest.approx(metric(QUIET).cv)
    assert "another measurement on this machine: not checked" in v.notes


def test_a_noisy_cell_is_invalid_with_its_cv_and_the_limit():
    v = judge(NOISY)
    assert v.status == "invalid" and [r.check for r in v.reasons] == ["cv"]
    r = v.reasons[0]
    assert r.value == pytest.approx(metric(NOISY).cv) and r.limit == 0.10 and r.source == "derived"
    assert v.summary() == f"invalid (cv {100 * r.value:.0f}% > 10%)"


def test_the_cv_limit_defaults_by_device_and_the_experiment_can_set_it():
    seven = [100.0, 107.0, 93.0, 107.0, 93.0]  # CV 7 %
    assert judge(seven, w=window("cpu")).status == "valid"  # 10 % on a CPU
    gpu_cell = judge(seven, w=window("cuda"))
    assert gpu_cell.status == "invalid" and gpu_cell.limits["max_cv"] == 0.05  # 5 % on a GPU
    assert judge(seven, limits=ValidityLimits(max_cv=0.08), w=window("cuda")).status == "valid"
    assert judge(seven, limits=ValidityLimits(max_cv=0.06), w=window("cpu")).status == "invalid"


def test_e2e_is_the_primary_metric_where_decode_figures_are_unusable():
    v = judge([float("inf")] * 5, e2e=NOISY)
    assert "cv_e2e_tok_s" in v.measured and v.reasons[0].check == "cv"


def test_one_repetition_cannot_be_judged_for_spread_and_says_so():
    v = judge([100.0], asked=Repetitions(warmup=0, min_reps=1, min_seconds=0.0), reps=1)
    assert v.status == "valid" and any("cannot be judged from 1 repetition" in n for n in v.notes)


def test_fewer_repetitions_or_seconds_than_asked_are_reasons():
    v = judge(reps=2, seconds=0.25)
    assert [(r.check, r.value, r.limit) for r in v.reasons] == [("repetitions", 2, 3), ("seconds", 0.25, 1.0)]
    assert v.summary() == "invalid (2 reps < min_reps 3; 0.25 s < min_seconds 1)"


def test_max_reps_below_min_reps_is_refused_by_the_schema():
    with pytest.raises(ConfigError, match="max_reps"):
        parse_experiment(
            {
                "name": "x",
                "model": "shape:tiny-llama",
                "engines": [{"name": "hf"}],
                "workloads": [{"prompt_len": 8, "gen_len": 4}],
                "repetitions": {"min_reps": 5, "max_reps": 2},
            }
        )


def test_load_beyond_the_runs_own_threads_is_a_reason_at_start_or_end():
    # 2 own threads + 0.5 x 4 cores = 4.0 allowed
    v = judge(w=window(load_start=3.9, load_end=4.5))
    assert [(r.check, r.value, r.limit) for r in v.reasons] == [("load_at_end", 4.5, 4.0)]
    assert "load 4.50 at end > 4.00 (2 own + 0.5 x 4 cores)" in v.summary()
    # a GPU cell's own share is one thread: 1 + 2 = 3.0 allowed
    v = judge(w=window("cuda", load_start=3.5, gpu_samples=1))
    assert [(r.check, r.limit) for r in v.reasons] == [("load_at_start", 3.0)]
    assert judge(limits=ValidityLimits(max_other_load=1.0), w=window(load_end=4.5)).status == "valid"


def test_another_measurement_is_a_reason_once_something_checks_it():
    assert judge(w=window(other_measurement=True)).reasons[0].check == "other_measurement"
    checked = judge(w=window(other_measurement=False))
    assert checked.status == "valid" and checked.other_measurement is False
    assert not any("another measurement" in n for n in checked.notes)


def test_validity_limits_are_checked_by_the_schema():
    base = {
        "name": "x",
        "model": "shape:tiny-llama",
        "engines": [{"name": "hf"}],
        "workloads": [{"prompt_len": 8, "gen_len": 4}],
    }
    with pytest.raises(ConfigError, match=r"validity\.max_cv: Input should be less than or equal to 1"):
        parse_experiment({**base, "validity": {"max_cv": 10}})
    with pytest.raises(ConfigError, match=r"validity\.max_spread: unknown key \(allowed: max_cv, "):
        parse_experiment({**base, "validity": {"max_spread": 0.1}})
    exp = parse_experiment({**base, "validity": {"max_cv": 0.2}})
    assert exp.validity.max_cv == 0.2
    assert exp.config_hash() == parse_experiment(base).config_hash()  # how a cell is judged is not what is measured


# ---------------------------------------------------------------------------- the window watch


def fake_sysfs(root, clocks: dict[int, int]) -> None:
    for cpu, khz in clocks.items():
        folder = root / f"cpu{cpu}" / "cpufreq"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scaling_cur_freq").write_text(f"{khz}\n")


@pytest.fixture
def sysfs(tmp_path, monkeypatch):
    from rooflens.device import cpu

    root = tmp_path / "sys-cpu"
    root.mkdir()
    monkeypatch.setattr(cpu, "CPUFREQ_ROOT", root)
    monkeypatch.setattr(conditions, "read_loadavg", lambda: 0.0)
    return root


def test_a_cpu_clock_drop_across_the_window_is_a_reason(sysfs):
    fake_sysfs(sysfs, {0: 3_600_000, 1: 800_000, 2: 3_600_000})  # cpu2 is not ours: never read
    watch = WindowWatch(torch.device("cpu"), cpus={0, 1})
    watch.start()
    fake_sysfs(sysfs, {0: 3_000_000, 1: 3_400_000})  # still the highest at 3.4 GHz: -5.6 %
    watch.sample()
    fake_sysfs(sysfs, {0: 2_700_000, 1: 2_000_000})  # -25 %
    watch.sample()
    w = watch.stop()
    assert (w.cpu_khz_min, w.cpu_khz_max, w.cpu_samples) == (2_700_000, 3_600_000, 3)
    v = judge_cell(ValidityLimits(), ASKED, metrics(QUIET), 5, 2.0, w)
    assert [r.check for r in v.reasons] == ["cpu_clock"] and v.reasons[0].value == pytest.approx(0.25)
    assert "cpu clock -25% (3.60 -> 2.70 GHz) > 10%" in v.summary()


def test_a_small_clock_change_is_valid_and_no_cpufreq_is_a_note(sysfs):
    fake_sysfs(sysfs, {0: 3_600_000})
    watch = WindowWatch(torch.device("cpu"), cpus={0})
    watch.start()
    fake_sysfs(sysfs, {0: 3_400_000})
    watch.sample()
    v = judge_cell(ValidityLimits(), ASKED, metrics(QUIET), 5, 2.0, watch.stop())
    assert v.status == "valid" and v.measured["cpu_clock_drop"] == pytest.approx(1 / 18)
    empty = WindowWatch(torch.device("cpu"), cpus={7})
    empty.start()
    v = judge_cell(ValidityLimits(), ASKED, metrics(QUIET), 5, 2.0, empty.stop())
    assert v.status == "valid" and any("CPU clocks not readable here" in n for n in v.notes)


def test_the_load_is_sampled_at_the_start_and_the_end_of_the_window(sysfs, monkeypatch):
    loads = iter([0.5, 9.0])
    monkeypatch.setattr(conditions, "read_loadavg", lambda: next(loads))
    watch = WindowWatch(torch.device("cpu"), cpus=set())
    watch.start()
    w = watch.stop()
    assert (w.load_start, w.load_end) == (0.5, 9.0)
    v = judge_cell(ValidityLimits(), ASKED, metrics(QUIET), 5, 2.0, w)
    assert [r.check for r in v.reasons] == ["load_at_end"]


def fake_nvml(reasons: list[int]) -> types.ModuleType:
    """One board whose clocks-throttle reasons are ``reasons``, one per read (the last repeats)."""
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    reads = iter(reasons)
    last = [0]

    def throttle(handle):
        assert handle == ("board", 0)
        last[0] = next(reads, last[0])
        return last[0]

    mod.NVMLError = NVMLError
    mod.nvmlInit = lambda: None
    mod.nvmlDeviceGetCount = lambda: 1
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("board", i)
    mod.nvmlDeviceGetCurrentClocksThrottleReasons = throttle
    return mod


@pytest.fixture
def nvml(monkeypatch):
    monkeypatch.setattr(gpu, "_initialised", None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(conditions, "read_loadavg", lambda: 0.0)

    def install(reasons: list[int]) -> None:
        monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(reasons))

    return install


def _gpu_window(samples: int) -> WindowConditions:
    watch = WindowWatch(torch.device("cuda", 0))
    watch.start()
    for _ in range(samples):
        watch.sample()
    return watch.stop()


def test_an_nvml_thermal_slowdown_in_the_window_is_a_reason(nvml):
    nvml([0x0, 0x0, 0x40, 0x0])  # hardware thermal slowdown at the second repetition
    w = _gpu_window(3)
    assert w.gpu_samples == 4 and w.gpu_reasons == 0x40
    v = judge_cell(ValidityLimits(), ASKED, metrics(QUIET), 5, 2.0, w)
    assert [r.check for r in v.reasons] == ["gpu_throttle"] and v.reasons[0].value == 0x40
    assert v.summary() == "invalid (gpu hardware thermal slowdown)"


def test_the_software_power_cap_and_idle_are_notes_not_reasons(nvml):
    nvml([0x1, 0x4])
    v = judge_cell(ValidityLimits(), ASKED, metrics(QUIET), 5, 2.0, _gpu_window(1))
    assert v.status == "valid" and any("software power cap" in n for n in v.notes)


def test_no_nvml_is_a_note(monkeypatch):
    monkeypatch.setattr(gpu, "_initialised", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monkeypatch.setattr(conditions, "read_loadavg", lambda: 0.0)
    v = judge_cell(ValidityLimits(), ASKED, metrics(QUIET), 5, 2.0, _gpu_window(2))
    assert v.status == "valid" and any("GPU clocks-event reasons not readable here" in n for n in v.notes)


# ---------------------------------------------------------------------------- whole runs, on virtual time


def run(tmp_path, token_s, **extra):
    exp = tiny_experiment([{"name": "paced", "options": {"token_s": token_s}}], batch_sizes=(1,), **extra)
    return ExperimentRunner(exp, results_root=tmp_path).run().records[0]


def test_a_noisy_engine_makes_its_cell_invalid_and_a_quiet_one_valid(
    test_engines, virtual_time, quiet_machine, tmp_path
):
    noisy = run(
        tmp_path / "noisy", [0.01, 0.002, 0.02, 0.005], repetitions={"warmup": 0, "min_reps": 4, "min_seconds": 0}
    )
    assert noisy.status == "ok" and noisy.validity.status == "invalid"
    assert [r.check for r in noisy.validity.reasons] == ["cv"]
    assert noisy.validity.reasons[0].value == pytest.approx(noisy.metrics["decode_tok_s"].cv)
    quiet = run(tmp_path / "quiet", [0.01], repetitions={"warmup": 0, "min_reps": 4, "min_seconds": 0})
    assert quiet.validity.status == "valid" and quiet.validity.measured["cv_decode_tok_s"] == pytest.approx(0, abs=1e-9)
    assert any("CPU clocks not readable here" in n for n in quiet.validity.notes)  # the fake machine has no cpufreq


def test_a_window_cut_short_by_max_reps_is_invalid(test_engines, virtual_time, quiet_machine, tmp_path):
    r = run(tmp_path, [0.01], repetitions={"warmup": 0, "min_reps": 2, "max_reps": 2, "min_seconds": 3600})
    assert r.repetitions.stopped_by == "max_reps"
    assert [x.check for x in r.validity.reasons] == ["seconds"] and r.validity.reasons[0].limit == 3600


def test_a_busy_machine_makes_the_cell_invalid(test_engines, virtual_time, quiet_machine, monkeypatch, tmp_path):
    monkeypatch.setattr(conditions, "read_loadavg", lambda: 1000.0)
    r = run(tmp_path, [0.01])
    assert {x.check for x in r.validity.reasons} == {"load_at_start", "load_at_end"}


def test_cells_that_did_not_measure_are_not_judged(test_engines, quiet_machine, tmp_path):
    exp = tiny_experiment([{"name": "cuda-only"}], batch_sizes=(1,))
    r = ExperimentRunner(exp, results_root=tmp_path).run().records[0]
    assert r.status == "unavailable" and r.validity.status == "n/a"


def test_a_cv_just_over_the_limit_reads_as_over_it():
    v = judge([100.0, 110.4, 89.6, 110.4, 89.6], limits=ValidityLimits(max_cv=0.10))
    assert v.summary().startswith("invalid (cv 10.") and v.summary().endswith("% > 10%)")
