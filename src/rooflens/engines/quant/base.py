"""What every quantization backend implements (:class:`QuantHandler`) and what they share.

A handler quantizes a model given plain values (:class:`~rooflens.engines.options.quantized.QuantSpec`, which
lives with the torch-free option schema and format tables it is resolved from); the engine around the
handlers lives in :mod:`rooflens.engines.quantized`.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from rooflens.engines.options.quantized import SKIP, FormatSpec, QuantSpec


class QuantHandler(ABC):
    """One quantization backend (gpt-fast's quantize.py pattern): its formats, whether a spec runs here, how it
    quantizes a model in place, how its storage is counted."""

    name: ClassVar[str]
    formats: ClassVar[dict[str, FormatSpec]]  # the first is the backend's default

    def library(self) -> str:
        """The quantization library and its version."""
        return f"{self.name} {lib_version(self.name)}"

    @abstractmethod
    def unavailable(self, spec: QuantSpec, device: torch.device, dtype: str | None = None) -> str | None:
        """Why ``spec`` cannot run on ``device`` with a model of ``dtype`` (None when it can)."""

    @abstractmethod
    def quantize(self, model: nn.Module, spec: QuantSpec, device: torch.device) -> dict[str, nn.Module]:
        """Quantize the Linear layers of ``model`` that ``spec`` selects, in place; returns the new layers by name."""

    @abstractmethod
    def storage_note(self, spec: QuantSpec) -> str:
        """How the storage bytes of the quantized layers are counted (for the record)."""

    def notes(
        self, spec: QuantSpec, model: nn.Module, device: torch.device, dtype: str, compiled: bool = False
    ) -> list[str]:
        """What the backend does here beyond its format, on the quantized ``model`` (``compiled``: torch.compile'd)."""
        return []


# ---------------------------------------------------------------------------- shared helpers


def lib_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def missing_package(package: str, what: str) -> str | None:
    """Why ``what`` cannot run when ``package`` is not installed, with the pip command (None when it is)."""
    if importlib.util.find_spec(package) is None:
        return f"{what} needs the Python package {package} (pip install {package})"
    return None


def skip_entry(name: str, skip: tuple[str, ...]) -> str | None:
    """The entry of ``skip`` that the layer ``name`` matches (itself or its last dotted parts), if any."""
    return next((s for s in skip if name == s or name.endswith("." + s)), None)


def linear_targets(model: nn.Module, skip: tuple[str, ...] = SKIP) -> list[tuple[str, nn.Linear]]:
    """The nn.Linear layers to quantize (all but those named in ``skip``, by default the LM head)."""
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and skip_entry(name, skip) is None
    ]


def set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule ``name`` of ``model`` by ``new``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def copy_for_quantization(model: nn.Module, skip: tuple[str, ...] = SKIP) -> nn.Module:
    """A deep copy of ``model`` that *shares* (does not copy) the weights of the Linear layers to quantize.

    Those weights are only read by the quantizers and replaced in the copy, so the copy never needs its
    own dense version of them: peak memory is the original + the quantized model, not twice the model.
    :func:`untie_from` afterwards clones anything still shared (a layer the quantizer left alone).
    """
    memo: dict[int, Any] = {id(lin.weight): lin.weight for _, lin in linear_targets(model, skip)}
    dup = copy.deepcopy(model, memo)
    # generate() caches a torch.compile'd __call__ bound to the *original* model: never reuse it
    for attr in ("_compiled_call", "_last_compile_config"):
        dup.__dict__.pop(attr, None)
    return dup


@torch.no_grad()
def untie_from(dup: nn.Module, original: nn.Module) -> int:
    """Clone every parameter/buffer of ``dup`` that is still the very tensor of ``original``; returns how many."""
    orig = {id(t) for t in original.parameters()} | {id(t) for t in original.buffers()}
    n = 0
    for mod in dup.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and id(p) in orig:
                mod._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                n += 1
        for name, b in list(mod._buffers.items()):
            if b is not None and id(b) in orig:
                mod._buffers[name] = b.clone()
                n += 1
    return n
