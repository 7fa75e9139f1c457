"""What every record carries about where it was measured."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

import rooflens

LIBRARIES = (
    "torch",
    "transformers",
    "accelerate",
    "gguf",
    "safetensors",
    "tokenizers",
    "triton",
    "torchao",
    "optimum-quanto",
    "bitsandbytes",
    "numpy",
    "pandas",
    "pydantic",
    "nvidia-ml-py",
)


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, Any]:
    """rooflens's own commit when it runs from a checkout (editable install); None otherwise."""
    src = Path(rooflens.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=src, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def capture_environment(hardware: dict[str, Any]) -> dict[str, Any]:
    """Environment of this process; ``hardware`` is the detected hardware (see roofline.hardware)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "rooflens_version": rooflens.__version__,
        "rooflens_git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
        "torch_threads": torch.get_num_threads(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "loadavg_1m_at_start": load[0] if load else None,
        "libraries": library_versions(),
        "hardware": hardware,
        "captured_at": now_iso(),
    }
