"""Energy meters, all without hardware: injected counters, fake clocks, fake powercap trees."""

from __future__ import annotations

import time
from pathlib import Path

import pynvml
import pytest

from rooflens.bench import energy
from rooflens.bench.energy import (
    EnergyReading,
    MeterUnavailableError,
    NvmlEnergyCounterMeter,
    PowerSamplingMeter,
    RaplMeter,
    UnavailableMeter,
    select_meter,
    tokens_per_joule,
)
from rooflens.device import gpu


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeCounter:
    def __init__(self, value: int) -> None:
        self.value = value
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.value


# ------------------------------------------------------------------------------------ NVML counter


def test_nvml_counter_long_window_is_delta_over_1000() -> None:
    counter, clock = FakeCounter(1_000_000), FakeClock()
    meter = NvmlEnergyCounterMeter(0, read_mj=counter, clock=clock)
    assert counter.reads == 1  # probed once at construction
    assert meter.available and meter.name == "nvml-energy-counter"

    meter.start()
    counter.value += 2_500
    clock.now += 2.0
    r = meter.stop()

    assert r.joules == pytest.approx(2.5)
    assert r.seconds == pytest.approx(2.0)
    assert r.meter == "nvml-energy-counter"
    assert r.domain == "gpu0 board"
    assert r.short_window is False
    assert r.warnings == ()
    assert r.reason is None
    assert r.mean_power_w == pytest.approx(1.25)


def test_nvml_counter_short_window_is_flagged() -> None:
    counter, clock = FakeCounter(5_000), FakeClock()
    meter = NvmlEnergyCounterMeter(3, read_mj=counter, clock=clock)
    meter.start()
    counter.value += 40
    clock.now += 0.3
    r = meter.stop()
    assert r.joules == pytest.approx(0.04)
    assert r.short_window is True
    assert any("shorter than" in w and "1.00 s" in w for w in r.warnings)
    assert r.domain == "gpu3 board"


def test_nvml_counter_uses_integer_deltas_on_huge_counters() -> None:
    counter, clock = FakeCounter(2**60), FakeClock()
    meter = NvmlEnergyCounterMeter(0, read_mj=counter, clock=clock)
    meter.start()
    counter.value += 1  # 1 mJ on top of 2**60 mJ: lost if the counter were converted to float
    clock.now += 5.0
    assert meter.stop().joules == 0.001


def test_nvml_counter_going_backwards_is_counter_reset() -> None:
    counter, clock = FakeCounter(9_000_000), FakeClock()
    meter = NvmlEnergyCounterMeter(0, read_mj=counter, clock=clock)
    meter.start()
    counter.value = 1_000
    clock.now += 3.0
    r = meter.stop()
    assert r.joules is None
    assert r.reason is not None and r.reason.startswith("counter reset")
    assert r.mean_power_w is None


def test_nvml_counter_not_supported_is_detected_at_construction() -> None:
    def not_supported() -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    with pytest.raises(MeterUnavailableError, match="NotSupported"):
        NvmlEnergyCounterMeter(0, read_mj=not_supported)


def test_nvml_counter_read_failure_during_window_becomes_a_reason() -> None:
    counter, clock = FakeCounter(10), FakeClock()
    meter = NvmlEnergyCounterMeter(0, read_mj=counter, clock=clock)
    meter.start()

    def broken() -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    meter._read_mj = broken
    clock.now += 2.0
    r = meter.stop()
    assert r.joules is None and "GpuIsLost" in (r.reason or "")
    assert not meter.running


# ---------------------------------------------------------------------------------- power sampling


def test_power_sampling_constant_200w() -> None:
    meter = PowerSamplingMeter(lambda: 200.0, name="nvml-power-sampling", domain="gpu0 board")
    meter.start()
    time.sleep(0.3)
    r = meter.stop()
    assert r.meter == "nvml-power-sampling" and r.domain == "gpu0 board"
    assert r.joules is not None
    assert r.joules == pytest.approx(200.0 * r.seconds, rel=0.15)
    assert r.short_window is True
    assert any("shorter than" in w for w in r.warnings)


def test_power_sampling_trapezoid_with_fake_clock() -> None:
    clock = FakeClock(0.0)
    power = iter([100.0, 300.0])
    meter = PowerSamplingMeter(
        lambda: next(power), name="p", domain="d", interval_s=60.0, min_window_s=0.5, clock=clock
    )
    meter.start()  # sample (t=0, 100 W); the thread sleeps 60 s, so it never samples here
    clock.now = 2.0
    r = meter.stop()  # sample (t=2, 300 W) -> (100+300)/2 * 2 = 400 J
    assert r.joules == pytest.approx(400.0)
    assert r.short_window is False


def test_power_sampling_all_reads_failing_gives_none() -> None:
    def broken() -> float:
        raise OSError("sensor gone")

    meter = PowerSamplingMeter(broken, name="p", domain="d", interval_s=0.01)
    meter.start()
    r = meter.stop()
    assert r.joules is None
    assert r.reason is not None and "sensor gone" in r.reason


