"""Options of the ``hf`` baseline engine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rooflens.engines.options import EngineOptions, compile_gemv_field


class HFOptions(EngineOptions):
    cache: Literal["dynamic", "static"] = Field(
        default="dynamic", description="KV cache: dynamic (default) or static (pre-allocated)"
    )
    compile: bool = Field(
        default=False,
        description="rooflens's compiled decode loop: a static cache, the prefill and the decode step compiled with torch.compile (needs cache: static)",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        default="reduce-overhead",
        description="torch.compile mode when compile is on (reduce-overhead: CUDA graphs on a GPU, inductor's default on a CPU)",
    )
    compile_gemv: bool = compile_gemv_field()

    @model_validator(mode="after")
    def _compile_needs_static(self) -> HFOptions:
        if self.compile and self.cache != "static":
            raise ValueError("compile: true needs cache: static (a dynamic cache recompiles every step)")
        return self
