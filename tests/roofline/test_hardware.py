"""Tests for hardware profiles, matching, resolution and detection."""

from __future__ import annotations

import sys
import types
from importlib.resources import files

import pytest
from pydantic import ValidationError

from rooflens.device.cpu import INTERESTING_CPU_FLAGS
from rooflens.device.detect import DetectedHardware, detect_hardware
from rooflens.device.gpu import GpuInfo
from rooflens.roofline import hardware as hwmod
from rooflens.roofline.hardware import (
    Ceiling,
    HardwareProfileError,
    UnknownProfileError,
    get_profile,
    list_profiles,
    load_profile_file,
    match_profile,
    resolve_profile,
)

REQUIRED = {
    "a100-40g-sxm",
    "a100-80g-sxm",
    "a100-40g-pcie",
    "a100-80g-pcie",
    "h100-sxm",
    "h100-pcie",
    "h200",
    "l40s",
    "a10g",
    "l4",
    "t4",
    "rtx-4090",
    "rtx-4080",
    "rtx-3090",
    "rtx-4060-ti",
    "cpu-generic",
}

GPU_PROFILES = [p for p in list_profiles() if p.kind == "gpu"]


def _gpu_ids(profiles):
    return [p.name for p in profiles]


# --------------------------------------------------------------------------- shipped files


def test_every_shipped_yaml_validates():
    directory = files("rooflens") / "hw_profiles"
    yamls = [e for e in directory.iterdir() if e.name.endswith(".yaml")]
    assert len(yamls) >= len(REQUIRED)
    for entry in yamls:
        profile = load_profile_file(entry)
        assert profile.name == entry.name.removesuffix(".yaml")


def test_required_profiles_exist():
    names = {p.name for p in list_profiles()}
    assert REQUIRED <= names


def test_list_profiles_sorted_and_cached():
    first, second = list_profiles(), list_profiles()
    assert [p.name for p in first] == sorted(p.name for p in first)
    assert first[0] is second[0]
    assert first is not second  # a fresh list each time


def test_cpu_generic_has_no_ceilings():
    cpu = get_profile("cpu-generic")
    assert cpu.kind == "cpu" and cpu.category == "cpu"
    assert cpu.memory_bandwidth is None and cpu.memory_capacity is None and cpu.tdp is None
    assert cpu.peak_flops == {}
    assert cpu.match == []
    assert "rooflens hw probe" in (cpu.notes or "")


@pytest.mark.parametrize("name", ["rtx-4090", "rtx-4080", "rtx-3090", "rtx-4060-ti"])
def test_pc_gpu_category(name):
    assert get_profile(name).category == "pc_gpu"


@pytest.mark.parametrize("name", ["a100-80g-sxm", "h100-sxm", "h200", "l40s", "a10g", "l4", "t4"])
def test_cloud_gpu_category(name):
    assert get_profile(name).category == "cloud_gpu"


# --------------------------------------------------------------------------- sanity of numbers


@pytest.mark.parametrize("profile", GPU_PROFILES, ids=_gpu_ids(GPU_PROFILES))
def test_gpu_ceilings_plausible(profile):
    bw = profile.bandwidth_si()
    assert bw is not None and 100e9 <= bw <= 10e12, bw
    cap = profile.capacity_si()
    assert cap is not None and 4 * 2**30 <= cap <= 256 * 2**30
    assert profile.tdp is not None and 30 <= profile.tdp.si <= 1200
    fp32 = profile.peak_flops_si("fp32")
    assert fp32 is not None and 1e12 <= fp32 <= 100e12
    for ceiling in profile.peak_flops.values():
        assert ceiling.source.strip()
    # an edge module's CUDA name can be ambiguous ("Orin" is every Orin module): no pattern beats a wrong one
    assert profile.match or profile.category == "edge", "a GPU profile needs at least one match pattern"


