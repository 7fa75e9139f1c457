"""Where rooflens keeps what it derives once per machine: ``$ROOFLENS_CACHE`` (default ``~/.cache/rooflens``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str = "") -> Path:
    """``$ROOFLENS_CACHE/<kind>`` (converted models, trained predictors, compiled kernels, ...)."""
    root = Path(os.environ.get("ROOFLENS_CACHE", Path.home() / ".cache" / "rooflens"))
    return root / kind if kind else root
