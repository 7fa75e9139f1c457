"""Hardware profiles (datasheet ceilings) and the choice of one for a detected device.

Profiles live as YAML files in ``rooflens/hw_profiles``; each ceiling carries the value, its
unit and the document it comes from. Peak FLOP/s are *dense* (no structured sparsity).
Detection itself is :mod:`rooflens.device`.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rooflens.device.detect import DetectedHardware, detect_hardware
from rooflens.device.gpu import GpuInfo
from rooflens.device.spec import parse_device

__all__ = [
    "DTYPES",
    "UNITS",
    "Ceiling",
    "HardwareProfile",
    "HardwareProfileError",
    "ResolvedProfile",
    "UnknownProfileError",
    "get_profile",
    "list_profiles",
    "load_profile_file",
    "match_profile",
    "resolve_profile",
]

Dtype = Literal["fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4"]
DTYPES: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")
INTEGER_DTYPES = frozenset({"int8", "int4"})  # peaks in OP/s

#: Allowed units and their factor to SI (bytes, bytes/s, FLOP/s or OP/s, W).
UNITS: dict[str, float] = {
    "GB": 1e9,
    "GiB": float(2**30),
    "GB/s": 1e9,
    "TB/s": 1e12,
    "GFLOP/s": 1e9,
    "TFLOP/s": 1e12,
    "TOP/s": 1e12,
    "W": 1.0,
}
_CAPACITY_UNITS = frozenset({"GB", "GiB"})
_BANDWIDTH_UNITS = frozenset({"GB/s", "TB/s"})
_FLOP_UNITS = frozenset({"GFLOP/s", "TFLOP/s"})
_OP_UNITS = frozenset({"TOP/s"})
_POWER_UNITS = frozenset({"W"})

_DTYPE_ALIASES: dict[str, str] = {
    "float32": "fp32",
    "float": "fp32",
    "f32": "fp32",
    "tensorfloat32": "tf32",
    "float16": "fp16",
    "half": "fp16",
    "f16": "fp16",
    "bfloat16": "bf16",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
    "fp8_e4m3": "fp8",
    "fp8_e5m2": "fp8",
    "e4m3": "fp8",
    "e5m2": "fp8",
    "i8": "int8",
    "i4": "int4",
}

# A device-name token right after a matched pattern that makes it a different product
# ("RTX 4090 D", "RTX 3090 Ti", "RTX 4080 SUPER", "... Laptop GPU", "Max-Q", "H200 NVL", "Apple M3 Pro").
_VARIANT_TOKENS = frozenset({"ti", "super", "laptop", "mobile", "max", "d", "nvl", "pro", "ultra"})

_HW_PROBE_HINT = "run `rooflens hw probe`"


class HardwareProfileError(ValueError):
    """A shipped hardware-profile YAML is malformed or fails validation."""


class UnknownProfileError(ValueError):
    """No hardware profile has the requested name."""


# --------------------------------------------------------------------------- models


class Ceiling(BaseModel):
    """One datasheet number: value, unit (see :data:`UNITS`) and the document it comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float = Field(gt=0)
    unit: str
    source: str = Field(min_length=1)

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str) -> str:
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r}; allowed units: {', '.join(UNITS)}")
        return unit

    @property
    def si(self) -> float:
        """Value in SI base units: bytes, bytes/s, FLOP/s (OP/s for int8) or W."""
        return self.value * UNITS[self.unit]


def _normalize_dtype(dtype: str) -> str:
    key = str(dtype).strip().lower().removeprefix("torch.")
    return _DTYPE_ALIASES.get(key, key)