@pytest.mark.parametrize("profile", GPU_PROFILES, ids=_gpu_ids(GPU_PROFILES))
def test_dtype_ordering(profile):
    p = profile.peak_flops_si
    for low, high in [
        ("fp32", "bf16"),
        ("fp32", "fp16"),
        ("fp32", "tf32"),
        ("fp16", "fp8"),
        ("bf16", "fp8"),
        ("fp16", "int8"),
        ("tf32", "fp16"),
    ]:
        if p(low) is not None and p(high) is not None:
            assert p(high) >= p(low), (low, high)
    if p("fp16") is not None and p("bf16") is not None:
        assert p("fp16") == p("bf16")


@pytest.mark.parametrize("profile", GPU_PROFILES, ids=_gpu_ids(GPU_PROFILES))
def test_dense_not_sparse(profile):
    # The largest dense 16-bit tensor peak shipped (H100/H200 SXM) is 989.5 TFLOP/s;
    # a value near 1979 would be the "with sparsity" figure.
    bf16 = profile.peak_flops_si("bf16")
    if bf16 is not None:
        assert bf16 <= 1000e12


@pytest.mark.parametrize("profile", GPU_PROFILES, ids=_gpu_ids(GPU_PROFILES))
def test_ridge_points_plausible(profile):
    for dtype in ("fp16", "bf16"):
        ridge = profile.ridge_point(dtype)
        if ridge is not None:
            assert 30 <= ridge <= 600, (dtype, ridge)
    ridge32 = profile.ridge_point("fp32")
    assert ridge32 is not None and 5 <= ridge32 <= 150


def test_hardware_without_a_dtype_omits_it():
    for name in ("a100-40g-sxm", "a100-80g-pcie", "rtx-3090", "t4", "a10g"):
        assert get_profile(name).peak_flops_si("fp8") is None
    t4 = get_profile("t4")
    assert t4.peak_flops_si("bf16") is None  # no fallback to fp16
    assert t4.peak_flops_si("tf32") is None
    assert t4.peak_flops_si("fp16") == pytest.approx(65e12)


def test_specific_datasheet_values():
    h100 = get_profile("h100-sxm")
    assert h100.bandwidth_si() == pytest.approx(3.35e12)
    assert h100.peak_flops_si("bf16") == pytest.approx(989.5e12)
    assert h100.peak_flops_si("int8") == pytest.approx(1979e12)
    assert h100.tdp is not None and h100.tdp.si == 700
    assert get_profile("a100-80g-sxm").bandwidth_si() == pytest.approx(2039e9)
    assert get_profile("a100-80g-pcie").bandwidth_si() == pytest.approx(1935e9)
    assert get_profile("a100-40g-sxm").peak_flops_si("bf16") == pytest.approx(312e12)
    assert get_profile("h200").bandwidth_si() == pytest.approx(4.8e12)
    assert get_profile("rtx-4090").bandwidth_si() == pytest.approx(1008e9)


def test_variant_ordering():
    bw = lambda n: get_profile(n).bandwidth_si()  # noqa: E731
    assert bw("h100-sxm") > bw("h100-pcie")
    assert bw("h200") > bw("h100-sxm")
    assert bw("a100-80g-sxm") > bw("a100-80g-pcie") > bw("a100-40g-pcie")
    cap = lambda n: get_profile(n).capacity_si()  # noqa: E731
    assert cap("a100-80g-sxm") == 2 * cap("a100-40g-sxm")
    assert cap("h200") > cap("h100-sxm")


def test_peak_flops_aliases():
    p = get_profile("h100-sxm")
    assert p.peak_flops_si("bfloat16") == p.peak_flops_si("bf16")
    assert p.peak_flops_si("torch.float16") == p.peak_flops_si("fp16")
    assert p.peak_flops_si("float8_e4m3fn") == p.peak_flops_si("fp8")
    assert p.peak_flops_si("fp64") is None


# --------------------------------------------------------------------------- matching