# --------------------------------------------------------------------------------------------- RAPL


def make_zone(root: Path, zone: str, name: str, energy_uj: int, max_uj: int) -> Path:
    d = root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def set_uj(zone: Path, value: int) -> None:
    (zone / "energy_uj").write_text(f"{value}\n")


MAX_UJ = 262_143_328_850


@pytest.fixture
def rapl_tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "powercap"
    (root / "intel-rapl").mkdir(parents=True)  # the control-type directory, not a zone
    zones = {
        "pkg0": make_zone(root, "intel-rapl:0", "package-0", 1_000_000, MAX_UJ),
        "pkg1": make_zone(root, "intel-rapl:1", "package-1", 7_000_000, MAX_UJ),
        "core0": make_zone(root, "intel-rapl:0:0", "core", 500, MAX_UJ),
        "dram0": make_zone(root, "intel-rapl:0:1", "dram", 500, MAX_UJ),
        # the same package-0 exposed again through MMIO must not be counted either
        "mmio": make_zone(root, "intel-rapl-mmio:0", "package-0", 0, MAX_UJ),
    }
    zones["root"] = root
    return zones


def test_rapl_sums_top_level_packages_only(rapl_tree: dict[str, Path]) -> None:
    clock = FakeClock()
    meter = RaplMeter(rapl_tree["root"], poll_s=60.0, clock=clock)
    assert meter.domain == "cpu package(s) 0,1"
    assert [z.path.name for z in meter.zones] == ["intel-rapl:0", "intel-rapl:1"]

    meter.start()
    set_uj(rapl_tree["pkg0"], 1_000_000 + 1_000_000)
    set_uj(rapl_tree["pkg1"], 7_000_000 + 500_000)
    set_uj(rapl_tree["core0"], 500 + 9_999_999)
    set_uj(rapl_tree["dram0"], 500 + 9_999_999)
    set_uj(rapl_tree["mmio"], 9_999_999)
    clock.now += 1.5
    r = meter.stop()

    assert r.meter == "rapl"
    assert r.joules == pytest.approx(1.5)
    assert r.seconds == pytest.approx(1.5)
    assert r.short_window is False
    assert r.mean_power_w == pytest.approx(1.0)


def test_rapl_wrap_around(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 999_000_000, 1_000_000_000)
    clock = FakeClock()
    meter = RaplMeter(tmp_path, poll_s=60.0, clock=clock)
    meter.start()
    set_uj(zone, 2_000_000)
    clock.now += 1.0
    r = meter.stop()
    assert r.joules == pytest.approx(3.0)  # 2e6 + 1e9 - 999e6 uJ
    assert any("wrapped 1" in w for w in r.warnings)


def test_rapl_poller_accumulates_several_wraps(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "amd-rapl:0", "package-0", 900, 1_000)
    meter = RaplMeter(tmp_path, poll_s=60.0, clock=FakeClock())
    meter.start()
    # simulate poller ticks deterministically: 900 -> 100 (wrap) -> 950 -> 50 (wrap) -> 60
    for value in (100, 950, 50):
        set_uj(zone, value)
        meter._poll()
    set_uj(zone, 60)
    r = meter.stop()
    assert r.joules == pytest.approx((200 + 850 + 100 + 10) / 1e6)
    assert any("wrapped 2" in w for w in r.warnings)


def test_rapl_background_poller_runs(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 0, 10_000)
    meter = RaplMeter(tmp_path, poll_s=0.01)
    meter.start()
    set_uj(zone, 9_000)
    deadline = time.monotonic() + 5.0
    while meter._prev[0] != 9_000 and time.monotonic() < deadline:  # wait for the poller
        time.sleep(0.005)
    assert meter._prev[0] == 9_000
    set_uj(zone, 1_000)  # a wrap: +2000 uJ
    r = meter.stop()
    assert r.joules == pytest.approx(11_000 / 1e6)


def test_rapl_no_package_zone_raises_unavailable(tmp_path: Path) -> None:
    make_zone(tmp_path, "intel-rapl:0", "psys", 0, MAX_UJ)
    make_zone(tmp_path, "intel-rapl:0:0", "package-0", 0, MAX_UJ)  # a subzone never qualifies
    with pytest.raises(MeterUnavailableError, match="package"):
        RaplMeter(tmp_path)


def test_select_cpu_on_fake_tree(monkeypatch: pytest.MonkeyPatch, rapl_tree: dict) -> None:
    monkeypatch.setattr(energy, "POWERCAP_ROOT", rapl_tree["root"])
    meter = select_meter("cpu")
    assert isinstance(meter, RaplMeter) and meter.available


def test_select_cpu_without_tree_is_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(energy, "POWERCAP_ROOT", tmp_path / "does-not-exist")
    meter = select_meter("cpu")
    assert isinstance(meter, UnavailableMeter) and not meter.available
    assert "does not exist" in meter.reason and "RAPL" in meter.reason
    meter.start()
    r = meter.stop()
    assert r.joules is None and r.meter == "unavailable" and r.domain == ""
    assert r.reason == meter.reason and r.short_window is False