class HardwareProfile(BaseModel):
    """Datasheet ceilings of one device; ``None`` / absent means "no vendor figure"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    display_name: str = Field(min_length=1)
    kind: Literal["gpu", "cpu"]  # what runs the model: a CUDA device, or the host CPU
    # edge: a system on a chip or module with unified memory (Apple silicon, Snapdragon X, Jetson); its kind
    # says whether rooflens runs on its CUDA GPU (Jetson) or on its CPU (Apple, Snapdragon)
    category: Literal["cloud_gpu", "pc_gpu", "cpu", "edge"]
    vendor: str = Field(min_length=1)
    match: list[str] = Field(default_factory=list)
    memory_capacity: Ceiling | None = None
    memory_bandwidth: Ceiling | None = None
    tdp: Ceiling | None = None
    peak_flops: dict[Dtype, Ceiling] = Field(default_factory=dict)
    notes: str | None = None

    @model_validator(mode="after")
    def _check_consistency(self) -> HardwareProfile:
        if self.category != "edge" and (self.kind == "cpu") != (self.category == "cpu"):
            raise ValueError(f"kind {self.kind!r} does not fit category {self.category!r}")
        checks: list[tuple[str, Ceiling | None, frozenset[str]]] = [
            ("memory_capacity", self.memory_capacity, _CAPACITY_UNITS),
            ("memory_bandwidth", self.memory_bandwidth, _BANDWIDTH_UNITS),
            ("tdp", self.tdp, _POWER_UNITS),
        ]
        for dtype, ceiling in self.peak_flops.items():
            allowed = _OP_UNITS if dtype in INTEGER_DTYPES else _FLOP_UNITS
            checks.append((f"peak_flops.{dtype}", ceiling, allowed))
        for field, ceiling, allowed in checks:
            if ceiling is not None and ceiling.unit not in allowed:
                raise ValueError(f"{field}: unit {ceiling.unit!r} is not valid here; use one of {sorted(allowed)}")
        if any(not p.strip() for p in self.match):
            raise ValueError("match: patterns must be non-empty strings")
        return self

    def peak_flops_si(self, dtype: str) -> float | None:
        """Dense peak in FLOP/s (OP/s for int8) for ``dtype``; ``None`` when the datasheet has none.

        Accepts torch-style aliases ("bfloat16", "torch.float16", "float8_e4m3fn", ...). There is
        no fallback between dtypes: a missing bf16 is ``None``, not the fp16 figure.
        """
        ceiling = self.peak_flops.get(cast(Dtype, _normalize_dtype(dtype)))
        return ceiling.si if ceiling is not None else None

    def bandwidth_si(self) -> float | None:
        """Peak memory bandwidth in bytes/s, or ``None``."""
        return self.memory_bandwidth.si if self.memory_bandwidth is not None else None

    def capacity_si(self) -> float | None:
        """Memory capacity in bytes, or ``None``."""
        return self.memory_capacity.si if self.memory_capacity is not None else None

    def ridge_point(self, dtype: str) -> float | None:
        """Arithmetic intensity (FLOP/byte) where the roofline turns flat, or ``None``."""
        peak, bandwidth = self.peak_flops_si(dtype), self.bandwidth_si()
        if peak is None or bandwidth is None:
            return None
        return peak / bandwidth


class ResolvedProfile(BaseModel):
    """The profile chosen for a run and why; ``matched`` is False when no datasheet fit."""

    model_config = ConfigDict(extra="forbid")

    profile: HardwareProfile
    matched: bool
    reason: str
    device_name: str | None = None


# --------------------------------------------------------------------------- profiles


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<profile>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on the ~30 profiles


def load_profile_file(path: Any) -> HardwareProfile:
    """Load and validate one profile YAML (a path or an ``importlib.resources`` Traversable).

    Raises :class:`HardwareProfileError` naming the file and the offending field.
    """
    file_name = getattr(path, "name", str(path))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise HardwareProfileError(f"hardware profile {file_name}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise HardwareProfileError(f"hardware profile {file_name}: expected a mapping at top level")
    try:
        profile = HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise HardwareProfileError(
            f"hardware profile {file_name} is invalid: {_format_validation_error(exc)}"
        ) from None
    stem = file_name.rsplit(".", 1)[0]
    if profile.name != stem:
        raise HardwareProfileError(f"hardware profile {file_name}: name {profile.name!r} does not match the file name")
    return profile


@functools.lru_cache(maxsize=1)
def _load_profiles() -> tuple[HardwareProfile, ...]:
    from importlib.resources import files

    directory = files("rooflens") / "hw_profiles"
    entries = sorted(
        (e for e in directory.iterdir() if e.name.endswith((".yaml", ".yml"))),
        key=lambda e: e.name,
    )
    profiles = tuple(sorted((load_profile_file(e) for e in entries), key=lambda p: p.name))
    owner: dict[str, str] = {}
    for profile in profiles:
        for pattern in profile.match:
            key = _normalize_name(pattern)
            if key in owner and owner[key] != profile.name:
                raise HardwareProfileError(
                    f"hardware profile {profile.name}.yaml: match pattern {pattern!r} is also used by {owner[key]}"
                )
            owner[key] = profile.name
    return profiles


def list_profiles() -> list[HardwareProfile]:
    """All shipped hardware profiles, sorted by name (loaded once, then cached)."""
    return list(_load_profiles())


def get_profile(name: str) -> HardwareProfile:
    """The profile called ``name`` (case-insensitive); raises :class:`UnknownProfileError`."""
    key = name.strip().lower()
    profiles = _load_profiles()
    for profile in profiles:
        if profile.name == key:
            return profile
    known = ", ".join(p.name for p in profiles)
    raise UnknownProfileError(f"unknown hardware profile {name!r}; known profiles: {known}")


def _normalize_name(text: str) -> str:
    """Lower-case words separated by single spaces ("A100-SXM4-80GB" -> "a100 sxm4 80gb")."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _pattern_matches(pattern: str, device: str) -> bool:
    """Whole-word match of normalized ``pattern`` in normalized ``device``, not followed by a
    variant qualifier (Ti, SUPER, Laptop, ...)."""
    pat_tokens, dev_tokens = pattern.split(), device.split()
    n = len(pat_tokens)
    if n == 0:
        return False
    for start in range(len(dev_tokens) - n + 1):
        if dev_tokens[start : start + n] == pat_tokens:
            following = dev_tokens[start + n] if start + n < len(dev_tokens) else None
            if following not in _VARIANT_TOKENS:
                return True
    return False


