"""Prompt sets from data sets, through the ``datasets`` library: ``dataset:SOURCE[:split[:field[:reference]]]``.

``SOURCE`` is a local folder written by ``Dataset.save_to_disk``, a data file or folder of them (JSON Lines,
JSON, CSV, Parquet), or a hub id (``abisee/cnn_dailymail``; it needs the network or a copy in the local cache).
A path starts with ``/``, ``.`` or ``~``. ``split`` defaults to the only split, else ``test``, else ``train``;
``field`` is the column of the prompt text (default ``prompt``, else a chat ``messages`` column) and
``reference`` the column of the reference answer (default ``reference`` when there is one). An ``id`` column
names the items; else their row number. The first :data:`MAX_ROWS` rows are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

MAX_ROWS = 10_000
PREFIX = "dataset:"
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DatasetSourceError(ValueError):
    """A data set that cannot be read, with what is allowed."""


@dataclass(frozen=True)
class DatasetSpec:
    source: str
    split: str | None = None
    field: str | None = None
    reference: str | None = None

    @property
    def is_path(self) -> bool:
        return self.source.startswith(("/", ".", "~"))


def parse_spec(prompt: str) -> DatasetSpec:
    """The parts of ``dataset:SOURCE[:split[:field[:reference]]]`` (empty parts mean the default)."""
    parts = prompt[len(PREFIX) :].split(":")
    if not parts[0].strip() or len(parts) > 4:
        raise DatasetSourceError(f"{prompt!r}: expected dataset:SOURCE[:split[:field[:reference]]]")
    parts += [""] * (4 - len(parts))
    return DatasetSpec(parts[0].strip(), *(p.strip() or None for p in parts[1:]))


def _load_any(spec: DatasetSpec) -> Any:
    """The data set or dict of splits ``spec.source`` names (``datasets`` imported here: it is optional)."""
    try:
        import datasets
    except ImportError:
        raise DatasetSourceError("dataset: prompts need the datasets package (pip install 'rooflens[data]')") from None
    datasets.disable_progress_bars()
    if not spec.is_path:
        try:
            return datasets.load_dataset(spec.source, split=spec.split)
        except Exception as err:  # the hub unreachable, an unknown id or split: one line that says which
            reason = str(err).splitlines()[0][:300]
            raise DatasetSourceError(
                f"data set {spec.source!r} could not be loaded from the Hugging Face hub or its local cache "
                f"({type(err).__name__}: {reason}); without the network, give a local save_to_disk folder or data "
                "file (a path starting with /, . or ~)"
            ) from None
    path = Path(spec.source).expanduser()
    if not path.exists():
        raise DatasetSourceError(f"data set {str(path)!r}: no such file or folder")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return datasets.load_from_disk(str(path))
    builder = _FILE_BUILDERS.get(path.suffix.lower()) if path.is_file() else None
    if path.is_file() and builder is None:
        raise DatasetSourceError(f"data set file {str(path)!r}: allowed formats: {', '.join(_FILE_BUILDERS)}")
    try:
        return datasets.load_dataset(builder, data_files=str(path)) if builder else datasets.load_dataset(str(path))
    except Exception as err:
        raise DatasetSourceError(f"data set {str(path)!r} cannot be read ({type(err).__name__}: {err})") from None


def _split(data: Any, spec: DatasetSpec) -> Any:
    """One split of ``data`` (a Dataset already is one)."""
    if not hasattr(data, "keys"):
        return data
    names = list(data.keys())
    if spec.split is not None:
        if spec.split not in names:
            raise DatasetSourceError(
                f"data set {spec.source!r} has no split {spec.split!r} (splits: {', '.join(names)})"
            )
        return data[spec.split]
    chosen = names[0] if len(names) == 1 else next((n for n in ("test", "train") if n in names), None)
    if chosen is None:
        raise DatasetSourceError(f"data set {spec.source!r}: name a split (splits: {', '.join(names)})")
    return data[chosen]


def _columns(columns: list[str], spec: DatasetSpec) -> tuple[str, str, str | None]:
    """(prompt column, its kind: prompt or messages, reference column or None), checked against ``columns``."""
    have = ", ".join(columns)
    for name in (spec.field, spec.reference):
        if name is not None and name not in columns:
            raise DatasetSourceError(f"data set {spec.source!r} has no field {name!r} (fields: {have})")
    if spec.field is not None:
        field = spec.field
    elif "prompt" in columns or "messages" in columns:
        field = "prompt" if "prompt" in columns else "messages"
    else:
        raise DatasetSourceError(f"data set {spec.source!r}: name the prompt field (fields: {have})")
    reference = spec.reference or ("reference" if "reference" in columns else None)
    return field, "messages" if field == "messages" else "prompt", reference


@cache
def dataset_rows(prompt: str) -> tuple[dict[str, Any], ...]:
    """The rows of a workload's ``dataset:`` prompt as prompt-set objects (``prompt`` or ``messages``,
    ``reference``, ``id``), read once per process."""
    spec = parse_spec(prompt)
    table = _split(_load_any(spec), spec)
    field, kind, reference = _columns(list(table.column_names), spec)
    rows = []
    for n, row in enumerate(table.select(range(min(len(table), MAX_ROWS)))):
        obj: dict[str, Any] = {kind: row[field], "id": str(row["id"]) if "id" in row else n}
        answer = row[reference] if reference is not None else None
        if answer is not None and str(answer).strip():  # a row without an answer is still a prompt
            obj["reference"] = str(answer)
        rows.append(obj)
    if not rows:
        raise DatasetSourceError(f"data set {spec.source!r}: no rows")
    return tuple(rows)
