"""The engine registry: built-ins, third-party entry points, and broken plug-ins."""

import importlib
import importlib.metadata

import pytest

from rooflens.engines import base, registry


class PluginEngine(base.Engine):
    name = "plugin-engine"
    summary = "from an entry point"

    def generate(self, input_ids, max_new_tokens, clock):
        raise AssertionError("not called")


class FakeEntryPoint:
    def __init__(self, name, target):
        self.name, self.target = name, target

    def load(self):
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_ENTRY_POINT_ERRORS", {})
    monkeypatch.setattr(registry, "_LOADED", False)
    import rooflens.engines.hf as hf

    # the built-in module is already imported: re-register its class as its import would
    monkeypatch.setattr(registry, "_BUILTIN_MODULES", ())
    registry.register(hf.HFEngine)


def test_entry_point_engines_register(fresh_registry, monkeypatch):
    eps = [FakeEntryPoint("plugin-engine", PluginEngine), FakeEntryPoint("broken", ImportError("no module named x"))]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps if group == "rooflens.engines" else [])
    engines = registry.registered_engines()
    assert set(engines) == {"hf", "plugin-engine"}
    assert registry.entry_point_errors() == {"broken": "ImportError: no module named x"}


def test_duplicate_names_are_refused(fresh_registry):
    class Impostor(PluginEngine):
        name = "hf"

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Impostor)


def test_unavailable_reasons():
    import torch

    class NeedsLib(PluginEngine):
        name = "needs-lib"
        requires_packages = ("surely_not_installed_pkg",)

    assert "pip install surely_not_installed_pkg" in NeedsLib.unavailable_reason(torch.device("cpu"))

    class GpuOnly(PluginEngine):
        name = "gpu-only"
        devices = ("cuda",)

    assert GpuOnly.unavailable_reason(torch.device("cpu")) == "engine 'gpu-only' runs on cuda, not cpu"
    assert PluginEngine.unavailable_reason(torch.device("cpu")) is None


def test_torch_free_option_schemas_are_the_engines_own():
    """`validate` checks built-in engines against engines.options without loading them: the same classes."""
    from rooflens.engines.options import BUILTIN_OPTIONS
    from rooflens.engines.registry import options_class

    builtin = {}  # from the modules themselves: other tests may leave test engines in the registry
    for module in registry._BUILTIN_MODULES:
        for obj in vars(importlib.import_module(module)).values():
            if isinstance(obj, type) and issubclass(obj, base.Engine) and obj.__module__.startswith(module):
                builtin[obj.name] = obj
    assert set(BUILTIN_OPTIONS) == set(builtin)
    for name, cls in builtin.items():
        assert options_class(name) is cls.Options
