"""What engines train for one model (early-exit predictors, precision schedulers), cached on disk.

Files live under ``$ROOFLENS_CACHE/<kind>/`` (default ``~/.cache/rooflens``), named by the model's label
and a hash of the model's fingerprint, its dtype, the artifact format's version and every setting that
shaped the training, and are written atomically. :class:`ArtifactKind` is one such kind: its directory,
its format version and the settings dataclass that keys it; the trainers add only their payload. Minutes
of training are never thrown away because the cache cannot be written (read-only, full): the artifact is
kept in this process's memory for the rest of the run, and :meth:`ArtifactKind.save` says why it was not
cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from rooflens.fsutil import atomic_output, cache_dir
from rooflens.text import safe_name

Progress = Callable[[str, int, int], None]
"""A trainer's progress callback: (stage, done, total)."""


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the config, every parameter's name, shape and dtype, and ~4k values sampled from each."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096]
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()


def artifact_path(kind: str, model: torch.nn.Module, label: str, settings: dict[str, Any]) -> Path:
    dtype = str(next(model.parameters()).dtype)
    key = json.dumps({"model": fingerprint(model), "dtype": dtype, **settings}, sort_keys=True, default=str)
    return cache_dir(kind) / f"{safe_name(label)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def save_atomic(blob: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a reader sees the old or the whole new file."""
    with atomic_output(path) as tmp:
        torch.save(blob, tmp)


Settings = TypeVar("Settings")  # a dataclass of the settings that shaped a training (JSON-able values)


@dataclass(frozen=True)
class ArtifactKind(Generic[Settings]):
    """One kind of trained artifact: files ``{"version", "settings", **payload}`` under ``cache_dir(name)``,
    keyed by the model, the format ``version`` and the settings. A file of another version is refused on load
    (callers train again)."""

    name: str  # cache subdirectory, e.g. "early-exit"
    version: int  # bump when the payload's layout changes
    settings_type: type[Settings]

    in_memory: ClassVar[dict[Path, dict[str, Any]]] = {}  # what the cache could not take, for this process

    def directory(self) -> Path:
        return cache_dir(self.name)

    def path(self, model: torch.nn.Module, label: str, settings: Settings) -> Path:
        return artifact_path(self.name, model, label, {"v": self.version, **asdict(settings)})  # type: ignore[call-overload]

    def cached(self, path: Path) -> bool:
        """Is there an artifact at ``path`` (on disk, or kept in memory because the disk refused it)?"""
        return path in self.in_memory or path.is_file()

    def save(self, path: Path, settings: Settings, payload: dict[str, Any]) -> str | None:
        """Write the artifact; where the cache cannot take it, keep it in memory and say why (None: saved)."""
        blob = {"version": self.version, "settings": asdict(settings), **payload}  # type: ignore[call-overload]
        try:
            save_atomic(blob, path)
        except OSError as err:
            self.in_memory[path] = blob
            return (
                f"{path} could not be written ({err.strerror or err}): kept in memory for this run, "
                "trained again next time"
            )
        return None

    def load(self, path: Path) -> tuple[Settings, dict[str, Any]]:
        """(settings, the whole file) on the CPU; ValueError for a file of another format version."""
        blob = self.in_memory.get(path) or torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("version") != self.version:
            raise ValueError(f"{path}: artifact version {blob.get('version')}, expected {self.version}")
        return self.settings_type(**blob["settings"]), blob