NVML_NAMES = {
    "NVIDIA A100-SXM4-40GB": "a100-40g-sxm",
    "NVIDIA A100-SXM4-80GB": "a100-80g-sxm",
    "NVIDIA A100-PCIE-40GB": "a100-40g-pcie",
    "NVIDIA A100 80GB PCIe": "a100-80g-pcie",
    "NVIDIA H100 80GB HBM3": "h100-sxm",
    "NVIDIA H100 PCIe": "h100-pcie",
    "NVIDIA H100 NVL": "h100-nvl",
    "NVIDIA H200": "h200",
    "NVIDIA H200 NVL": "h200-nvl",
    "NVIDIA L40S": "l40s",
    "NVIDIA A10G": "a10g",
    "NVIDIA L4": "l4",
    "Tesla T4": "t4",
    "NVIDIA GeForce RTX 4090": "rtx-4090",
    "NVIDIA GeForce RTX 4080": "rtx-4080",
    "NVIDIA GeForce RTX 3090": "rtx-3090",
    "NVIDIA GeForce RTX 4060 Ti": "rtx-4060-ti",
    "nvidia geforce rtx 4060 ti": "rtx-4060-ti",
}


@pytest.mark.parametrize(("device", "expected"), sorted(NVML_NAMES.items()))
def test_match_profile_nvml_names(device, expected):
    found = match_profile(device)
    assert found is not None and found.name == expected


@pytest.mark.parametrize(
    "device",
    [
        "NVIDIA GeForce RTX 4060",  # no profile; must not pick the 4060 Ti
        "NVIDIA L40",  # not L4, not L40S
        "NVIDIA GH200 480GB",  # not H200
        "NVIDIA GeForce RTX 3090 Ti",
        "NVIDIA GeForce RTX 4080 SUPER",
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "NVIDIA A100",  # ambiguous without form factor / memory
        "NVIDIA A10",
        "AMD Instinct MI300X",
        "",
    ],
)
def test_match_profile_rejects_other_parts(device):
    assert match_profile(device) is None


def test_match_patterns_unique_across_profiles():
    seen: dict[str, str] = {}
    for profile in list_profiles():
        for pattern in profile.match:
            key = hwmod._normalize_name(pattern)
            assert seen.setdefault(key, profile.name) == profile.name, pattern


# --------------------------------------------------------------------------- errors / units


def test_get_profile_unknown_lists_names():
    with pytest.raises(UnknownProfileError) as info:
        get_profile("h100-sxm9")
    msg = str(info.value)
    assert "h100-sxm9" in msg
    for name in ("h100-sxm", "rtx-4090", "cpu-generic"):
        assert name in msg
    assert isinstance(info.value, ValueError)


def test_get_profile_case_insensitive():
    assert get_profile(" H100-SXM ").name == "h100-sxm"


@pytest.mark.parametrize(
    ("value", "unit", "si"),
    [
        (3.35, "TB/s", 3.35e12),
        (1008, "GB/s", 1008e9),
        (80, "GB", 80e9),
        (80, "GiB", 80 * 2**30),
        (989.5, "TFLOP/s", 989.5e12),
        (500, "GFLOP/s", 500e9),
        (1979, "TOP/s", 1979e12),
        (700, "W", 700.0),
    ],
)
def test_ceiling_si(value, unit, si):
    assert Ceiling(value=value, unit=unit, source="test").si == pytest.approx(si)


def test_bad_unit_rejected_with_allowed_units():
    with pytest.raises(ValidationError) as info:
        Ceiling(value=1, unit="TB", source="test")
    msg = str(info.value)
    assert "'TB'" in msg
    for unit in ("GB", "GiB", "TB/s", "GB/s", "TFLOP/s", "GFLOP/s", "TOP/s", "W"):
        assert unit in msg


def test_ceiling_rejects_nonpositive_and_extra_fields():
    with pytest.raises(ValidationError):
        Ceiling(value=0, unit="W", source="test")
    with pytest.raises(ValidationError):
        Ceiling(value=1, unit="W", source="test", sparse=True)  # type: ignore[call-arg]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


_GOOD = """\
name: test-gpu
display_name: Test GPU
kind: gpu
category: cloud_gpu
vendor: nvidia
match: ["Test GPU"]
memory_capacity: {value: 24, unit: GiB, source: s}
memory_bandwidth: {value: 1, unit: TB/s, source: s}
tdp: {value: 300, unit: W, source: s}
peak_flops:
  bf16: {value: 100, unit: TFLOP/s, source: s}
"""


