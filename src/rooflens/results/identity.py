"""What makes two records of one cell comparable: the cell's settings and the machine it ran on.

Two records of the same cell (experiment, model, engine label, workload, batch size, device) compare only
when what was measured is the same: the resolved dtype (``dtype: auto`` is chosen per run), torch's
threads, the engine's options, the kernel path it ran (a native kernel or its fallback) and the
experiment's config hash. And the machine: the detected hardware (CPU model, ISA flags and logical cores,
or each GPU's name and memory), never the name of the profile it was matched to.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import ValidationError

from rooflens.config import Experiment
from rooflens.results.record import Record


def _dtype(r: Record) -> str | None:
    return r.model.dtype if r.model else None


def _threads(r: Record) -> str | None:
    t = r.environment.get("torch_threads")
    return None if t is None else str(t)


def _options(r: Record) -> str:
    return json.dumps(r.cell.engine_options, sort_keys=True)


def _kernel(r: Record) -> str:
    """The kernel path an engine reports (a quantized engine's ``kernel`` stat); ``none`` for the others."""
    stat = r.engine_stats.get("kernel")
    return "none" if stat is None or stat.value is None else str(stat.value)


def _config_hash(r: Record) -> str | None:
    """The hash of the record's experiment as this version computes it from the stored config (so that a field
    added since, with its default, changes nothing); the recorded hash where the config no longer validates."""
    config = r.experiment.get("config")
    if config:
        try:
            return Experiment.model_validate(config).config_hash()
        except ValidationError:
            pass
    return r.experiment.get("config_hash")


SETTINGS: dict[str, Callable[[Record], str | None]] = {
    "dtype": _dtype,
    "threads": _threads,
    "engine_options": _options,
    "kernel": _kernel,
    "config_hash": _config_hash,
}
"""The settings a cell's identity includes beyond its key, by the name ``--allow-mismatch`` takes."""


def setting_mismatches(base: Record, current: Record) -> dict[str, tuple[str, str]]:
    """The settings in which two records of one cell differ: name -> (base's, current's). A setting one record
    does not say (a record older than the field) cannot be checked and is left out."""
    out = {}
    for name, read in SETTINGS.items():
        a, b = read(base), read(current)
        if a is not None and b is not None and a != b:
            out[name] = (a, b)
    return out


def hardware_id(r: Record) -> str:
    """The detected machine a record ran on: CPU model, ISA flags and logical cores, or the GPUs and memory."""
    hw = r.environment.get("hardware", {})
    if r.device.startswith("cuda"):
        gpus = [f"{g.get('name')} {round((g.get('memory_total_bytes') or 0) / 2**30)} GiB" for g in hw.get("gpus", [])]
        return f"{r.device}: " + (", ".join(gpus) or "no GPU detected")
    flags = "+".join(hw.get("cpu_flags", [])) or "no ISA flags"
    return f"{r.device}: {hw.get('cpu_model')} ({flags}, {hw.get('cpu_cores_logical')} logical cores)"