def match_profile(device_name: str) -> HardwareProfile | None:
    """The profile whose ``match`` pattern fits ``device_name`` most specifically, or ``None``.

    Patterns are case-insensitive and compared on whole words ("-", "_" and spaces are
    equivalent), so "L4" does not match "L40S" and "H200" does not match "GH200". A pattern
    followed in the device name by a variant word (Ti, SUPER, D, Laptop, Max-Q, NVL) does not
    match. Among matches, the longest pattern wins.
    """
    device = _normalize_name(device_name)
    best: tuple[int, str] | None = None
    best_profile: HardwareProfile | None = None
    for profile in _load_profiles():
        for pattern in profile.match:
            norm = _normalize_name(pattern)
            if not _pattern_matches(norm, device):
                continue
            # Longest pattern wins; ties are broken by profile name for determinism.
            rank = (len(norm), profile.name)
            if best is None or rank[0] > best[0] or (rank[0] == best[0] and rank[1] < best[1]):
                best, best_profile = rank, profile
    return best_profile


# --------------------------------------------------------------------------- resolution


def _cpu_profile(hw: DetectedHardware) -> HardwareProfile:
    return get_profile("cpu-generic").model_copy(update={"display_name": hw.cpu_model}, deep=True)


def _unknown_gpu_profile(gpu: GpuInfo) -> HardwareProfile:
    lowered = gpu.name.lower()
    if any(w in lowered for w in ("nvidia", "tesla", "geforce", "quadro")):
        vendor = "nvidia"
    elif any(w in lowered for w in ("amd", "radeon", "instinct")):
        vendor = "amd"
    else:
        vendor = "unknown"
    capacity = Ceiling(
        value=round(gpu.memory_total_bytes / 2**30, 3),
        unit="GiB",
        source="detected (total memory reported by the driver)",
    )
    return HardwareProfile(
        name="unknown-gpu",
        display_name=gpu.name,
        kind="gpu",
        category="pc_gpu" if "geforce" in lowered or "radeon rx" in lowered else "cloud_gpu",
        vendor=vendor,
        match=[],
        memory_capacity=capacity,
        notes=(
            "No datasheet profile matches this GPU: bandwidth and peak FLOP/s are unknown. "
            f"Name a profile in the experiment or {_HW_PROBE_HINT}."
        ),
    )


def resolve_profile(spec: str, device: str = "auto", *, hardware: DetectedHardware | None = None) -> ResolvedProfile:
    """Pick the hardware profile for a run.

    ``spec`` is "auto" or a profile name; ``device`` is "auto", "cpu", "cuda" or "cuda:<i>".
    An explicit name is used as is (``matched=True``). "auto" matches the detected GPU's name
    against the profiles; for a CPU run (or no GPU) it matches the CPU model name against the CPU
    profiles, else returns ``cpu-generic`` with the CPU model as display name. ``hardware`` skips
    detection (for tests or repeated calls).
    Raises :class:`UnknownProfileError` for an unknown name and ValueError for a bad device.
    """
    parsed = parse_device(device)
    kind, index = parsed.type, parsed.index
    if spec.strip().lower() != "auto":
        profile = get_profile(spec)
        if profile.name == "cpu-generic":
            hw = hardware if hardware is not None else detect_hardware()
            return ResolvedProfile(
                profile=_cpu_profile(hw),
                matched=True,
                reason="chosen in the experiment",
                device_name=hw.cpu_model,
            )
        return ResolvedProfile(profile=profile, matched=True, reason="chosen in the experiment")

    hw = hardware if hardware is not None else detect_hardware()
    prefix = ""
    if kind != "cpu":
        wanted = index if index is not None else 0
        gpu = next((g for g in hw.gpus if g.index == wanted), None)
        if gpu is not None:
            found = match_profile(gpu.name)
            if found is not None:
                return ResolvedProfile(
                    profile=found,
                    matched=True,
                    reason=f"detected {gpu.name!r} -> {found.name}",
                    device_name=gpu.name,
                )
            return ResolvedProfile(
                profile=_unknown_gpu_profile(gpu),
                matched=False,
                reason=(
                    f"GPU {gpu.name!r} has no datasheet profile; ceilings unknown "
                    f"(name a profile in the experiment or {_HW_PROBE_HINT})"
                ),
                device_name=gpu.name,
            )
        if kind == "cuda":
            what = "no GPU detected" if not hw.gpus else f"no GPU with index {wanted}"
            prefix = f"device {device!r} requested but {what}; "
    found_cpu = match_profile(hw.cpu_model)
    if found_cpu is not None and found_cpu.kind == "cpu":
        return ResolvedProfile(
            profile=found_cpu,
            matched=True,
            reason=f"{prefix}detected CPU {hw.cpu_model!r} -> {found_cpu.name}",
            device_name=hw.cpu_model,
        )
    return ResolvedProfile(
        profile=_cpu_profile(hw),
        matched=False,
        reason=(
            f"{prefix}CPU {hw.cpu_model!r} has no datasheet profile; using cpu-generic "
            f"(no datasheet ceilings; {_HW_PROBE_HINT})"
        ),
        device_name=hw.cpu_model,
    )
