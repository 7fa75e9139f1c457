"""NVIDIA GPUs through NVML: initialised once, and ``CUDA_VISIBLE_DEVICES`` mapped in this one place.

torch numbers the GPUs it sees ``cuda:0, cuda:1, ...`` in the order of ``CUDA_VISIBLE_DEVICES`` (when set);
NVML numbers every GPU of the machine. :func:`visible_gpus` and :func:`cuda_gpu` translate, for entries that
are integers, GPU UUIDs (or unique prefixes of them) and MIG UUIDs, the way CUDA reads them: the list ends
at the first empty or unusable entry. A MIG instance runs on a slice of its GPU: its own handle gives its
name and memory, the board's handle the board's energy and power.

pynvml is imported when first needed (never at import), so this module loads anywhere.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from rooflens.text import first_line

__all__ = [
    "CLOCK_EVENT_REASONS",
    "CLOCK_SLOWDOWNS",
    "GpuError",
    "GpuInfo",
    "GpuNotVisibleError",
    "NvmlUnavailableError",
    "VisibleGpu",
    "clock_event_reader",
    "cuda_gpu",
    "describe_clock_events",
    "detect_gpus",
    "is_not_supported",
    "nvml",
    "visible_gpus",
]

ORDER_CAVEAT = (
    "several GPUs and CUDA_DEVICE_ORDER is not PCI_BUS_ID: the CUDA ordinal may not "
    "match the NVML index; set CUDA_DEVICE_ORDER=PCI_BUS_ID"
)

_LOCK = threading.Lock()
_initialised: ModuleType | None = None  # the pynvml module nvmlInit succeeded on


class GpuError(RuntimeError):
    """A GPU cannot be looked up; the message says why."""


class NvmlUnavailableError(GpuError):
    """NVML cannot be used here (nvidia-ml-py missing, no driver, ...)."""


class GpuNotVisibleError(GpuError):
    """A CUDA index that this process does not see (outside ``CUDA_VISIBLE_DEVICES`` or NVML's GPUs)."""


class GpuInfo(BaseModel):
    """One visible GPU; ``index`` is the index torch uses (``cuda:<index>``)."""

    model_config = ConfigDict(extra="forbid")

    index: int
    name: str
    memory_total_bytes: int
    driver_version: str | None = None
    compute_capability: str | None = None


@dataclass(frozen=True)
class VisibleGpu:
    """The GPU behind ``cuda:<cuda_index>``: NVML handles and what the mapping cannot vouch for."""

    cuda_index: int
    nvml_index: int  # the physical GPU in NVML's numbering
    handle: Any  # what cuda:<cuda_index> runs on: the GPU, or its MIG instance
    board: Any  # the physical GPU (energy and power are per board)
    mig_uuid: str | None = None
    caveats: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Slot:
    nvml_index: int
    mig_uuid: str | None = None
    mig_handle: Any = field(default=None, compare=False)
    by_uuid: bool = field(default=False, compare=False)


def _decode(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def nvml() -> ModuleType:
    """pynvml, initialised once per process; raises :class:`NvmlUnavailableError` saying why not."""
    global _initialised
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailableError("nvidia-ml-py (pynvml) is not installed") from exc
    with _LOCK:
        if _initialised is not pynvml:
            try:
                pynvml.nvmlInit()
            except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, driver not loaded, ...
                raise NvmlUnavailableError(first_line(exc)) from exc
            _initialised = pynvml
    return pynvml


def is_not_supported(exc: BaseException) -> bool:
    """Whether ``exc`` is NVML's "not supported" (a counter the GPU does not have)."""
    try:
        import pynvml
    except ImportError:
        return False
    cls = getattr(pynvml, "NVMLError_NotSupported", None)
    return isinstance(cls, type) and isinstance(exc, cls)


def _entries() -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` up to its first empty entry; None when unset (every GPU is visible)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return None
    out = []
    for item in (s.strip() for s in env.split(",")):
        if not item:
            break
        out.append(item)
    return out


def _board_uuids(nv: ModuleType, count: int) -> list[str | None]:
    uuids: list[str | None] = []
    for i in range(count):
        try:
            uuids.append(_decode(nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i))))
        except nv.NVMLError:
            uuids.append(None)
    return uuids


def _mig_slot(nv: ModuleType, count: int, item: str) -> _Slot | None:
    """The MIG instance whose UUID starts with ``item`` ("MIG-..."), or None."""
    for i in range(count):
        try:
            board = nv.nvmlDeviceGetHandleByIndex(i)
            slots = int(nv.nvmlDeviceGetMaxMigDeviceCount(board))
        except (nv.NVMLError, AttributeError):
            continue
        for j in range(slots):
            try:
                mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(board, j)
                uuid = _decode(nv.nvmlDeviceGetUUID(mig))
            except nv.NVMLError:
                continue  # an empty slot
            if uuid.startswith(item):
                return _Slot(i, uuid, mig, by_uuid=True)
    return None


def _visible_slots(nv: ModuleType, count: int) -> list[_Slot]:
    """The GPUs torch numbers 0, 1, ..., as NVML indices (and MIG instances)."""
    entries = _entries()
    if entries is None:
        return [_Slot(i) for i in range(count)]
    slots: list[_Slot] = []
    uuids: list[str | None] | None = None
    for item in entries:
        slot: _Slot | None = None
        if item.lstrip("-").isdigit():
            slot = _Slot(int(item)) if 0 <= int(item) < count else None
        elif item.startswith("MIG-"):
            slot = _mig_slot(nv, count, item)
        else:
            uuids = uuids if uuids is not None else _board_uuids(nv, count)
            found = [i for i, u in enumerate(uuids) if u and u.startswith(item)]
            slot = _Slot(found[0], by_uuid=True) if len(found) == 1 else None
        if slot is None:
            break  # CUDA stops at the first entry it cannot use
        if slot not in slots:
            slots.append(slot)
    return slots


def _visible(nv: ModuleType, cuda_index: int, slot: _Slot, count: int) -> VisibleGpu:
    try:
        board = nv.nvmlDeviceGetHandleByIndex(slot.nvml_index)
    except nv.NVMLError as exc:
        raise GpuNotVisibleError(f"NVML has no device {slot.nvml_index}: {first_line(exc)}") from exc
    caveats: tuple[str, ...] = ()
    if not slot.by_uuid and count > 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        caveats = (ORDER_CAVEAT,)
    handle = slot.mig_handle if slot.mig_uuid is not None else board
    return VisibleGpu(cuda_index, slot.nvml_index, handle, board, slot.mig_uuid, caveats)


def visible_gpus() -> list[VisibleGpu]:
    """Every GPU torch can see, in torch's order; raises :class:`NvmlUnavailableError`."""
    nv = nvml()
    count = int(nv.nvmlDeviceGetCount())
    return [_visible(nv, i, slot, count) for i, slot in enumerate(_visible_slots(nv, count))]


def cuda_gpu(cuda_index: int) -> VisibleGpu:
    """The GPU behind ``cuda:<cuda_index>``; raises :class:`NvmlUnavailableError` or :class:`GpuNotVisibleError`."""
    nv = nvml()
    count = int(nv.nvmlDeviceGetCount())
    slots = _visible_slots(nv, count)
    if not 0 <= cuda_index < len(slots):
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"CUDA_VISIBLE_DEVICES={env!r}" if env is not None else "NVML"
        raise GpuNotVisibleError(f"cuda:{cuda_index} is not in {where} ({len(slots)} GPU(s) visible)")
    return _visible(nv, cuda_index, slots[cuda_index], count)


# --------------------------------------------------------------------------- detection


def _optional(read: Callable[[], Any], nv: ModuleType) -> Any:
    try:
        return read()
    except (nv.NVMLError, AttributeError, TypeError, ValueError):
        return None


def _detect_nvml() -> tuple[list[GpuInfo], str | None] | None:
    """GPUs via NVML, or ``None`` when NVML is unavailable or broken."""
    try:
        nv = nvml()
        driver = _optional(lambda: _decode(nv.nvmlSystemGetDriverVersion()), nv)
        version = _optional(lambda: int(nv.nvmlSystemGetCudaDriverVersion_v2()), nv)
        cuda_version = f"{version // 1000}.{(version % 1000) // 10}" if version is not None else None
        gpus = []
        for g in visible_gpus():
            cc = _optional(lambda g=g: "{}.{}".format(*nv.nvmlDeviceGetCudaComputeCapability(g.board)), nv)
            gpus.append(
                GpuInfo(
                    index=g.cuda_index,
                    name=_decode(nv.nvmlDeviceGetName(g.handle)),
                    memory_total_bytes=int(nv.nvmlDeviceGetMemoryInfo(g.handle).total),
                    driver_version=driver,
                    compute_capability=cc,
                )
            )
        return gpus, cuda_version
    except Exception:  # noqa: BLE001 - a broken NVML install falls back to torch
        return None


def _detect_torch() -> tuple[list[GpuInfo], str | None]:
    try:
        import torch

        if not torch.cuda.is_available():
            return [], None
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(
                GpuInfo(
                    index=i,
                    name=str(props.name),
                    memory_total_bytes=int(props.total_memory),
                    compute_capability=f"{props.major}.{props.minor}",
                )
            )
        return gpus, getattr(torch.version, "cuda", None)
    except Exception:  # noqa: BLE001 - detection must never raise
        return [], None


def detect_gpus() -> tuple[list[GpuInfo], str | None, Literal["nvml", "torch.cuda"] | None]:
    """(GPUs torch can see, CUDA version, where they were found): NVML first (the driver's CUDA version),
    torch.cuda as fallback (torch's CUDA runtime version). Never raises."""
    found = _detect_nvml()
    if found is not None:
        return found[0], found[1], "nvml"
    gpus, cuda_version = _detect_torch()
    return gpus, cuda_version, "torch.cuda" if gpus else None


# --------------------------------------------------------------------------- clocks


CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "GPU idle",
    0x2: "applications clocks setting",
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x10: "sync boost",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake slowdown",
    0x100: "display clock setting",
    0x200: "board limit",
    0x400: "reliability",
}
"""NVML's clocks-event (formerly clocks-throttle) reason bits, as the NVML API defines them."""

CLOCK_SLOWDOWNS = 0x8 | 0x20 | 0x40 | 0x80
"""The reasons that mean heat or the hardware lowered the clock below what the load asked for."""


def describe_clock_events(mask: int) -> list[str]:
    """The names of the reason bits set in ``mask`` (unknown bits as hex)."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    return names + ([f"unknown reasons {unknown:#x}"] if unknown else [])


def clock_event_reader(cuda_index: int) -> Callable[[], int]:
    """A reader of the reasons the clocks of the board behind ``cuda:<cuda_index>`` are below their maximum
    at the moment it is called, as NVML's bit mask (:data:`CLOCK_EVENT_REASONS`). The GPU is looked up once,
    here; both this and the reader raise :class:`GpuError` where NVML cannot say."""
    g = cuda_gpu(cuda_index)
    nv = nvml()
    call = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )
    if call is None:
        raise NvmlUnavailableError("this pynvml has no clocks-event reasons call")

    def read() -> int:
        try:
            return int(call(g.board))
        except nv.NVMLError as exc:
            raise GpuError(
                f"NVML cannot read the clocks-event reasons of cuda:{cuda_index}: {first_line(exc)}"
            ) from exc

    return read
