"""Writing records atomically and reading a folder of them back (as records or a DataFrame)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from rooflens.fsutil import write_atomic
from rooflens.results.record import SCHEMA_VERSION, Record
from rooflens.text import quote, safe_name, shorten


class RecordExistsError(FileExistsError):
    """A record file of this name exists already: two cells mapped to one name, or a run folder was reused."""


class OutputError(OSError):
    """An output folder or file cannot be written; the message says which and why."""


def ensure_writable(folder: Path, what: str) -> None:
    """Create ``folder`` and prove a file can be written there, before anything is measured."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rooflens-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{what} {folder}: cannot write there ({describe_os_error(err)})") from None


def describe_os_error(err: OSError) -> str:
    """``Is a directory``, ``Permission denied``, ... without the errno and path noise."""
    return err.strerror.lower() if err.strerror else str(err)


def record_filename(record: Record) -> str:
    c = record.cell
    return safe_name(f"{c.engine_label}__{c.workload}__b{c.batch_size}") + ".json"


class RecordRescued(OSError):
    """A measured record could not be written to its run folder (a full disk, a file-size limit, a folder that
    vanished); ``path`` is where it was written instead (None: nowhere, only the run's memory holds it)."""

    def __init__(self, message: str, path: Path | None):
        super().__init__(message)
        self.path = path


def rescue_dir(folder: Path) -> Path:
    """Where a record goes when its run folder cannot take it: ``$ROOFLENS_RESCUE`` (default
    ``<temp>/rooflens-rescued``), under the run folder's name."""
    root = Path(os.environ.get("ROOFLENS_RESCUE") or Path(tempfile.gettempdir()) / "rooflens-rescued")
    return root / Path(folder).name


def write_record(folder: Path, record: Record) -> Path:
    """Write ``record`` into ``folder`` atomically; an existing record of the same name is never replaced.
    A write that fails for any other reason raises :class:`RecordRescued` after writing the record to
    :func:`rescue_dir` (the message names both places)."""
    path = Path(folder) / record_filename(record)
    text = record.model_dump_json(indent=2)
    try:
        write_atomic(path, text, exclusive=True)
    except FileExistsError:
        raise RecordExistsError(f"{path}: exists already; rooflens never replaces a record") from None
    except OSError as err:
        why = f"{path}: could not be written ({describe_os_error(err)})"
        spare = rescue_dir(folder) / path.name
        try:
            write_atomic(spare, text, exclusive=True)
        except OSError as again:
            raise RecordRescued(
                f"{why}; nor to {spare} ({describe_os_error(again)}): the record is kept only in this run's "
                "memory (its summary)",
                None,
            ) from None
        raise RecordRescued(f"{why}; written to {spare} instead", spare) from None
    return path


class RecordLoadError(ValueError):
    """A file under a results folder looks like a record but cannot be read as one."""


def load_records(folder: str | Path, skipped: list[str] | None = None) -> list[Record]:
    """All records under ``folder`` (recursively), oldest first. Non-record JSON files are skipped. A file that
    cannot be read as a record raises :class:`RecordLoadError`, or, given a ``skipped`` list, is left out and
    described there (one unreadable file among a folder's runs does not hide the others). ``folder`` may be a
    single record file, which must be readable."""
    root = Path(folder)
    if not root.exists():
        raise RecordLoadError(f"{root}: no such folder")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if p.is_file())
    out = []
    for p in paths:
        try:
            record = _read_record(p)
        except RecordLoadError as err:
            if skipped is None or root.is_file():
                raise
            skipped.append(str(err))
            continue
        if record is not None:
            out.append(record)
    return sorted(out, key=lambda r: r.started_at)


def _read_record(p: Path) -> Record | None:
    """The record in ``p``; None for JSON that is not a record; RecordLoadError for one that cannot be read."""
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: JSON and UTF-8 decoding errors
        raise RecordLoadError(f"{p}: not readable JSON: {shorten(str(err))}") from None
    if not isinstance(data, dict) or "schema_version" not in data or "cell" not in data:
        return None
    if data["schema_version"] != SCHEMA_VERSION:
        raise RecordLoadError(
            f"{p}: schema_version {quote(data['schema_version'])} (this rooflens reads {SCHEMA_VERSION})"
        )
    try:
        return Record.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise RecordLoadError(f"{p}: not a valid record: {where}: {shorten(first['msg'])}") from None


def record_row(r: Record) -> dict:
    """One flat row: identification columns, then ``<metric>`` medians and ``<metric>_p10/_p90/_cv``."""
    row = {
        "record_id": r.record_id,
        "run_id": r.experiment.get("run_id"),
        "experiment": r.experiment.get("name"),
        "status": r.status,
        "reason": r.reason.message if r.reason else None,
        "engine": r.cell.engine,
        "engine_label": r.cell.engine_label,
        "workload": r.cell.workload,
        "prompt_len": r.cell.prompt_len,
        "gen_len": r.cell.gen_len,
        "batch_size": r.cell.batch_size,
        "model": r.model.label if r.model else None,
        "weights": r.model.weights if r.model else None,
        "dtype": r.model.dtype if r.model else None,
        "device": r.device,
        "hardware": r.hardware_profile.get("name"),
        "started_at": r.started_at,
        "validity": r.validity.status,
        "validity_reasons": "; ".join(x.message for x in r.validity.reasons) or None,
    }
    for name, m in r.metrics.items():
        row[name] = m.median
        row[f"{name}_p10"] = m.p10
        row[f"{name}_p90"] = m.p90
        row[f"{name}_cv"] = m.cv
    e = r.energy
    row["tokens_per_joule"] = e.tokens_per_joule.value if e and e.tokens_per_joule else None
    row["energy_reason"] = e.reason if e else None
    row["peak_memory_bytes"] = r.memory.peak_bytes.value if r.memory else None
    for name, s in r.engine_stats.items():
        if isinstance(s.value, (int, float)):
            row[f"stat_{name}"] = s.value
    return row


def records_dataframe(folder: str | Path) -> pd.DataFrame:
    """All records under ``folder`` as a DataFrame, one row per cell."""
    return pd.DataFrame([record_row(r) for r in load_records(folder)])
