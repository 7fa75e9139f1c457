"""What a measuring process sets up for a run, once, and keeps between the run's groups it measures.

Set up at the first job of a run in this process: torch's threads (the only place rooflens sets
them), the device and dtype, the hardware profile, the roofline ceilings (measured first where a
probe job asks for it), the environment every record carries, and the energy meter. Models are
loaded once per dtype. A process that measures several groups of one run in a row (``inline``)
keeps its workbench from one job to the next, so the model loads once for the whole run; it lets
it go after the group that holds the run's last cell, at an error, or when a job of another run
comes. A worker process (``subprocess``, ``ray``) measures one job and exits.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from rooflens.bench.cell_quality import SharedPerplexity
from rooflens.bench.cells import expand_cells
from rooflens.bench.energy import EnergyMeter, UnavailableMeter, select_meter
from rooflens.bench.environment import capture_environment
from rooflens.bench.job import Emit, GroupJob, Loading, Note
from rooflens.bench.record_base import hardware_profile_info
from rooflens.config import EngineSpec, Experiment
from rooflens.device.detect import detect_hardware
from rooflens.device.lock import lock_path
from rooflens.models.loader import (
    TORCH_DTYPES,
    DtypeChoice,
    LoadedModel,
    choose_dtype,
    dtype_name,
    load_model,
    resolve_device,
)
from rooflens.roofline.hardware import HardwareProfile, ResolvedProfile, resolve_profile
from rooflens.roofline.position import ceilings_for
from rooflens.roofline.probe_file import ProbeResult, describe_attempt, lookup_probe
from rooflens.text import first_line


@dataclass
class Workbench:
    run_id: str
    device: torch.device
    dtype_choice: DtypeChoice
    profile: HardwareProfile
    hardware_profile: dict[str, Any]  # the records' hardware_profile
    probe: ProbeResult | None
    probe_note: str | None  # why there is no probe, for the records
    environment: dict[str, Any]
    meter: EnergyMeter
    models: dict[torch.dtype, LoadedModel] = field(default_factory=dict)
    shared_perplexity: SharedPerplexity = field(default_factory=dict)

    def model_for(self, exp: Experiment, spec: EngineSpec, emit: Emit) -> LoadedModel:
        """The model in this engine's dtype (its own ``dtype``, else the run's), loaded once per dtype."""
        choice = (
            DtypeChoice(TORCH_DTYPES[spec.dtype], f"{spec.dtype}, set for engine '{spec.display}'")
            if spec.dtype
            else self.dtype_choice
        )
        if choice.dtype not in self.models:
            emit(Loading(label=f"{exp.model.label} ({dtype_name(choice.dtype)})"))
            self.models[choice.dtype] = load_model(
                exp.model, self.device, choice.dtype, seed=exp.seed, dtype_reason=choice.reason
            )
        return self.models[choice.dtype]

    def release(self) -> None:
        """Free the loaded models (and what the allocator caches of them)."""
        self.models.clear()
        self.shared_perplexity.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def meter_for(exp: Experiment, device: torch.device) -> EnergyMeter:
    if not exp.energy:
        return UnavailableMeter("energy measurement turned off in the experiment (energy: false)")
    return select_meter(str(device))


def placement_of(job: GroupJob) -> dict[str, Any]:
    """Where this process measures, and what kept every other measurement off the machine meanwhile
    (``exclusive``: the machine lock, held around each measured window; under Ray, the node's reservation)."""
    placement: dict[str, Any] = {"executor": job.executor, "pid": os.getpid(), **job.placement}
    placement["exclusive"] = [*job.placement.get("exclusive", []), f"machine lock {lock_path()}"]
    return placement


def set_up(job: GroupJob, emit: Emit) -> Workbench:
    """Threads, device, dtype, profile, ceilings, environment and meter of this process, for the job's run."""
    exp = job.experiment
    if job.threads:
        torch.set_num_threads(job.threads)
    device = resolve_device(exp.device)
    choice = (
        DtypeChoice(TORCH_DTYPES[job.dtype.name], job.dtype.reason) if job.dtype else choose_dtype(exp.dtype, device)
    )
    detected = detect_hardware()
    resolved = resolve_profile(exp.hardware, str(device), hardware=detected)
    probe, probe_note = _ceilings(job, resolved, device, dtype_name(choice.dtype), emit)
    environment = capture_environment(detected.model_dump(mode="json"))
    environment["placement"] = placement_of(job)
    return Workbench(
        run_id=job.run_id,
        device=device,
        dtype_choice=choice,
        profile=resolved.profile,
        hardware_profile=hardware_profile_info(resolved),
        probe=probe,
        probe_note=probe_note,
        environment=environment,
        meter=meter_for(exp, device),
    )


def probe_threads(device: torch.device, threads: int | None = None) -> int:
    """The thread count a probe of ``device`` is keyed by: ``threads`` (default: torch's CPU threads now)
    on a CPU, 0 for a GPU."""
    return 0 if device.type == "cuda" else threads or torch.get_num_threads()


def _ceilings(
    job: GroupJob, resolved: ResolvedProfile, device: torch.device, dtype: str, emit: Emit
) -> tuple[ProbeResult | None, str | None]:
    """The valid saved probe at this process's thread count, or why there is none; a probe job measures
    it first where the device has no ceilings."""
    name = resolved.device_name
    if not name:
        return None, job.probe_note or "no device name to find a probe by"
    found = lookup_probe(name, probe_threads(device))
    if job.probe and not ceilings_for(resolved.profile, dtype, found.probe):
        measured, why_not = first_probe(device, name, emit)
        return (measured, None) if measured is not None else (None, why_not)
    return found.probe, None if found.probe is not None else job.probe_note or found.note


AUTO_PROBE_CPU_DTYPES = ("fp32", "bf16")
"""The GEMMs ``probe: auto`` measures on a CPU: the dtypes ``dtype: auto`` picks there. fp16 (no fast path on
most CPUs: minutes at full size), fp8 and int8 are ``rooflens hw probe``'s; skipping them halves the probe."""


def first_probe(device: torch.device, device_name: str, emit: Emit) -> tuple[ProbeResult | None, str | None]:
    """``probe: auto`` on a device with no ceilings: measure them once, as `rooflens hw probe` does, and save
    them for later runs at these threads when they are valid, so that every record of this one has a
    roofline efficiency. Said on the console, never silent: the probe, and the refusal of a noisy one.
    Returns the probe, or None and why (for the records)."""
    from rooflens.roofline.probe import ProbeError, ProbeRefused, probe
    from rooflens.roofline.probe_file import save_probe

    threads = probe_threads(device)
    at = f" at {threads} threads" if threads else ""
    emit(
        Note(
            text=f"no ceilings for {device_name}{at}: measuring them once (as `rooflens hw probe` does: "
            "10-40 s on a CPU, up to 3 attempts; saved only when valid, and reused by later runs"
            f"{at})"
        )
    )
    try:
        dtypes = AUTO_PROBE_CPU_DTYPES if device.type == "cpu" else None
        result = probe(str(device), dtypes=dtypes, progress=lambda line: emit(Note(text=f"probe: {line}")))
    except ProbeRefused as err:
        emit(Note(text=f"{err}\nthis run goes on without measured ceilings"))
        tries = " | ".join(describe_attempt(a) for a in err.attempts)
        return None, f"the automatic probe was refused ({tries}); `rooflens hw probe` on a quiet machine measures them"
    except (ProbeError, ValueError, RuntimeError) as err:
        emit(Note(text=f"the probe failed ({err}): records will have no measured roofline ceilings"))
        return None, f"the automatic probe failed: {first_line(err)}"
    ceilings = ", ".join(
        f"{k} {v.max / 1e12:.3g} {'TOP/s' if k == 'int8' else 'TFLOP/s'}" for k, v in result.gemm.items()
    )
    try:
        saved = f"saved to {save_probe(result)}"
    except OSError as err:  # an unwritable ROOFLENS_HOME: the ceilings still serve this run
        saved = (
            f"not saved ({err.strerror or err}{f': {err.filename}' if err.filename else ''}): used for this run only"
        )
    emit(Note(text=f"measured ceilings: {result.bandwidth.max / 1e9:.1f} GB/s, {ceilings}; {saved}"))
    return result, None


class _Kept:
    """The workbench this process keeps for the next group of the same run (at most one)."""

    bench: Workbench | None = None


def workbench_for(job: GroupJob, emit: Emit) -> Workbench:
    """The workbench kept from the run's previous group in this process, else a new one (another run's is let go)."""
    bench, _Kept.bench = _Kept.bench, None
    if bench is not None and bench.run_id == job.run_id:
        return bench
    if bench is not None:
        bench.release()
    return set_up(job, emit)


def done_with(bench: Workbench, job: GroupJob, *, failed: bool) -> None:
    """After a job: keep the workbench for the run's next group, or let it go after its last, or on an error."""
    last = bool(job.group) and job.group[-1] == len(expand_cells(job.experiment)) - 1
    if failed or last:
        bench.release()
    else:
        _Kept.bench = bench
