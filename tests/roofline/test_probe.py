"""Tests for `rooflens hw probe` (rooflens.roofline.probe): tiny sizes, fake clocks, a fake quiet machine.

Every test here runs on a machine the fake activity sampler calls quiet and under rules nothing fails,
unless it says otherwise: the validity tests (test_probe_validity.py) judge for real.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest
import torch

from factories import FakeActivity, lenient_probe_rules, valid_probe
from rooflens.roofline import probe as probemod
from rooflens.roofline.hardware import Ceiling, HardwareProfile, ResolvedProfile
from rooflens.roofline.probe import GEMM_DTYPES, ProbeError, probe
from rooflens.roofline.probe_file import ProbeResult, ProbeStat, load_probe, probe_path, save_probe

MiB = 2**20
TINY = {"copy_bytes": 8 * MiB, "gemm_n": 128, "reps": 3}


class FakeClock:
    """Each call returns the next multiple of ``step``: every start/stop pair spans one step."""

    def __init__(self, step: float = 1e-3) -> None:
        self.step, self.calls = step, 0

    def __call__(self) -> float:
        self.calls += 1
        return self.calls * self.step


class ScriptedClock:
    """Start/stop pairs that span the given durations in turn (then 1 ms each)."""

    def __init__(self, durations: list[float]) -> None:
        self.durations, self.t, self.started = list(durations), 0.0, False

    def __call__(self) -> float:
        if self.started:
            self.t += self.durations.pop(0) if self.durations else 1e-3
        self.started = not self.started
        return self.t


@pytest.fixture(autouse=True)
def calm(monkeypatch):
    FakeActivity().install(monkeypatch)
    lenient_probe_rules(monkeypatch)


@pytest.fixture(scope="module")
def tiny_probe() -> tuple[ProbeResult, list[str]]:
    messages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        FakeActivity().install(mp)
        lenient_probe_rules(mp)
        result = probe("cpu", dtypes=["fp32", "bf16", "tf32"], progress=messages.append, **TINY)
    return result, messages


def _check_stat(stat: ProbeStat, unit: str, n: int) -> None:
    assert stat.unit == unit
    assert len(stat.samples) == n
    assert all(s > 0 for s in stat.samples)
    assert stat.min <= stat.p10 <= stat.median <= stat.p90 <= stat.max
    assert stat.min == min(stat.samples) and stat.max == max(stat.samples)
    assert stat.cv >= 0
    assert stat.how


def test_probe_cpu_tiny(tiny_probe):
    result, messages = tiny_probe
    assert result.device == "cpu"
    assert result.device_name
    _check_stat(result.bandwidth, "B/s", 3)
    assert "copy" in result.bandwidth.how and "read + written" in result.bandwidth.how
    assert set(result.gemm) == {"fp32", "bf16"}
    for dtype in ("fp32", "bf16"):
        _check_stat(result.gemm[dtype], "FLOP/s", 3)
        assert "128x128" in result.gemm[dtype].how
        assert result.sizes[f"gemm_n.{dtype}"] == 128
    assert "tf32" in result.skipped  # CUDA-only mode
    assert result.sizes["copy_bytes"] == 8 * MiB and result.sizes["gemm_n"] == 128
    assert result.threads == torch.get_num_threads()
    assert result.torch_version == torch.__version__
    assert datetime.fromisoformat(result.measured_at).utcoffset() == timezone.utc.utcoffset(None)
    assert result.wall_s is not None and result.wall_s > 0
    assert any(m.startswith("bandwidth") for m in messages)
    assert any("gemm bf16" in m for m in messages)
    # Every requested dtype ends up measured or explained.
    assert set(result.gemm) | set(result.skipped) == {"fp32", "bf16", "tf32"}


def test_default_dtypes_all_accounted_for():
    result = probe("cpu", copy_bytes=MiB, gemm_n=32, reps=1)
    assert set(result.gemm) | set(result.skipped) == set(GEMM_DTYPES)
    assert {"fp32", "bf16"} <= set(result.gemm)
    if "int8" in result.gemm:
        assert result.gemm["int8"].unit == "OP/s"


def test_flop_and_byte_arithmetic_with_fake_clock():
    clock = FakeClock(1e-3)  # every timed call "takes" exactly 1 ms
    result = probe("cpu", dtypes=["fp32", "bfloat16"], clock=clock, **TINY)
    fp32 = result.gemm["fp32"]
    assert fp32.median == pytest.approx(2 * 128**3 / 1e-3, rel=1e-9)  # 4.194304 GFLOP/s
    assert fp32.median == pytest.approx(4.194304e9, rel=1e-9)
    assert fp32.samples == pytest.approx([4.194304e9] * 3, rel=1e-9)
    assert fp32.cv == pytest.approx(0.0, abs=1e-9)
    assert result.gemm["bf16"].max == pytest.approx(4.194304e9, rel=1e-9)
    # copy: 8 MiB read + 8 MiB written in 1 ms
    assert result.bandwidth.median == pytest.approx(2 * 8 * MiB / 1e-3, rel=1e-9)
    assert "injected clock" in result.bandwidth.how
    assert clock.calls == 2 * 3 * 3  # start/stop per rep, 3 reps, copy + 2 dtypes


def test_slow_dtype_is_measured_at_smaller_n(monkeypatch):
    # Pre-check at 256^3 "takes" 1 ms -> 33.5 GFLOP/s; n=512 then needs ~8 ms a call, over budget.
    monkeypatch.setattr(probemod, "GEMM_BUDGET_S", 0.01)
    clock = FakeClock(1e-3)
    result = probe("cpu", dtypes=["fp32"], clock=clock, copy_bytes=MiB, gemm_n=512, reps=3)
    n_used = result.sizes["gemm_n.fp32"]
    assert 64 <= n_used < 512 and n_used % 64 == 0
    stat = result.gemm["fp32"]
    assert f"{n_used}x{n_used}" in stat.how
    assert f"n={n_used} instead of 512" in stat.how and "256^3 pre-check" in stat.how
    assert stat.median == pytest.approx(2 * n_used**3 / 1e-3, rel=1e-9)
    assert "fp32" not in result.skipped


def test_fast_dtype_keeps_full_n():
    clock = FakeClock(1e-6)
    result = probe("cpu", dtypes=["fp32"], clock=clock, copy_bytes=MiB, gemm_n=512, reps=2)
    assert result.sizes["gemm_n.fp32"] == 512
    assert "instead of" not in result.gemm["fp32"].how


def test_slow_first_precheck_call_is_confirmed_before_reducing():
    # copy: 2 reps of 1 ms; pre-check: a 0.3 s first call (setup, preemption), then 1 us.
    clock = ScriptedClock([1e-3, 1e-3, 0.3, 1e-6])
    result = probe("cpu", dtypes=["fp32"], clock=clock, copy_bytes=MiB, gemm_n=512, reps=2)
    assert result.sizes["gemm_n.fp32"] == 512
    assert result.gemm["fp32"].median == pytest.approx(2 * 512**3 / 1e-3, rel=1e-9)


def test_precheck_grows_before_reducing(monkeypatch):
    # Budget 0.04 s for 2 warm-up + 2 reps -> 10 ms a call. At 256^3 (1 ms: 33.5 GFLOP/s) a
    # 1024^3 call would take 64 ms, but a 512^3 pre-check fits (8 ms) and runs at 1 ms too,
    # i.e. 268 GFLOP/s, so 1024^3 takes 8 ms: the full n is kept.
    monkeypatch.setattr(probemod, "GEMM_BUDGET_S", 0.04)
    clock = FakeClock(1e-3)
    result = probe("cpu", dtypes=["fp32"], clock=clock, copy_bytes=MiB, gemm_n=1024, reps=2)
    assert result.sizes["gemm_n.fp32"] == 1024
    assert "instead of" not in result.gemm["fp32"].how
    # copy 2 + pre-check 3 (256) + 1 (512) + reps 2, two clock calls each
    assert clock.calls == 2 * (2 + 3 + 1 + 2)


def test_the_load_seen_is_kept(monkeypatch):
    FakeActivity(share=0.03, load=(0.25, 0.5, 1.0)).install(monkeypatch)
    result = probe("cpu", dtypes=[], copy_bytes=MiB, reps=1)
    assert result.load_avg == [0.25, 0.5, 1.0]
    (attempt,) = result.attempts
    assert attempt.verdict == "valid" and result.chosen == 1
    assert attempt.load.other_cpu_before == attempt.load.other_cpu_during == pytest.approx(0.03)
    assert attempt.load.load_judged and attempt.load.judged and attempt.load.cores == 2


def test_fp32_matmul_precision_is_restored():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        probe("cpu", dtypes=["fp32"], copy_bytes=MiB, gemm_n=16, reps=1)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_unsupported_dtype_is_skipped_with_reason(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("_int_mm is not implemented here\nmore detail")

    monkeypatch.setattr(torch, "_int_mm", boom)
    result = probe("cpu", dtypes=["int8"], copy_bytes=MiB, gemm_n=32, reps=1)
    assert "int8" not in result.gemm
    assert "not supported" in result.skipped["int8"]
    assert "_int_mm is not implemented here" in result.skipped["int8"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dtype"):
        probe("cpu", dtypes=["fp4"], copy_bytes=MiB, gemm_n=16, reps=1)
    with pytest.raises(ValueError, match="unknown device"):
        probe("tpu")
    with pytest.raises(ValueError, match="reps"):
        probe("cpu", copy_bytes=MiB, gemm_n=16, reps=0)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_raises(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ProbeError, match="CUDA is not available"):
        probe(device)


# --------------------------------------------------------------------------- storage


def _result(name: str = "Test CPU (R) @ 2.0GHz") -> ProbeResult:
    return valid_probe(name)


def test_probe_path_is_keyed_by_device_and_threads(monkeypatch, tmp_path):
    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path))
    assert probe_path("NVIDIA H100 80GB HBM3", 0) == tmp_path / "probes" / "nvidia-h100-80gb-hbm3-t0.json"
    assert probe_path("Intel(R) Xeon(R) Processor", 4, root=tmp_path / "x").name == "intel-r-xeon-r-processor-t4.json"
    assert probe_path("???", 1, root=tmp_path).name == "unknown-device-t1.json"
    monkeypatch.delenv("ROOFLENS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert probe_path("cpu", 2) == tmp_path / "home" / ".config" / "rooflens" / "probes" / "cpu-t2.json"
    with pytest.raises(ValueError, match="threads must be >= 0"):
        probe_path("cpu", -1)


def test_save_load_roundtrip(monkeypatch, tmp_path, tiny_probe):
    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path))
    assert load_probe("nothing saved", 2) is None
    for result in (_result(), tiny_probe[0]):
        path = save_probe(result)
        assert path == probe_path(result.device_name, result.threads)
        assert path.is_relative_to(tmp_path)
        assert load_probe(result.device_name, result.threads) == result
        json.loads(path.read_text())  # plain JSON
    # overwrite in place; no temp files left behind
    save_probe(_result())
    files = sorted(p.name for p in (tmp_path / "probes").iterdir())
    expected = {probe_path(r.device_name, r.threads).name for r in (_result(), tiny_probe[0])}
    assert files == sorted(expected)


def test_a_gpu_probe_is_keyed_t0(tmp_path):
    gpu = valid_probe("NVIDIA Test GPU", threads=8, device="cuda:0")
    assert gpu.key_threads == 0
    assert save_probe(gpu, root=tmp_path).name == "nvidia-test-gpu-t0.json"
    assert load_probe("NVIDIA Test GPU", 0, root=tmp_path) == gpu


def test_save_is_atomic(monkeypatch, tmp_path):
    original = _result()
    path = save_probe(original, root=tmp_path)
    changed = original.model_copy(update={"torch_version": "9.9"})

    def fail_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk on fire"):
        save_probe(changed, root=tmp_path)
    assert list(path.parent.iterdir()) == [path]  # temp file cleaned up
    assert load_probe(original.device_name, 2, root=tmp_path) == original  # old file intact


def test_load_invalid_file(tmp_path):
    path = probe_path("broken", 2, root=tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"device": "cpu"}')
    with pytest.raises(ValueError, match="not a valid probe"):
        load_probe("broken", 2, root=tmp_path)


def test_a_file_under_another_thread_count_is_refused(tmp_path):
    one = valid_probe(threads=1)
    path = probe_path(one.device_name, 2, root=tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(one.model_dump_json())
    with pytest.raises(ValueError, match="holds a probe at 1 threads, not 2"):
        load_probe(one.device_name, 2, root=tmp_path)


# --------------------------------------------------------------------------- ratios


def test_ratios_against_fake_profile():
    profile = HardwareProfile(
        name="fake-box",
        display_name="Fake Box",
        kind="cpu",
        category="cpu",
        vendor="test",
        memory_bandwidth=Ceiling(value=100, unit="GB/s", source="test"),
        peak_flops={
            "fp32": Ceiling(value=1, unit="TFLOP/s", source="test"),
            "int8": Ceiling(value=4, unit="TOP/s", source="test"),
        },
    )
    result = _result()
    ratios = result.ratios(profile)
    assert ratios == {
        "bandwidth": pytest.approx(0.5),  # best rep 50 GB/s / 100
        "fp32": pytest.approx(0.2),
        "bf16": None,  # no datasheet number
        "int8": pytest.approx(0.25),
    }
    median = result.ratios(profile, stat="median")
    assert median["bandwidth"] == pytest.approx(result.bandwidth.median / 100e9)
    resolved = ResolvedProfile(profile=profile, matched=True, reason="test")
    assert result.ratios(resolved) == ratios
    empty = profile.model_copy(update={"memory_bandwidth": None, "peak_flops": {}})
    assert set(result.ratios(empty).values()) == {None}
    assert result.peak_flops_si("bfloat16") == pytest.approx(800e9)
    assert result.peak_flops_si("fp8") is None
    assert result.bandwidth_si("median") == result.bandwidth.median < 50e9
