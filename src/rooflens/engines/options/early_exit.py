"""Options of the ``early_exit`` engine (SpecEE-style), and the draft sources it accepts."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rooflens.engines.options import EngineOptions, compile_gemv_field
from rooflens.engines.options.speculative import SELF_RE

DRAFTS = ("head", "lookup", "head+lookup", "self:<k>", "eagle:<folder>")


def parse_draft(spec: str) -> tuple[str, int | None]:
    """``(kind, None)`` for head / lookup / head+lookup / eagle:<folder>, ``("self", k)``; ValueError naming what
    is allowed."""
    if spec in ("head", "lookup", "head+lookup"):
        return spec, None
    if spec.startswith("eagle:") and eagle_folder(spec):
        return "eagle", None
    m = SELF_RE.match(spec)
    if m and int(m.group(1)) >= 1:
        return "self", int(m.group(1))
    raise ValueError(
        f"draft {spec!r} does not exist (allowed: {', '.join(DRAFTS)} with an integer k >= 1 and a checkpoint folder)"
    )


def eagle_folder(spec: str) -> str:
    """The checkpoint of ``eagle:<folder>`` (a local folder, or a hub id already in the local cache)."""
    return spec.removeprefix("eagle:").strip()


class EarlyExitOptions(EngineOptions):
    draft: str = Field(default="head+lookup", description=f"where the k candidates come from: {', '.join(DRAFTS)}")
    k: int = Field(default=4, ge=1, le=64, description="candidate tokens per step (SpecEE: 4)")
    threshold: float | Literal["auto"] = Field(
        default="auto",
        description="exit when predictor probability > threshold; auto: calibrated once per trained model as the "
        "lowest threshold that keeps agreement >= calibration_target with the full model on held-out training "
        "prompts (exits off when none does); a number trades quality for speed explicitly",
    )
    calibration_target: float = Field(
        default=0.95,
        ge=0.0,
        le=1.0,
        description="threshold auto: agreement with the full model's greedy tokens the worst held-out training "
        "prompt must keep",
    )
    schedule: Literal["two_level", "all"] = Field(
        default="two_level", description="layers that run a predictor: two_level (offline + online) or all"
    )
    offline_layers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="offline layers: where exits concentrate in training (default layers/4)",
    )
    online_window: int = Field(default=5, ge=0, le=1024, description="online: recent tokens whose exit layers are used")
    online_radius: int = Field(default=2, ge=0, le=1024, description="online: layers within this distance of them")
    skipped_kv: Literal["deferred", "fill", "unwritten"] = Field(
        default="deferred",
        description="KV of the layers an exit skipped: deferred (they still run for the token, batched with the "
        "next token's pass: the cache stays the full model's), fill (projected from the exit hidden state, CALM) "
        "or unwritten (SpecEE)",
    )
    draft_vocab: int = Field(default=2048, ge=1, le=1_000_000, description="draft head's trimmed vocabulary")
    train_prompts: int = Field(default=16, ge=2, le=4096, description="training: prompts cut from the corpus")
    train_prompt_len: int = Field(default=64, ge=2, le=8192, description="training: prompt tokens")
    train_gen_len: int = Field(default=64, ge=1, le=8192, description="training: greedy tokens per prompt")
    draft_epochs: int = Field(default=20, ge=0, le=10_000, description="training: draft-head epochs")
    predictor_epochs: int = Field(default=300, ge=1, le=100_000, description="training: predictor epochs (full batch)")
    predictor_hidden: int = Field(default=128, ge=1, le=8192, description="predictor MLP width (SpecEE: 512)")
    seed: int = Field(default=0, ge=0, description="training seed")
    precheck: bool = Field(
        default=True,
        description="before a full LM head, check over the trimmed vocabulary (+ candidates) whether a candidate can be "
        "the full argmax at all; exact up to rounding in near ties",
    )
    audit: bool = Field(default=True, description="stats(): audit exits against the full-depth model, run the oracle")
    compile: bool = Field(
        default=False,
        description="static caches and torch.compile: the full-depth prefill, one decoder-layer step reused for every "
        "layer, the K/V fill, the predictors, the heads and the draft head compiled; the per-token control flow (exit "
        "tests, verification, the deferred walk) stays in Python",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        default="reduce-overhead",
        description="torch.compile mode when compile is on (reduce-overhead: CUDA graphs on a GPU, inductor's default on a CPU)",
    )
    compile_gemv: bool = compile_gemv_field()

    train_fields: ClassVar[tuple[str, ...]] = (
        "draft",
        "k",
        "draft_vocab",
        "train_prompts",
        "train_prompt_len",
        "train_gen_len",
        "draft_epochs",
        "predictor_epochs",
        "predictor_hidden",
        "seed",
    )
    """The options that shape the trained draft head and predictors (and key their cache file): what
    ``TrainSettings.from_options`` reads and ``rooflens train early-exit`` sets."""

    @field_validator("threshold")
    @classmethod
    def _threshold_range(cls, value: float | str) -> float | str:
        if value != "auto" and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"threshold {value} is outside [0, 1] (or use auto)")
        return value

    @field_validator("draft")
    @classmethod
    def _known_draft(cls, value: str) -> str:
        parse_draft(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EarlyExitOptions:
        kind, _ = parse_draft(self.draft)
        if kind in ("head", "head+lookup") and self.k > self.draft_vocab:
            raise ValueError(
                f"k ({self.k}) is larger than the draft head's trimmed vocabulary (draft_vocab {self.draft_vocab})"
            )
        return self
