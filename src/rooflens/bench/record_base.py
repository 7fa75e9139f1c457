"""The fields every record of a cell carries, whoever builds it: the measuring process (a measured cell)
or the driver (a cell whose measuring process ended before it reported one)."""

from __future__ import annotations

from typing import Any

from rooflens.bench.cells import Cell
from rooflens.bench.environment import now_iso
from rooflens.bench.job import GroupJob
from rooflens.roofline.hardware import ResolvedProfile
from rooflens.text import safe_name


def experiment_info(job: GroupJob) -> dict[str, Any]:
    exp = job.experiment
    return {
        "name": exp.name,
        "file": job.source,
        "run_id": job.run_id,
        "config_hash": exp.config_hash(),
        "baseline": exp.baseline_label,
        "config": exp.model_dump(mode="json"),
    }


def record_base(
    job: GroupJob, cell: Cell, *, model: Any, device: str, hardware_profile: dict[str, Any], environment: dict
) -> dict[str, Any]:
    """Keyword arguments of :class:`~rooflens.results.record.Record` shared by every status."""
    return {
        "record_id": f"{job.run_id}/{safe_name(cell.engine.display)}/{safe_name(cell.workload.display)}/b{cell.batch_size}",
        "experiment": experiment_info(job),
        "cell": cell.spec(),
        "model": model,
        "device": device,
        "hardware_profile": hardware_profile,
        "environment": environment,
        "started_at": now_iso(),
    }


def hardware_profile_info(resolved: ResolvedProfile) -> dict[str, Any]:
    """A record's ``hardware_profile``: the profile a run measured against, and why that one."""
    return {
        "name": resolved.profile.name,
        "display_name": resolved.profile.display_name,
        "matched": resolved.matched,
        "reason": resolved.reason,
        "profile": resolved.profile.model_dump(mode="json"),
    }
