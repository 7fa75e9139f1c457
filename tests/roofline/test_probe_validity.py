"""A probe is valid or refused: the rules on injected samples, a busy machine (faked, and one real busy
process), retries, refusal without saving, files keyed by thread count, zero ceilings refused on load."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
import torch

from factories import FakeActivity, probe_stat, valid_probe
from rooflens.device import activity
from rooflens.roofline import probe as probemod
from rooflens.roofline import probe_rules
from rooflens.roofline.probe import ProbeRefused, probe
from rooflens.roofline.probe_file import (
    legacy_probe_path,
    load_probe,
    lookup_probe,
    probe_path,
    save_probe,
    saved_reasons,
)
from rooflens.roofline.probe_rules import ProbeRules, spread_reasons, stat_reasons

MiB = 2**20
RULES = ProbeRules()


class CyclingClock:
    """Start/stop pairs that span ``durations`` in turn, over and over (a steady or a noisy machine)."""

    def __init__(self, durations: list[float]) -> None:
        self.durations, self.t, self.i, self.started = durations, 0.0, 0, False

    def __call__(self) -> float:
        if self.started:
            self.t += self.durations[self.i % len(self.durations)]
            self.i += 1
        self.started = not self.started
        return self.t


STEADY = CyclingClock([1e-3])
NOISY = [1e-3, 3e-3, 1e-3, 2e-3, 5e-3]  # rates 1x, 1/3x, 1x, 1/2x, 1/5x: CV far above 10 %


@pytest.fixture(autouse=True)
def strict(monkeypatch, tmp_path):
    """Today's rules; no cache to dwarf (the tests copy 1 MiB); a fresh probes folder."""
    monkeypatch.setattr(probe_rules, "RULES", ProbeRules())
    monkeypatch.setattr(probemod, "last_level_cache_bytes", lambda: None)
    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path))


def _bandwidth_only(clock, **kw):
    return probe("cpu", dtypes=[], copy_bytes=MiB, reps=10, clock=clock, **kw)


