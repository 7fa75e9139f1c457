"""What this machine has (CPU, memory, GPUs), and the name of the device a run uses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rooflens.device.cpu import cpu_cores, detect_cpu
from rooflens.device.gpu import GpuInfo, detect_gpus


class DetectedHardware(BaseModel):
    """What this machine has, as found by :func:`detect_hardware`."""

    model_config = ConfigDict(extra="forbid")

    cpu_model: str
    cpu_cores_logical: int
    cpu_cores_physical: int | None = None
    cpu_flags: list[str] = Field(default_factory=list)
    memory_total_bytes: int
    gpus: list[GpuInfo] = Field(default_factory=list)
    cuda_version: str | None = None
    gpu_source: Literal["nvml", "torch.cuda"] | None = None


def detect_hardware() -> DetectedHardware:
    """Detect CPU, memory and GPUs (NVML first, torch.cuda as fallback). Never raises for a
    machine without a GPU. ``cuda_version`` is the driver's CUDA version from NVML, or torch's
    CUDA runtime version when NVML is unavailable."""
    import psutil

    cpu = detect_cpu()
    logical, physical = cpu_cores()
    gpus, cuda_version, source = detect_gpus()
    return DetectedHardware(
        cpu_model=cpu.model,
        cpu_cores_logical=logical,
        cpu_cores_physical=physical,
        cpu_flags=cpu.interesting_flags,
        memory_total_bytes=int(psutil.virtual_memory().total),
        gpus=gpus,
        cuda_version=cuda_version,
        gpu_source=source,
    )


def device_name(dev: Any) -> str:
    """The name of the torch device ``dev``: the GPU's (torch's name for it), or the CPU model."""
    if dev.type == "cuda":
        import torch

        return str(torch.cuda.get_device_name(dev))
    return detect_cpu().model
