"""Device strings -- ``auto``, ``cpu``, ``cuda``, ``cuda:N`` -- parsed in this one place.

:func:`parse_device` is pure (experiments and options are validated with it); :func:`resolve_device` and
:func:`pinned_device` ask torch (imported when called) which device a string means on this machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

#: The whole grammar; N has no leading zeros and at most 4 digits.
DEVICE_RE = re.compile(r"auto|cpu|cuda|cuda:(0|[1-9][0-9]{0,3})")
#: The grammar as messages spell it.
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (N = 0, 1, ...)"

DeviceType = Literal["auto", "cpu", "cuda"]


class DeviceSpecError(ValueError):
    """A string that is not a device string."""


class DeviceUnavailableError(RuntimeError):
    """A well-formed device string naming a device this machine does not have."""


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed device string; ``index`` only for ``cuda:N`` (a bare ``cuda`` means torch's current GPU)."""

    type: DeviceType
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def parse_device(text: str) -> DeviceSpec:
    """``"cuda:1"`` -> ``DeviceSpec("cuda", 1)``; raises :class:`DeviceSpecError` for anything else than
    ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (exactly: no spaces, lower case)."""
    match = DEVICE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise DeviceSpecError(f"unknown device {text!r}; use one of {DEVICE_CHOICES}")
    if match.group(1) is not None:
        return DeviceSpec("cuda", int(match.group(1)))
    kind: DeviceType = text  # type: ignore[assignment]  # the regex left only these three
    return DeviceSpec(kind)


def resolve_device(device: str | DeviceSpec) -> torch.device:
    """The torch device ``device`` means here: ``auto`` is ``cuda`` when CUDA is available, else ``cpu``.

    ``cuda`` stays without an index (torch's current GPU). Raises :class:`DeviceSpecError` for a malformed
    string and :class:`DeviceUnavailableError` for a GPU this machine does not have.
    """
    import torch

    spec = device if isinstance(device, DeviceSpec) else parse_device(device)
    if spec.type == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no usable GPU/driver"
        raise DeviceUnavailableError(
            f"device {str(spec)!r} requested but CUDA is not available ({why}, torch {torch.__version__})"
        )
    count = torch.cuda.device_count()
    if spec.index is not None and spec.index >= count:
        raise DeviceUnavailableError(f"device {str(spec)!r} requested but only {count} CUDA device(s) are visible")
    return torch.device("cuda", spec.index)


def pinned_device(device: str | DeviceSpec | torch.device) -> torch.device:
    """:func:`resolve_device` (a torch device is taken as is), with a bare ``cuda`` pinned to the current GPU's
    index: for what is kept per physical device (probes, dispatch tables)."""
    import torch

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev
