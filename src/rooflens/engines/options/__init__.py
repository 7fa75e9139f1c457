"""Engine option schemas, importable without torch.

The experiment schema and ``rooflens validate`` check every engine entry against its option
schema; loading the engines for that would import torch and transformers (seconds). So the
built-in engines' schemas live here (one module per engine, which owns its type), each engine module
imports its own from here, and only an engine that is not built in (a plug-in, a test engine) is looked
up in the full registry.

Validating an engine entry against its schema is :func:`rooflens.engines.registry.engine_options`'s job.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BUILTIN_OPTIONS", "EngineOptions", "EngineOptionsError", "compile_gemv_field"]


def compile_gemv_field() -> Any:
    """The ``compile_gemv`` option every compiled engine takes (rooflens.kernels.dense)."""
    return Field(
        default=True,
        description="when compile is on, on a CPU: the compiled graphs' fp32 linear layers call rooflens's AVX2 GEMV "
        "below 4 activation rows (torch's fp32 GEMV streams well below the memory's speed on some CPUs); false keeps "
        "torch's linear, as inductor compiles it",
    )


class EngineOptions(BaseModel):
    """Base of every engine's option schema: unknown options are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


BUILTIN_OPTIONS: dict[str, str] = {
    "hf": "rooflens.engines.options.hf:HFOptions",
    "quantized": "rooflens.engines.options.quantized:QuantizedOptions",
    "speculative": "rooflens.engines.options.speculative:SpeculativeOptions",
    "early_exit": "rooflens.engines.options.early_exit:EarlyExitOptions",
    "mixed_precision": "rooflens.engines.options.mixed_precision:MixedPrecisionOptions",
    "llamacpp": "rooflens.engines.options.llamacpp:LlamaCppOptions",
}
"""Built-in engine name -> its schema (``module:class``); a test checks it against the registry."""


class EngineOptionsError(ValueError):
    """An engine entry's options do not validate; :attr:`problems` lists them as ``field: message``."""

    def __init__(self, engine: str, problems: list[str]):
        super().__init__(f"engine '{engine}': " + "; ".join(problems))
        self.problems = problems
