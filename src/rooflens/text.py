"""User text that ends up in file names and messages: one rule for each, shared by every layer."""

from __future__ import annotations

import re
from typing import Any

QUOTE_LIMIT = 80


def safe_name(text: str) -> str:
    """A file-name part: runs of other characters than ``[A-Za-z0-9_.-]`` become '-', no leading or
    trailing '-' or '.' (so never '.', '..' or a hidden file)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text``, cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(value: Any) -> str:
    """A bad value as a message quotes it: its repr, at most 80 characters."""
    return shorten(repr(value))


def first_line(exc: BaseException) -> str:
    """``TypeName: first line of the message`` -- an exception as a one-line reason."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