def test_load_profile_file_ok(tmp_path):
    profile = load_profile_file(_write(tmp_path, "test-gpu.yaml", _GOOD))
    assert profile.peak_flops_si("bf16") == pytest.approx(100e12)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("unit: TB/s", "unit: TB", "memory_bandwidth.unit"),
        ("unit: TB/s", "unit: TFLOP/s", "memory_bandwidth"),  # wrong dimension
        ("bf16:", "fp64:", "peak_flops.fp64"),
        ("vendor: nvidia", "vendor: nvidia\nsparse: true", "sparse"),
        ("kind: gpu", "kind: tpu", "kind"),
    ],
)
def test_invalid_yaml_names_file_and_field(tmp_path, old, new, field):
    path = _write(tmp_path, "test-gpu.yaml", _GOOD.replace(old, new))
    with pytest.raises(HardwareProfileError) as info:
        load_profile_file(path)
    msg = str(info.value)
    assert "test-gpu.yaml" in msg and field in msg


def test_name_must_match_file(tmp_path):
    with pytest.raises(HardwareProfileError, match="does not match the file name"):
        load_profile_file(_write(tmp_path, "other.yaml", _GOOD))


def test_int8_needs_op_unit(tmp_path):
    text = _GOOD + "  int8: {value: 100, unit: TFLOP/s, source: s}\n"
    with pytest.raises(HardwareProfileError, match="peak_flops.int8"):
        load_profile_file(_write(tmp_path, "test-gpu.yaml", text))


# --------------------------------------------------------------------------- detection


def test_detect_hardware_without_gpu():
    hw = detect_hardware()
    assert isinstance(hw, DetectedHardware)
    assert hw.cpu_model.strip()
    assert hw.cpu_cores_logical >= 1
    assert hw.memory_total_bytes > 0
    assert set(hw.cpu_flags) <= set(INTERESTING_CPU_FLAGS)
    for gpu in hw.gpus:
        assert gpu.name and gpu.memory_total_bytes > 0


def _fake_pynvml(names: list[str]) -> types.ModuleType:
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    mod.NVMLError = NVMLError
    mod.nvmlInit = lambda: None
    mod.nvmlShutdown = lambda: None
    mod.nvmlDeviceGetCount = lambda: len(names)
    mod.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    mod.nvmlSystemGetCudaDriverVersion_v2 = lambda: 12040
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}-aaaa"
    mod.nvmlDeviceGetName = lambda h: names[h].encode()  # old bindings return bytes
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * 2**30 + h)

    def cc(h):
        if h == 1:
            raise NVMLError("not supported")
        return (9, 0)

    mod.nvmlDeviceGetCudaComputeCapability = cc
    return mod


def test_detect_gpus_via_fake_nvml(monkeypatch):
    names = ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA L4"]
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(names))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hw = detect_hardware()
    assert hw.gpu_source == "nvml"
    assert [g.name for g in hw.gpus] == names
    assert hw.cuda_version == "12.4"
    assert hw.gpus[0].compute_capability == "9.0" and hw.gpus[1].compute_capability is None
    assert hw.gpus[0].driver_version == "550.54.15"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("2,0", ["NVIDIA L4", "NVIDIA H100 80GB HBM3"]),
        ("", []),
        ("-1", []),
        ("GPU-0001", ["NVIDIA H100 PCIe"]),
        ("1,7,0", ["NVIDIA H100 PCIe"]),
    ],
)
def test_cuda_visible_devices_respected(monkeypatch, env, expected):
    names = ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA L4"]
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(names))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    hw = detect_hardware()
    assert [g.name for g in hw.gpus] == expected
    assert [g.index for g in hw.gpus] == list(range(len(expected)))


# --------------------------------------------------------------------------- resolution


def _hw(*gpu_names: str) -> DetectedHardware:
    return DetectedHardware(
        cpu_model="AMD EPYC 7R32 48-Core Processor",
        cpu_cores_logical=8,
        cpu_cores_physical=4,
        cpu_flags=["avx2"],
        memory_total_bytes=64 * 2**30,
        gpus=[GpuInfo(index=i, name=n, memory_total_bytes=24 * 2**30) for i, n in enumerate(gpu_names)],
    )