def test_select_cpu_on_this_machine_never_raises() -> None:
    meter = select_meter("cpu")
    if not meter.available:
        assert isinstance(meter, UnavailableMeter) and meter.reason
    if not Path("/sys/class/powercap").exists():
        assert isinstance(meter, UnavailableMeter)


# ------------------------------------------------------------------------------- select_meter cuda


def _nvml_missing() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return True
    return False


def test_select_cuda_on_this_machine() -> None:
    meter = select_meter("cuda")
    if _nvml_missing():
        assert isinstance(meter, UnavailableMeter)
        assert "NVML" in meter.reason


class FakeNvml:
    """Monkeypatched pynvml: device handles are their indices."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, counter_supported: bool) -> None:
        self.handles: list[int] = []
        self.counter_supported = counter_supported
        monkeypatch.setattr(gpu, "_initialised", None)
        monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 4)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", self.handle)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", self.energy)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", lambda h: 150_000)

    def handle(self, index: int) -> int:
        self.handles.append(index)
        return index

    def energy(self, handle: int) -> int:
        if not self.counter_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 123_456


def test_select_cuda_prefers_energy_counter_and_maps_visible_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeNvml(monkeypatch, counter_supported=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    meter = select_meter("cuda:1")
    assert isinstance(meter, NvmlEnergyCounterMeter)
    assert meter.device_index == 3 and fake.handles == [3]
    assert meter.domain == "gpu3 board (cuda:1)"


def test_select_cuda_falls_back_to_power_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml(monkeypatch, counter_supported=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    meter = select_meter("cuda")
    assert isinstance(meter, PowerSamplingMeter)
    assert meter.name == "nvml-power-sampling" and meter.min_window_s == 1.0
    with meter.window() as w:
        time.sleep(0.06)
    r = w.reading
    assert r is not None and r.joules == pytest.approx(150.0 * r.seconds, rel=0.15)
    assert any("not supported" in x for x in r.warnings)
    assert any("CUDA_DEVICE_ORDER" in x for x in r.warnings)


def test_select_cuda_index_outside_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml(monkeypatch, counter_supported=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    meter = select_meter("cuda:1")
    assert isinstance(meter, UnavailableMeter) and "CUDA_VISIBLE_DEVICES" in meter.reason


@pytest.mark.parametrize("device", ["mps", "cuda:x", "", "tpu:0"])
def test_select_unknown_device_is_unavailable(device: str) -> None:
    meter = select_meter(device)
    assert isinstance(meter, UnavailableMeter) and meter.reason


# ---------------------------------------------------------------------------------------- misuse


def test_stop_without_start_raises() -> None:
    meter = NvmlEnergyCounterMeter(0, read_mj=FakeCounter(0))
    with pytest.raises(RuntimeError, match="without start"):
        meter.stop()
    with pytest.raises(RuntimeError):
        UnavailableMeter("nothing").stop()


def test_start_twice_raises_and_meter_is_reusable() -> None:
    counter, clock = FakeCounter(0), FakeClock()
    meter = NvmlEnergyCounterMeter(0, read_mj=counter, clock=clock)
    meter.start()
    with pytest.raises(RuntimeError, match="twice"):
        meter.start()
    clock.now += 1.0
    counter.value = 1_000
    assert meter.stop().joules == pytest.approx(1.0)
    meter.start()
    clock.now += 1.0
    counter.value = 4_000
    assert meter.stop().joules == pytest.approx(3.0)


def test_window_stops_even_when_body_raises() -> None:
    meter = NvmlEnergyCounterMeter(0, read_mj=FakeCounter(0), clock=FakeClock())
    with pytest.raises(ValueError):
        with meter.window() as w:
            raise ValueError("boom")
    assert w.reading is not None and not meter.running


# ------------------------------------------------------------------------------ tokens_per_joule


def _reading(joules: float | None) -> EnergyReading:
    return EnergyReading(joules=joules, seconds=2.0, meter="rapl", domain="cpu package(s) 0", short_window=False)


def test_tokens_per_joule() -> None:
    assert tokens_per_joule(100, _reading(4.0)) == pytest.approx(25.0)
    assert tokens_per_joule(0, _reading(4.0)) == 0.0
    assert tokens_per_joule(100, _reading(None)) is None
    assert tokens_per_joule(100, _reading(0.0)) is None
    assert tokens_per_joule(100, _reading(-1.0)) is None
    with pytest.raises(ValueError):
        tokens_per_joule(-1, _reading(4.0))


def test_mean_power() -> None:
    assert _reading(4.0).mean_power_w == pytest.approx(2.0)
    zero = EnergyReading(joules=1.0, seconds=0.0, meter="m", domain="", short_window=True)
    assert zero.mean_power_w is None
