"""The host CPU: model name, instruction-set flags (``/proc/cpuinfo``, else py-cpuinfo), core counts and the
current clock of each core (cpufreq in sysfs)."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The instruction-set flags rooflens reports (SIMD and matrix extensions that decide kernel speed).
INTERESTING_CPU_FLAGS: tuple[str, ...] = (
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "neon",
    "asimd",
    "sve",
    "sve2",
)


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and every flag the OS reports (lower case)."""

    model: str
    flags: frozenset[str]

    @property
    def interesting_flags(self) -> list[str]:
        """The :data:`INTERESTING_CPU_FLAGS` present, in that order (``avx512bf16`` counts as ``avx512_bf16``)."""
        present = {f.replace("_", "") for f in self.flags}
        return [f for f in INTERESTING_CPU_FLAGS if f.replace("_", "") in present]


def _read_proc_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpuinfo_field(text: str, *keys: str) -> str | None:
    """First non-numeric value of the first of ``keys`` (in priority order) in /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        # "processor : 0" on x86 is an index, not a model name.
        if sep and value and not value.isdigit():
            fields.setdefault(key, value)
    for key in keys:
        if key.lower() in fields:
            return fields[key.lower()]
    return None


def _py_cpuinfo() -> dict[str, Any]:
    try:
        import cpuinfo  # py-cpuinfo; slow (~1 s), so only a fallback

        return dict(cpuinfo.get_cpu_info())
    except Exception:  # noqa: BLE001 - detection must never raise
        return {}


def detect_cpu() -> CpuInfo:
    """The CPU's model and flags; never raises (an unknown model is the platform's name or "unknown CPU")."""
    model: str | None = None
    raw_flags: list[str] | None = None
    text = _read_proc_cpuinfo()
    if text:
        model = _cpuinfo_field(text, "model name", "cpu model", "Processor", "Hardware")
        flags_line = _cpuinfo_field(text, "flags", "Features")
        if flags_line is not None:
            raw_flags = flags_line.split()
    if model is None or raw_flags is None:
        info = _py_cpuinfo()
        if model is None:
            model = info.get("brand_raw") or None
        if raw_flags is None:
            raw_flags = [str(f) for f in info.get("flags", [])]
    if not model:
        model = platform.processor() or platform.machine() or "unknown CPU"
    return CpuInfo(model=model, flags=frozenset(f.lower() for f in raw_flags or []))


def cpu_cores() -> tuple[int, int | None]:
    """(logical cores, physical cores or None when unknown)."""
    import psutil

    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False)
    return int(logical), int(physical) if physical else None


CPUFREQ_ROOT = Path("/sys/devices/system/cpu")
"""Where Linux exposes each CPU's cpufreq folder (``cpu<N>/cpufreq/scaling_cur_freq``, kHz)."""


def cpu_clocks_khz(cpus: Iterable[int] | None = None, root: Path | None = None) -> dict[int, int]:
    """The current clock (kHz) of each CPU in ``cpus`` (default: all) that exposes one; empty where none
    does (a VM, a container without sysfs, macOS, Windows)."""
    base = root if root is not None else CPUFREQ_ROOT
    wanted = None if cpus is None else set(cpus)
    out: dict[int, int] = {}
    try:
        folders = list(base.glob("cpu[0-9]*"))
    except OSError:
        return out
    for folder in folders:
        index = folder.name.removeprefix("cpu")
        if not index.isdigit() or (wanted is not None and int(index) not in wanted):
            continue
        try:
            out[int(index)] = int((folder / "cpufreq" / "scaling_cur_freq").read_text().strip())
        except (OSError, ValueError):
            continue
    return out


_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def _cache_size(text: str) -> int | None:
    """``/sys`` cache sizes ("32768K", "1M") in bytes; None for anything else."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = text.rstrip("KMG"), text[len(text.rstrip("KMG")) :]
    if not number.isdigit() or unit not in _SIZE_UNITS:
        return None
    return int(number) * _SIZE_UNITS[unit]


def last_level_cache_bytes(sys_cpu: Path = Path("/sys/devices/system/cpu")) -> int | None:
    """The machine's last-level cache in bytes, all its instances together (e.g. one L3 per socket or
    per CCD), from ``/sys/devices/system/cpu/cpu*/cache/index*``; None where that is not readable.

    A memory-bandwidth probe must stream far more than this, or it measures the cache.
    """
    levels: dict[int, dict[str, int]] = {}  # level -> shared_cpu_list -> bytes (one entry per instance)
    for index in sys_cpu.glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = _cache_size((index / "size").read_text())
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and size:
            levels.setdefault(level, {})[shared or index.parent.parent.name] = size
    if not levels:
        return None
    return sum(levels[max(levels)].values())
