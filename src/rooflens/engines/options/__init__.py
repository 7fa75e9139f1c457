"""Engine option schemas, importable without torch.

The experiment schema and ``rooflens validate`` check every engine entry against its option
schema; loading the engines for that would import torch and transformers (seconds). So the
built-in engines' schemas live here, each engine module imports its own from here, and only an
engine that is not built in (a plug-in, a test engine) is looked up in the full registry.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from rooflens.config import EngineSpec

__all__ = ["BUILTIN_OPTIONS", "EngineOptions", "options_class", "validate_engine_options"]


class EngineOptions(BaseModel):
    """Base of every engine's option schema: unknown options are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


BUILTIN_OPTIONS: dict[str, str] = {
    "hf": "rooflens.engines.options.hf:HFOptions",
    "quantized": "rooflens.engines.options.quantized:QuantizedOptions",
    "speculative": "rooflens.engines.options.speculative:SpeculativeOptions",
    "early_exit": "rooflens.engines.options.early_exit:EarlyExitOptions",
    "mixed_precision": "rooflens.engines.options.mixed_precision:MixedPrecisionOptions",
}
"""Built-in engine name -> its schema (``module:class``); a test checks it against the registry."""


def options_class(name: str) -> type[EngineOptions]:
    """The option schema of engine ``name``; KeyError (listing the registered engines) when unknown."""
    where = BUILTIN_OPTIONS.get(name)
    if where is not None:
        module, _, cls = where.partition(":")
        return getattr(importlib.import_module(module), cls)
    from rooflens.engines.base import get_engine  # a plug-in or test engine: load the registry

    return get_engine(name).Options


def validate_engine_options(spec: EngineSpec) -> list[str]:
    """Problems with an engine entry, as ``field: message`` strings (empty when valid)."""
    try:
        schema = options_class(spec.name)
    except KeyError as err:
        return [f"name: {err.args[0]}"]
    try:
        schema.model_validate(spec.options)
    except ValidationError as err:
        allowed = ", ".join(schema.model_fields) or "none"
        out = []
        for e in err.errors():
            where = ".".join(str(p) for p in ("options", *e["loc"]))
            if e["type"] == "extra_forbidden":
                out.append(f"{where}: unknown option for engine '{spec.name}' (allowed: {allowed})")
            else:
                out.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        return out
    return []
