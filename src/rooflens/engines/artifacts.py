"""What engines train for one model (early-exit predictors, precision schedulers), cached on disk.

Files live under ``$ROOFLENS_CACHE/<kind>/`` (default ``~/.cache/rooflens``), named by the model's label
and a hash of the model's fingerprint, its dtype and every setting that shaped the training, and are
written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from rooflens.fsutil import atomic_output, cache_dir
from rooflens.text import safe_name


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
