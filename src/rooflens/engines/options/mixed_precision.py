"""Options of the ``mixed_precision`` engine (PMPD-style progressive decoding precision)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from rooflens.engines.options import EngineOptions, compile_gemv_field
from rooflens.lowbit_rules import KERNELS, check_ladder, describe_kernels

CONFIDENCE_OPTIONS = ("confidence_k", "confidence_warmup", "confidence_window")
QUALITY_BUDGET_DEFAULT = 0.05  # quality_budget of the static search when the options leave it unset
CONFIDENCE_DEFAULTS = {"confidence_k": 1.0, "confidence_warmup": 10, "confidence_window": 1}


class MixedPrecisionOptions(EngineOptions):
    ladder: list[int] = Field(default=[8, 4], description="decode precisions, strictly decreasing, each of 8, 4, 3, 2")
    group_size: Literal[32, 64, 128] = Field(default=64, description="rooflens format group size")
    symmetric: bool = Field(default=True, description="symmetric codes (no zero points)")
    quantizer: Literal["rtn", "hqq"] = Field(
        default="rtn",
        description="how each rung's scales, zero points and codes are chosen (same storage either way): rtn "
        "(round-to-nearest, min-max scales; the default: fast, and hqq lowers SmolLM2's weight error only ~3 % at 8 "
        "bits and ~7 % at 4) or hqq (Half-Quadratic Quantization, calibration-free: each group's scale and zero point "
        "fitted to an lp-norm error; ~19 % lower weight error at 3 bits, ~45 % at 2; ~4-5x RTN's time at load)",
    )
    lm_head: bool = Field(default=True, description="quantize the LM head too (a tied embedding keeps its own table)")
    prefill_bits: int | Literal["original"] | None = Field(
        default=None,
        description="prefill precision: bits >= the top rung, or 'original' (unquantized); default the top rung",
    )
    scheduler: Literal["static", "confidence", "learned"] = Field(default="static", description="when to step down")
    switch_steps: list[int] | None = Field(
        default=None,
        description="static: decode step of each step-down (cumulative); default: found offline (rooflens train mixed-precision)",
    )
    quality_budget: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=f"static search: allowed mean ROUGE-L drop below the all-top-rung run (default {QUALITY_BUDGET_DEFAULT})",
    )
    confidence_k: float | None = Field(
        default=None,
        ge=0.0,
        le=10.0,
        description=f"confidence: mean + k*std (default {CONFIDENCE_DEFAULTS['confidence_k']:g})",
    )
    confidence_warmup: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description=f"confidence: scores before a switch (default {CONFIDENCE_DEFAULTS['confidence_warmup']})",
    )
    confidence_window: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description=f"confidence: consecutive high scores (default {CONFIDENCE_DEFAULTS['confidence_window']})",
    )
    train_prompts: int = Field(default=12, ge=2, le=4096, description="offline tuning: corpus prompts")
    train_prompt_len: int = Field(default=64, ge=2, le=8192, description="offline tuning: prompt tokens")
    train_gen_len: int = Field(default=64, ge=3, le=8192, description="offline tuning: tokens per run")
    classifier_epochs: int = Field(default=200, ge=1, le=100_000, description="learned: classifier epochs")
    train_if_missing: bool = Field(
        default=True, description="tune in prepare() when the cache has nothing for these settings"
    )
    seed: int = Field(default=0, ge=0)
    kernel: Literal[KERNELS] = Field(default="auto", description=f"LowBitLinear forward path: {describe_kernels()}")
    compile: bool = Field(
        default=False,
        description="rooflens's compiled decode loop (engines/compiled.py): a static cache, the prefill and the "
        "decode step compiled with torch.compile, one graph per rung; the scheduler's control flow stays in Python",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        default="reduce-overhead", description="torch.compile mode when compile is on (CUDA graphs only on a GPU)"
    )
    compile_gemv: bool = compile_gemv_field()

    train_fields: ClassVar[tuple[str, ...]] = (
        "ladder",
        "group_size",
        "symmetric",
        "quantizer",
        "lm_head",
        "prefill_bits",
        "quality_budget",
        "train_prompts",
        "train_prompt_len",
        "train_gen_len",
        "classifier_epochs",
        "seed",
    )
    """The options that shape the offline tuning (and key its cache file): what ``TuneSettings.from_options``
    reads and ``rooflens train mixed-precision`` sets."""

    @field_validator("ladder")
    @classmethod
    def _ladder(cls, value: list[int]) -> list[int]:
        return list(check_ladder(value))

    @model_validator(mode="after")
    def _consistent(self) -> MixedPrecisionOptions:
        top = self.ladder[0]
        if isinstance(self.prefill_bits, int) and (self.prefill_bits not in (8, 4, 3, 2) or self.prefill_bits < top):
            raise ValueError(
                f"prefill_bits {self.prefill_bits}: allowed 8, 4, 3, 2 at or above the top rung ({top}), or 'original'"
            )
        if self.scheduler != "static":
            for name in ("switch_steps", "quality_budget"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies to scheduler 'static', not '{self.scheduler}'")
        if self.scheduler != "confidence":
            for name in CONFIDENCE_OPTIONS:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies to scheduler 'confidence', not '{self.scheduler}'")
        if self.switch_steps is not None:
            if len(self.switch_steps) != len(self.ladder) - 1:
                raise ValueError(
                    f"switch_steps needs {len(self.ladder) - 1} value(s) (one per step-down of {self.ladder})"
                )
            if any(s < 0 for s in self.switch_steps) or self.switch_steps != sorted(self.switch_steps):
                raise ValueError(f"switch_steps {self.switch_steps}: non-negative and non-decreasing")
        if len(self.ladder) == 1 and self.scheduler != "static":
            raise ValueError(f"a one-rung ladder never switches: scheduler '{self.scheduler}' needs two rungs or more")
        return self

    @property
    def resolved_prefill_bits(self) -> Optional[int]:
        if self.prefill_bits == "original":
            return None
        return self.ladder[0] if self.prefill_bits is None else int(self.prefill_bits)

    @property
    def precisions(self) -> tuple[int, ...]:
        """Every quantized precision the layers hold: the ladder and a prefill rung above it."""
        extra = {self.resolved_prefill_bits} - {None}
        return tuple(sorted(set(self.ladder) | extra, reverse=True))  # type: ignore[arg-type]

    @property
    def needs_tuning(self) -> bool:
        return len(self.ladder) > 1 and (
            self.scheduler == "learned" or (self.scheduler == "static" and self.switch_steps is None)
        )

    @property
    def resolved_quality_budget(self) -> float:
        return QUALITY_BUDGET_DEFAULT if self.quality_budget is None else self.quality_budget

    def confidence_option(self, name: str) -> float | int:
        """A ``confidence_*`` option, or its default when unset."""
        value = getattr(self, name)
        return CONFIDENCE_DEFAULTS[name] if value is None else value
