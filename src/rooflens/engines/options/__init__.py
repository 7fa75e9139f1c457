"""Engine option schemas, importable without torch, and the one place an engine entry's options are validated.

The experiment schema and ``rooflens validate`` check every engine entry against its option
schema; loading the engines for that would import torch and transformers (seconds). So the
built-in engines' schemas live here (one module per engine, which owns its type), each engine module
imports its own from here, and only an engine that is not built in (a plug-in, a test engine) is looked
up in the full registry.

:func:`engine_options` turns an entry's option mapping into its typed, frozen options object once: the
experiment check, the runner's memory pre-check and :func:`rooflens.engines.base.build_engine` all ask it
and get the same object back for the same entry, instead of validating the mapping again each.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from rooflens.config import EngineSpec

__all__ = [
    "BUILTIN_OPTIONS",
    "EngineOptions",
    "EngineOptionsError",
    "engine_options",
    "options_class",
    "validate_engine_options",
]


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


class EngineOptionsError(ValueError):
    """An engine entry's options do not validate; :attr:`problems` lists them as ``field: message``."""

    def __init__(self, engine: str, problems: list[str]):
        super().__init__(f"engine '{engine}': " + "; ".join(problems))
        self.problems = problems


_VALIDATED_MAX = 256
_validated: OrderedDict[tuple[type[EngineOptions], str], EngineOptions] = OrderedDict()
_validated_lock = threading.Lock()


def _content_key(options: dict[str, Any]) -> str | None:
    """The option mapping as canonical JSON (a value JSON cannot hold is tagged with its type); None when it
    cannot be written at all (non-string keys, a cycle): such a mapping is validated every time."""
    try:
        return json.dumps(options, sort_keys=True, default=lambda v: {"<python>": f"{type(v).__qualname__} {v!r}"})
    except (TypeError, ValueError):
        return None


def engine_options(spec: EngineSpec) -> EngineOptions:
    """The typed options of an engine entry, validated once per distinct entry (later calls with the same
    engine and option mapping return the same frozen object). KeyError for an unknown engine,
    :class:`EngineOptionsError` listing every problem for invalid options."""
    schema = options_class(spec.name)
    key = _content_key(spec.options)
    if key is not None:
        with _validated_lock:
            known = _validated.get((schema, key))
            if known is not None:
                _validated.move_to_end((schema, key))
                return known
    try:
        options = schema.model_validate(spec.options)
    except ValidationError as err:
        raise EngineOptionsError(spec.name, _problems(err, schema, spec.name)) from None
    if key is not None:
        with _validated_lock:
            _validated[(schema, key)] = options
            while len(_validated) > _VALIDATED_MAX:
                _validated.popitem(last=False)
    return options


def _problems(err: ValidationError, schema: type[EngineOptions], engine: str) -> list[str]:
    allowed = ", ".join(schema.model_fields) or "none"
    out = []
    for e in err.errors():
        where = ".".join(str(p) for p in ("options", *e["loc"]))
        if e["type"] == "extra_forbidden":
            out.append(f"{where}: unknown option for engine '{engine}' (allowed: {allowed})")
        else:
            out.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return out


def validate_engine_options(spec: EngineSpec) -> list[str]:
    """Problems with an engine entry, as ``field: message`` strings (empty when valid); a valid entry's typed
    options are kept for :func:`engine_options`."""
    try:
        engine_options(spec)
    except KeyError as err:
        return [f"name: {err.args[0]}"]
    except EngineOptionsError as err:
        return err.problems
    return []