def test_resolve_auto_cpu_here():
    resolved = resolve_profile("auto", "cpu")
    assert resolved.profile.name == "cpu-generic"
    assert resolved.matched is False
    assert "cpu-generic" in resolved.reason and "rooflens hw probe" in resolved.reason
    assert resolved.profile.display_name == detect_hardware().cpu_model
    # the cached profile is not mutated
    assert get_profile("cpu-generic").display_name == "Generic CPU (no datasheet)"


def test_resolve_auto_without_gpu_falls_back_to_cpu():
    resolved = resolve_profile("auto", "auto", hardware=_hw())
    assert resolved.profile.name == "cpu-generic" and not resolved.matched
    assert "AMD EPYC 7R32" in resolved.reason
    assert resolved.profile.display_name == "AMD EPYC 7R32 48-Core Processor"
    cuda = resolve_profile("auto", "cuda", hardware=_hw())
    assert cuda.profile.name == "cpu-generic" and "no GPU detected" in cuda.reason


def test_resolve_auto_gpu():
    resolved = resolve_profile("auto", hardware=_hw("NVIDIA H100 80GB HBM3"))
    assert resolved.profile.name == "h100-sxm" and resolved.matched
    assert resolved.reason == "detected 'NVIDIA H100 80GB HBM3' -> h100-sxm"
    second = resolve_profile("auto", "cuda:1", hardware=_hw("NVIDIA L4", "NVIDIA A10G"))
    assert second.profile.name == "a10g"
    cpu = resolve_profile("auto", "cpu", hardware=_hw("NVIDIA L4"))
    assert cpu.profile.name == "cpu-generic"


def test_resolve_auto_unknown_gpu():
    resolved = resolve_profile("auto", hardware=_hw("NVIDIA RTX 6000 Ada Generation"))
    assert resolved.matched is False
    assert resolved.profile.kind == "gpu"
    assert resolved.profile.display_name == "NVIDIA RTX 6000 Ada Generation"
    assert resolved.profile.bandwidth_si() is None
    assert resolved.profile.capacity_si() == pytest.approx(24 * 2**30)
    assert "no datasheet profile" in resolved.reason


def test_resolve_explicit_name():
    resolved = resolve_profile("rtx-4090", "cpu", hardware=_hw())
    assert resolved.profile.name == "rtx-4090"
    assert resolved.matched is True and resolved.reason == "chosen in the experiment"
    with pytest.raises(UnknownProfileError):
        resolve_profile("rtx-9090", hardware=_hw())


def test_resolve_bad_device():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_profile("auto", "tpu:0", hardware=_hw())


# --------------------------------------------------------------------------- CPUs and edge SoCs

CPU_EDGE = [p for p in list_profiles() if p.category in ("cpu", "edge") and p.name != "cpu-generic"]


def test_enough_profiles_in_every_class():
    profiles = list_profiles()
    assert len(profiles) >= 20
    by_category = {c: [p.name for p in profiles if p.category == c] for c in ("cloud_gpu", "pc_gpu", "cpu", "edge")}
    assert all(by_category.values()), by_category
    assert len(by_category["cpu"]) + len(by_category["edge"]) >= 8


@pytest.mark.parametrize("profile", CPU_EDGE, ids=_gpu_ids(CPU_EDGE))
def test_cpu_and_edge_ceilings_plausible(profile):
    bw = profile.bandwidth_si()
    assert bw is not None and 50e9 <= bw <= 1e12, bw
    assert profile.memory_bandwidth.source.strip()
    if profile.tdp is not None:
        assert 10 <= profile.tdp.si <= 500
    if profile.kind == "cpu":
        # no vendor FLOP/s figure for these CPUs/SoCs: none is invented
        assert profile.peak_flops == {}
    if profile.category == "cpu":
        assert profile.memory_capacity is None  # depends on the installed DIMMs
    # a bandwidth not printed on the datasheet is marked as derived, with its arithmetic
    if "derived" in profile.memory_bandwidth.source:
        assert " x " in profile.memory_bandwidth.source and "8 bytes" in profile.memory_bandwidth.source


