"""rooflens.device: device strings, and CUDA_VISIBLE_DEVICES -> NVML through a fake pynvml (no GPU needed)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from rooflens.bench.energy import NvmlEnergyCounterMeter, UnavailableMeter, select_meter
from rooflens.device import gpu
from rooflens.device.detect import detect_hardware
from rooflens.device.spec import (
    DEVICE_CHOICES,
    DeviceSpec,
    DeviceSpecError,
    DeviceUnavailableError,
    parse_device,
    pinned_device,
    resolve_device,
)

# ------------------------------------------------------------------------------------ device strings


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("auto", DeviceSpec("auto")),
        ("cpu", DeviceSpec("cpu")),
        ("cuda", DeviceSpec("cuda")),
        ("cuda:0", DeviceSpec("cuda", 0)),
        ("cuda:12", DeviceSpec("cuda", 12)),
        ("cuda:9999", DeviceSpec("cuda", 9999)),
    ],
)
def test_parse_valid_device_strings(text, spec):
    assert parse_device(text) == spec
    assert str(parse_device(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "gpu",
        "CPU",
        " cpu",
        "cpu:0",
        "cuda:",
        "cuda:01",
        "cuda:-1",
        "cuda:12345",
        "cuda: 1",
        "cuda:x",
        "mps",
        "tpu:0",
    ],
)
def test_parse_invalid_device_strings(text):
    with pytest.raises(DeviceSpecError, match="unknown device") as err:
        parse_device(text)
    assert DEVICE_CHOICES in str(err.value)
    assert isinstance(err.value, ValueError)


def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert pinned_device(torch.device("cpu")) == torch.device("cpu")
    for text in ("cuda", "cuda:1"):
        with pytest.raises(DeviceUnavailableError, match=f"device '{text}' requested but CUDA is not available"):
            resolve_device(text)
    with pytest.raises(DeviceSpecError):
        resolve_device("cuda:x")


def test_resolve_device_index_beyond_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda")  # torch's current GPU, index left open
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert pinned_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(DeviceUnavailableError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


# ------------------------------------------------------------------------- a machine behind fake NVML


@dataclass
class Board:
    uuid: str
    name: str
    energy_mj: int
    migs: list[tuple[str, str] | None] = field(default_factory=list)  # (uuid, name) per slot; None = empty


BOARDS = [
    Board(
        "GPU-aaaa1111-0000", "NVIDIA A100-SXM4-80GB", 1000, [("MIG-1111", "NVIDIA A100-SXM4-80GB MIG 3g.40gb"), None]
    ),
    Board("GPU-bbbb2222-0000", "NVIDIA H100 80GB HBM3", 2000),
    Board("GPU-cccc3333-0000", "NVIDIA L4", 3000),
]


def fake_pynvml(boards: list[Board]) -> types.ModuleType:
    """Board handles are ``("board", i)``, MIG handles ``("mig", i, j)``; only boards have energy counters."""
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's name
        pass

    def board(h):
        return boards[h[1]]

    def mig(h):
        found = board(h).migs[h[2]]
        assert found is not None
        return found

    mod.NVMLError, mod.NVMLError_NotSupported = NVMLError, NVMLError_NotSupported
    mod.nvmlInit = lambda: None
    mod.nvmlDeviceGetCount = lambda: len(boards)
    mod.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    mod.nvmlSystemGetCudaDriverVersion_v2 = lambda: 12040
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("board", i)
    mod.nvmlDeviceGetUUID = lambda h: board(h).uuid if h[0] == "board" else mig(h)[0]
    mod.nvmlDeviceGetName = lambda h: board(h).name if h[0] == "board" else mig(h)[1]
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=(80 if h[0] == "board" else 40) * 2**30)
    mod.nvmlDeviceGetCudaComputeCapability = lambda h: (8, 0)
    mod.nvmlDeviceGetMaxMigDeviceCount = lambda h: len(board(h).migs)

    def mig_handle(h, j):
        if board(h).migs[j] is None:
            raise NVMLError("not found")
        return ("mig", h[1], j)

    def energy(h):
        if h[0] != "board":
            raise NVMLError_NotSupported("not supported on a MIG device")
        return board(h).energy_mj

    mod.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    mod.nvmlDeviceGetTotalEnergyConsumption = energy
    mod.nvmlDeviceGetPowerUsage = lambda h: 100_000
    return mod


@pytest.fixture
def machine(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(BOARDS))
    monkeypatch.setattr(gpu, "_initialised", None)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)

    def visible(env: str | None) -> list[str]:
        if env is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
        return [g.name for g in detect_hardware().gpus]

    return visible


def _meter(device: str) -> NvmlEnergyCounterMeter:
    meter = select_meter(device)
    assert isinstance(meter, NvmlEnergyCounterMeter), getattr(meter, "reason", meter)
    return meter


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (None, [0, 1, 2]),
        ("2,0", [2, 0]),
        ("1,1,2", [1, 2]),
        ("1,7,0", [1]),  # CUDA stops at the first entry it cannot use
        ("", []),
        ("GPU-cccc", [2]),  # a unique UUID prefix
        ("GPU-bbbb2222-0000,0", [1, 0]),
        ("GPU-", []),  # ambiguous prefix
    ],
)
def test_visible_devices_by_index_and_uuid(machine, env, expected):
    names = machine(env)
    assert names == [BOARDS[i].name for i in expected]
    assert [g.nvml_index for g in gpu.visible_gpus()] == expected
    for cuda_index, nvml_index in enumerate(expected):  # the energy meter reads the GPU detection names
        meter = _meter(f"cuda:{cuda_index}")
        assert meter.device_index == nvml_index
        assert meter._read_mj() == BOARDS[nvml_index].energy_mj
    outside = select_meter(f"cuda:{len(expected)}")
    assert isinstance(outside, UnavailableMeter) and f"cuda:{len(expected)} is not in" in outside.reason


def test_energy_meter_reads_the_detected_gpu_for_a_uuid(machine):
    """Before rooflens.device, the meter took a UUID-valued CUDA_VISIBLE_DEVICES as NVML index 0."""
    names = machine("GPU-bbbb2222-0000")
    assert names == ["NVIDIA H100 80GB HBM3"]
    meter = _meter("cuda:0")
    assert meter.device_index == 1 and meter.domain == "gpu1 board (cuda:0)"
    assert meter._read_mj() == 2000
    assert not any("CUDA_DEVICE_ORDER" in w for w in meter._static_warnings)  # a UUID is unambiguous


def test_mig_instance_maps_to_its_board(machine):
    names = machine("MIG-1111")
    hw = detect_hardware()
    assert names == ["NVIDIA A100-SXM4-80GB MIG 3g.40gb"] and hw.gpus[0].memory_total_bytes == 40 * 2**30
    (g,) = gpu.visible_gpus()
    assert g.nvml_index == 0 and g.mig_uuid == "MIG-1111" and g.handle == ("mig", 0, 0) and g.board == ("board", 0)
    meter = _meter("cuda")
    assert meter.device_index == 0 and meter._read_mj() == 1000  # the board's counter: MIG has none
    assert meter.domain == "gpu0 board (MIG MIG-1111)"
    assert any("MIG instance" in w for w in meter._static_warnings)


def test_unknown_mig_instance_hides_every_gpu(machine):
    assert machine("MIG-9999") == []
    meter = select_meter("cuda:0")
    assert isinstance(meter, UnavailableMeter) and "CUDA_VISIBLE_DEVICES='MIG-9999'" in meter.reason


def test_order_caveat_for_integer_indices(machine):
    machine("1")
    assert gpu.cuda_gpu(0).caveats == (gpu.ORDER_CAVEAT,)
    machine("GPU-bbbb")
    assert gpu.cuda_gpu(0).caveats == ()


def test_nvml_is_initialised_once(machine, monkeypatch):
    calls = []
    monkeypatch.setattr(sys.modules["pynvml"], "nvmlInit", lambda: calls.append(1))
    machine(None)
    select_meter("cuda:0")
    gpu.visible_gpus()
    assert calls == [1]


def test_without_nvml_the_errors_are_typed(monkeypatch):
    broken = types.ModuleType("pynvml")

    def fail():
        raise RuntimeError("NVML Shared Library Not Found")

    broken.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    monkeypatch.setattr(gpu, "_initialised", None)
    with pytest.raises(gpu.NvmlUnavailableError, match="Shared Library"):
        gpu.cuda_gpu(0)
    meter = select_meter("cuda:0")
    assert isinstance(meter, UnavailableMeter) and meter.reason.startswith("no NVML: ")
