"""The engine registry: engine name -> engine class and its options type, and an entry's typed options.

Engines register by name with :func:`register`; third-party packages add theirs through the
``rooflens.engines`` entry-point group (``name = "package.module:EngineClass"``). Torch-free until an
engine class is asked for: the built-in engines' option schemas (:mod:`rooflens.engines.options`) are
found without importing the engines, so ``rooflens validate`` stays light.

:func:`engine_options` turns an entry's option mapping into its typed, frozen options object once: the
experiment check, the runner's memory pre-check and :func:`build_engine` all ask it and get the same
object back for the same entry, instead of validating the mapping again each.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rooflens.engines.options import BUILTIN_OPTIONS, EngineOptions, EngineOptionsError

if TYPE_CHECKING:
    from rooflens.config import EngineSpec
    from rooflens.engines.base import Engine
    from rooflens.models.loader import LoadedModel

ENTRY_POINT_GROUP = "rooflens.engines"

_REGISTRY: dict[str, type[Engine]] = {}
_LOADED = False
_BUILTIN_MODULES = (
    "rooflens.engines.hf",
    "rooflens.engines.speculative",
    "rooflens.engines.quantized",
    "rooflens.engines.early_exit",
    "rooflens.engines.mixed_precision",
    "rooflens.engines.llamacpp",
)
_ENTRY_POINT_ERRORS: dict[str, str] = {}


def register(cls: type[Engine]) -> type[Engine]:
    """Class decorator: make an engine available under ``cls.name``."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"engine name '{cls.name}' is already registered by {existing.__module__}.{existing.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            register(ep.load())
        except Exception as err:  # a broken plug-in must not break the built-in engines
            _ENTRY_POINT_ERRORS[ep.name] = f"{type(err).__name__}: {err}"


def registered_engines() -> dict[str, type[Engine]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def entry_point_errors() -> dict[str, str]:
    _load_all()
    return dict(_ENTRY_POINT_ERRORS)


def get_engine(name: str) -> type[Engine]:
    engines = registered_engines()
    if name not in engines:
        raise KeyError(f"unknown engine '{name}' (registered: {', '.join(engines) or 'none'})")
    return engines[name]


def build_engine(spec: EngineSpec, model: LoadedModel) -> Engine:
    """The engine of ``spec`` on ``model``, with the typed options :func:`engine_options` validated once."""
    return get_engine(spec.name)(engine_options(spec), model)


def describe_engine(cls: type[Engine]) -> dict[str, Any]:
    """What ``rooflens engines`` prints for one engine."""
    return {
        "name": cls.name,
        "summary": cls.summary,
        "devices": list(cls.devices),
        "packages": list(cls.requires_packages),
        "batch": cls.supports_batch,
        "options": {k: (f.description or str(f.annotation)) for k, f in cls.Options.model_fields.items()},
    }


def options_class(name: str) -> type[EngineOptions]:
    """The option schema of engine ``name``; KeyError (listing the registered engines) when unknown."""
    where = BUILTIN_OPTIONS.get(name)
    if where is not None:
        module, _, cls = where.partition(":")
        return getattr(importlib.import_module(module), cls)
    # a plug-in or test engine: load the registry
    return get_engine(name).Options


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