def test_specific_cpu_and_edge_values():
    assert get_profile("ryzen-9-7950x").bandwidth_si() == pytest.approx(2 * 5200e6 * 8)
    assert get_profile("core-i9-14900k").bandwidth_si() == pytest.approx(89.6e9)
    assert get_profile("epyc-9654").bandwidth_si() == pytest.approx(12 * 4800e6 * 8)
    assert get_profile("xeon-platinum-8480plus").bandwidth_si() == pytest.approx(8 * 4800e6 * 8)
    assert get_profile("apple-m2-ultra").bandwidth_si() == pytest.approx(800e9)
    assert get_profile("apple-m3").tdp is None and get_profile("snapdragon-x-elite").tdp is None
    orin = get_profile("jetson-agx-orin-64g")
    assert orin.kind == "gpu" and orin.category == "edge" and orin.match == []
    assert orin.peak_flops_si("int8") == pytest.approx(85e12)  # 170 sparse / 2
    assert get_profile("apple-m3").kind == "cpu" and get_profile("apple-m3").category == "edge"


CPUINFO_NAMES = {
    "AMD Ryzen 9 7950X 16-Core Processor": "ryzen-9-7950x",
    "Intel(R) Core(TM) i9-14900K": "core-i9-14900k",
    "Intel(R) Core(TM) i9-14900KF": "core-i9-14900k",
    "AMD EPYC 9654 96-Core Processor": "epyc-9654",
    "AMD EPYC 9654P 96-Core Processor": "epyc-9654",
    "Intel(R) Xeon(R) Platinum 8480+": "xeon-platinum-8480plus",
    "Apple M3": "apple-m3",
    "Apple M2 Ultra": "apple-m2-ultra",
    "Snapdragon(R) X Elite - X1E78100 - Qualcomm(R) Oryon(TM) CPU": "snapdragon-x-elite",
}


@pytest.mark.parametrize(("cpu_model", "expected"), sorted(CPUINFO_NAMES.items()))
def test_match_profile_cpu_model_names(cpu_model, expected):
    found = match_profile(cpu_model)
    assert found is not None and found.name == expected


@pytest.mark.parametrize(
    "cpu_model",
    [
        "AMD Ryzen 9 7950X3D 16-Core Processor",
        "Intel(R) Core(TM) i9-14900KS",
        "Apple M3 Pro",
        "Apple M3 Max",  # two variants (300 and 400 GB/s) share the name: no pattern
        "Apple M2",
        "Intel(R) Xeon(R) Platinum 8480C",
        "AMD EPYC 9554 64-Core Processor",
        "Orin",  # every Orin module's CUDA name
    ],
)
def test_match_profile_rejects_other_cpus(cpu_model):
    assert match_profile(cpu_model) is None


def test_resolve_auto_cpu_with_a_profile():
    hw = _hw().model_copy(update={"cpu_model": "AMD Ryzen 9 7950X 16-Core Processor"})
    resolved = resolve_profile("auto", "cpu", hardware=hw)
    assert resolved.profile.name == "ryzen-9-7950x" and resolved.matched
    assert resolved.reason == "detected CPU 'AMD Ryzen 9 7950X 16-Core Processor' -> ryzen-9-7950x"
    assert resolved.device_name == "AMD Ryzen 9 7950X 16-Core Processor"
    # no GPU at all: the CPU profile too, saying that the GPU was missing
    cuda = resolve_profile("auto", "cuda", hardware=hw)
    assert cuda.profile.name == "ryzen-9-7950x" and "no GPU detected" in cuda.reason


def test_edge_category_takes_either_kind_but_cpu_stays_cpu(tmp_path):
    soc = _GOOD.replace("category: cloud_gpu", "category: edge")
    assert load_profile_file(_write(tmp_path, "test-gpu.yaml", soc)).category == "edge"
    as_cpu = soc.replace("kind: gpu", "kind: cpu")
    assert load_profile_file(_write(tmp_path, "test-gpu.yaml", as_cpu)).kind == "cpu"
    wrong = _GOOD.replace("category: cloud_gpu", "category: cpu")
    with pytest.raises(HardwareProfileError, match="does not fit category"):
        load_profile_file(_write(tmp_path, "test-gpu.yaml", wrong))