def _saved_files(tmp_path):
    folder = tmp_path / "probes"
    return sorted(folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------- the rules on injected samples


def test_a_tight_sample_set_is_valid():
    assert stat_reasons("bandwidth", probe_stat(50e9, "B/s", spread=0.02), RULES.bandwidth_max_cv, RULES) == []
    assert spread_reasons(probe_stat(50e9, "B/s"), {"fp32": probe_stat(200e9)}, RULES) == []


def test_a_noisy_sample_set_is_invalid_and_says_which_statistic_and_by_how_much():
    # the first run: 64 MiB copies from 5.8 to 17.6 GB/s, fp32 GEMMs from 5.5 to 188 GFLOP/s
    noisy_bw = probe_stat(17.6e9, "B/s", spread=0.67)
    noisy_gemm = probe_stat(188e9, spread=0.97)
    reasons = spread_reasons(noisy_bw, {"fp32": noisy_gemm, "bf16": probe_stat(800e9)}, RULES)
    assert any(r.startswith(f"bandwidth: CV {100 * noisy_bw.cv:.1f} % > 10.0 %") for r in reasons), reasons
    assert any(r.startswith(f"gemm fp32: CV {100 * noisy_gemm.cv:.1f} % > 10.0 %") for r in reasons), reasons
    assert any(r.startswith("gemm fp32: median") and "of best < 80.0 %" in r for r in reasons)
    assert not any("bf16" in r for r in reasons)


def test_bandwidth_and_gemms_are_held_to_their_cv_limits():
    seven = probe_stat(100e9, spread=0.2)  # CV ~7 %
    assert 0.05 < seven.cv < 0.10
    assert stat_reasons("bandwidth", seven, RULES.bandwidth_max_cv, RULES) == []
    assert stat_reasons("gemm fp32", seven, RULES.gemm_max_cv, RULES) == []
    noisy = probe_stat(100e9, spread=0.4)  # CV ~18 %
    assert noisy.cv > 0.10
    assert stat_reasons("gemm fp32", noisy, RULES.gemm_max_cv, RULES) != []


def test_too_few_reps_and_a_lucky_best_rep_are_invalid():
    few = probe_stat(100e9, n=5)
    assert stat_reasons("gemm fp32", few, RULES.gemm_max_cv, RULES) == ["gemm fp32: 5 reps < 10"]
    lucky = probe_stat(100e9, n=20).model_copy(update={"max": 150e9})  # one outlier far above the median
    assert any("of best < 80.0 %" in r for r in stat_reasons("x", lucky, 1.0, RULES))


def test_quiet_rules_against_the_core_count():
    assert probe_rules.load_reasons([1.9, 0.5, 0.2], 2, RULES) == []
    assert probe_rules.load_reasons([2.5, 0.5, 0.2], 2, RULES) == ["load average 2.50 on 2 cores > 2.00 (1 per core)"]
    assert probe_rules.load_reasons(None, 2, RULES) == []
    assert probe_rules.other_cpu_reasons(0.05, "during it", RULES) == []
    assert probe_rules.other_cpu_reasons(0.5, "during it", RULES) == [
        "other processes used 50.0 % of the CPU time during it (limit 10.0 %)"
    ]
    assert probe_rules.copy_reasons(64 * MiB, 32 * MiB, RULES) == [
        "bandwidth: a 64 MiB copy < 4x the 32 MiB last-level cache"
    ]
    assert probe_rules.copy_reasons(512 * MiB, 32 * MiB, RULES) == probe_rules.copy_reasons(MiB, None, RULES) == []


def test_the_default_copy_dwarfs_the_last_level_cache():
    cpu = torch.device("cpu")
    assert probemod._copy_size(cpu, False, 32 * MiB) == 512 * MiB  # the manual probe's size
    assert probemod._copy_size(cpu, False, 256 * MiB) == 1024 * MiB  # 4x a server's L3
    assert probemod._copy_size(cpu, True, 32 * MiB) == 128 * MiB  # quick: 64 MiB, but 4x the cache
    assert probemod._copy_size(cpu, False, None) == 512 * MiB  # cache unknown: the manual size


def test_a_copy_inside_the_cache_is_invalid(monkeypatch):
    FakeActivity().install(monkeypatch)
    monkeypatch.setattr(probemod, "ATTEMPTS", 1)
    monkeypatch.setattr(probemod, "last_level_cache_bytes", lambda: 32 * MiB)
    with pytest.raises(ProbeRefused, match="a 1 MiB copy < 4x the 32 MiB last-level cache"):
        _bandwidth_only(CyclingClock([1e-3]))


# ---------------------------------------------------------------------------- retried, then refused


def test_a_noisy_probe_is_retried_then_refused_and_never_saved(monkeypatch, tmp_path):
    FakeActivity(share=0.01, load=(0.2, 0.1, 0.1)).install(monkeypatch)
    messages: list[str] = []
    with pytest.raises(ProbeRefused) as refused:
        _bandwidth_only(CyclingClock(NOISY), progress=messages.append)
    err = refused.value
    assert [a.number for a in err.attempts] == [1, 2, 3]
    assert all(a.verdict == "invalid" and a.bandwidth is not None for a in err.attempts)
    text = str(err)
    assert "refused: no valid probe" in text and "in 3 attempts; nothing saved" in text
    assert "bandwidth: CV" in text and "> 10.0 %" in text  # which statistic, and by how much
    assert "load average 0.20 on 2 cores" in text  # the load seen
    assert "`rooflens hw probe` on a quiet machine" in text  # how to probe later
    assert f"--threads {torch.get_num_threads()}" in text
    assert sum("retrying" in m for m in messages) == 2
    assert _saved_files(tmp_path) == []


def test_a_busy_machine_is_not_measured_retried_then_refused(monkeypatch, tmp_path):
    busy = FakeActivity(share=0.6, load=(2.9, 1.2, 0.8)).install(monkeypatch)
    clock = CyclingClock([1e-3])
    with pytest.raises(ProbeRefused) as refused:
        _bandwidth_only(clock)
    attempts = refused.value.attempts
    assert len(attempts) == probemod.ATTEMPTS == 3
    assert clock.i == 0, "a machine busy before the measurement is not measured"
    assert busy.windows == 3  # one window before each attempt, none during
    for a in attempts:
        assert a.bandwidth is None and a.load.other_cpu_before == pytest.approx(0.6)
        assert "other processes used 60.0 % of the CPU time before the measurement (limit 10.0 %)" in a.reasons
        assert "load average 2.90 on 2 cores > 2.00 (1 per core)" in a.reasons
    assert _saved_files(tmp_path) == []


def test_busy_during_the_measurement_is_invalid(monkeypatch):
    shares = iter([0.0, 0.5])  # quiet before, busy during

    class Sampler(FakeActivity):
        def watch(self):
            self.share = next(shares)
            return super().watch()

    Sampler().install(monkeypatch)
    monkeypatch.setattr(probemod, "ATTEMPTS", 1)
    with pytest.raises(ProbeRefused) as refused:
        _bandwidth_only(CyclingClock([1e-3]))
    (attempt,) = refused.value.attempts
    assert attempt.bandwidth is not None and attempt.load.other_cpu_during == pytest.approx(0.5)
    assert attempt.reasons == ["other processes used 50.0 % of the CPU time during the measurement (limit 10.0 %)"]


def test_a_probe_valid_on_its_second_attempt_keeps_both(monkeypatch, tmp_path):
    shares = iter([0.7, 0.0, 0.0])  # busy before attempt 1; quiet before and during attempt 2

    class Sampler(FakeActivity):
        def watch(self):
            self.share = next(shares)
            return super().watch()

    Sampler().install(monkeypatch)
    result = _bandwidth_only(CyclingClock([1e-3]))
    assert [(a.number, a.verdict) for a in result.attempts] == [(1, "invalid"), (2, "valid")]
    assert result.chosen == 2 and result.attempts[0].bandwidth is None
    assert result.rules == ProbeRules().as_dict()
    path = save_probe(result)
    assert path.name.endswith(f"-t{torch.get_num_threads()}.json")
    saved = load_probe(result.device_name, torch.get_num_threads())
    assert saved is not None and [a.verdict for a in saved.attempts] == ["invalid", "valid"]


def test_the_load_average_is_judged_until_an_attempt_has_measured(monkeypatch):
    """After an attempt of its own, the 1-minute load average counts the probe's threads: not judged."""
    FakeActivity(share=0.0, load=(2.5, 1.0, 0.5)).install(monkeypatch)
    with pytest.raises(ProbeRefused) as refused:
        _bandwidth_only(CyclingClock([1e-3]))
    first, second, _ = refused.value.attempts
    assert first.load.load_judged and first.bandwidth is None  # busy by the load: not measured
    assert second.load.load_judged  # still nothing of ours measured
    monkeypatch.setattr(probemod, "ATTEMPTS", 2)
    clock = CyclingClock(NOISY)
    FakeActivity(share=0.0, load=(0.1, 0.1, 0.1)).install(monkeypatch)
    loads = iter([(0.1, 0.1, 0.1), (2.5, 1.0, 0.5)])  # low before attempt 1, high (its own) before attempt 2
    monkeypatch.setattr(activity, "load_average", lambda: next(loads))
    with pytest.raises(ProbeRefused) as refused:
        _bandwidth_only(clock)
    first, second = refused.value.attempts
    assert first.load.load_judged and not second.load.load_judged
    assert not any("load average" in r for r in second.reasons)
    assert second.bandwidth is not None  # measured (and refused for its spread alone)


def test_a_gpu_probe_records_the_cpu_load_without_judging_it():
    attempt = valid_probe("NVIDIA Test GPU", device="cuda:0").attempts[0]
    assert attempt.load.judged is False


def test_save_refuses_an_invalid_probe(tmp_path):
    result = valid_probe()
    bad = result.attempts[0].model_copy(update={"verdict": "invalid", "reasons": ["bandwidth: CV 39.0 % > 10.0 %"]})
    with pytest.raises(ValueError, match=r"refusing to save .* not valid \(bandwidth: CV 39.0 % > 10.0 %\)"):
        save_probe(result.model_copy(update={"attempts": [bad]}), root=tmp_path)
    assert _saved_files(tmp_path) == []


# ---------------------------------------------------------------------------- a real busy process


BUSY_CHILD = "import time\nt_end = time.time() + {seconds}\nwhile time.time() < t_end:\n    pass\n"


def _busy_child(seconds: float) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", BUSY_CHILD.format(seconds=seconds)])
    time.sleep(0.3)  # the interpreter is up and spinning
    return child


def _stop(child: subprocess.Popen) -> None:
    child.kill()
    child.wait(timeout=10)


@pytest.mark.slow
def test_the_real_sampler_sees_a_busy_process():
    child = _busy_child(5)
    try:
        window = activity.watch()
        time.sleep(1.0)  # this process idles: the busy child is "other processes"
        seen = window.stop()
    finally:
        _stop(child)
    assert seen.other_cpu_s > probe_rules.MAX_OTHER_CPU_SHARE * seen.cores * seen.wall_s, seen
    assert probe_rules.other_cpu_reasons(seen.other_share, "before", ProbeRules()) != []


@pytest.mark.slow
def test_a_probe_beside_a_real_busy_process_is_refused_and_not_saved(monkeypatch, tmp_path):
    monkeypatch.setattr(probemod, "ATTEMPTS", 2)
    monkeypatch.setattr(probemod, "RETRY_PAUSE_S", 0.2)
    monkeypatch.setattr(probemod, "QUIET_WINDOW_S", 0.5)
    child = _busy_child(5)
    try:
        with pytest.raises(ProbeRefused) as refused:
            probe("cpu", dtypes=["fp32"], copy_bytes=MiB, gemm_n=64, reps=10)
    finally:
        _stop(child)
    for attempt in refused.value.attempts:
        assert any("other processes used" in r for r in attempt.reasons), attempt.reasons
    assert _saved_files(tmp_path) == []


# ---------------------------------------------------------------------------- what a run may use


def test_a_one_thread_probe_is_not_a_two_thread_runs_ceiling(tmp_path):
    save_probe(valid_probe(threads=1), root=tmp_path)
    name = valid_probe().device_name
    at_two = lookup_probe(name, 2, root=tmp_path)
    assert at_two.probe is None
    assert at_two.path.name.endswith("-t2.json")
    assert "no probe of Test CPU (R) @ 2.0GHz at 2 threads" in at_two.note
    assert "probes at 1 threads are not used: a probe counts at its own threads only" in at_two.note
    at_one = lookup_probe(name, 1, root=tmp_path)
    assert at_one.probe is not None and at_one.note is None


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_a_zero_negative_or_non_finite_ceiling_refuses_the_file(tmp_path, bad):
    good = valid_probe()
    path = save_probe(good, root=tmp_path)
    data = good.model_dump(mode="json")
    data["gemm"]["fp32"]["max"] = bad
    path.write_text(__import__("json").dumps(data).replace("Infinity", "1e999"))
    with pytest.raises(ValueError, match=r"not a valid probe result .*finite number > 0"):
        load_probe(good.device_name, 2, root=tmp_path)
    found = lookup_probe(good.device_name, 2, root=tmp_path)
    assert found.probe is None and found.note.startswith(f"refused {path}")


def test_an_old_probe_file_is_ignored_with_a_note(tmp_path):
    legacy = legacy_probe_path("Test CPU", root=tmp_path)
    legacy.parent.mkdir(parents=True)
    legacy.write_text('{"device": "cpu", "threads": 2}')
    found = lookup_probe("Test CPU", 2, root=tmp_path)
    assert found.probe is None
    assert f"ignored {legacy}: a probe from before rooflens judged probes (re-probe)" in found.note


def test_a_saved_probe_is_judged_again_when_loaded(tmp_path, monkeypatch):
    probe_file = valid_probe(measured_at="2026-01-01T00:00:00+00:00")
    save_probe(probe_file, root=tmp_path)
    later = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=120)
    stale = lookup_probe(probe_file.device_name, 2, root=tmp_path, now=later)
    assert stale.probe is None and "120 days old (limit 90)" in stale.note
    monkeypatch.setattr(probe_rules, "RULES", ProbeRules(bandwidth_max_cv=0.001))  # stricter rules since
    found = lookup_probe(probe_file.device_name, 2, root=tmp_path, now=datetime(2026, 1, 2, tzinfo=timezone.utc))
    assert found.probe is None and "no longer validates (bandwidth: CV" in found.note
    assert saved_reasons(probe_file, datetime(2026, 1, 2, tzinfo=timezone.utc), ProbeRules()) == []
    assert probe_path(probe_file.device_name, 2, tmp_path).exists()  # judged, never deleted
