"""Options of the ``speculative`` engine."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from rooflens.engines.options import EngineOptions, compile_gemv_field
from rooflens.models.catalog import shipped_config_names
from rooflens.text import quote

SELF_RE = re.compile(r"^self:(\d+)$")
SHAPE_PREFIX = "shape:"


class SpeculativeOptions(EngineOptions):
    proposer: Literal["draft_model", "prompt_lookup", "hf_assisted"] = Field(
        default="draft_model",
        description="draft_model (our loop, a draft LM), prompt_lookup (our loop, n-gram lookup), "
        "hf_assisted (transformers' assisted generation, see hf_mode)",
    )
    draft: str | None = Field(
        default=None,
        description="draft LM for draft_model / hf_mode draft_model|early_exit: 'self:<k>' (target's first k "
        "layers, shared weights), 'shape:<name>' (shipped config, random weights) or a HF id/path",
    )
    hf_mode: Literal["draft_model", "prompt_lookup", "early_exit"] | None = Field(
        default=None,
        description="for proposer hf_assisted: draft_model (assistant_model=), prompt_lookup "
        "(prompt_lookup_num_tokens=) or early_exit (assistant_early_exit=k from draft 'self:<k>')",
    )
    gamma: int = Field(default=4, ge=1, le=32, description="tokens drafted per verify pass (HF: num_assistant_tokens)")
    adaptive_gamma: bool = Field(
        default=False,
        description="our loop: gamma +1 after a fully accepted draft, -1 otherwise, within 1..gamma_max; "
        "hf_assisted: num_assistant_tokens_schedule='heuristic' (+2 / -1)",
    )
    gamma_max: int | None = Field(
        default=None, ge=1, le=64, description="upper bound of adaptive gamma (default max(16, gamma))"
    )
    max_ngram: int = Field(default=3, ge=1, le=16, description="prompt lookup: longest n-gram matched")
    min_ngram: int = Field(default=1, ge=1, le=16, description="prompt lookup: shortest n-gram matched (HF: always 1)")
    do_sample: bool = Field(
        default=False, description="speculative sampling (lossless in distribution) instead of greedy"
    )
    temperature: float = Field(default=1.0, gt=0.0, le=100.0, description="sampling temperature (do_sample only)")
    seed: int = Field(default=0, ge=0, description="seed of the sampling RNG and of a shape: draft's random weights")
    confidence_threshold: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="hf_assisted draft_model/early_exit: assistant_confidence_threshold (0 = always draft gamma tokens)",
    )
    draft_vocab: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="VocabTrim: the draft's LM head keeps only the N tokens the target emits most (ranked on the "
        "shipped corpus); drafts propose only those, the target still verifies with its full head (lossless). "
        "proposer draft_model only; default: the full vocabulary",
    )
    compile: bool = Field(
        default=False,
        description="our loop (draft_model, prompt_lookup): the target's prefill and its verify pass (at a fixed "
        "width, gamma+1 or gamma_max+1) and a draft model's steps compiled with torch.compile on static caches",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        default="reduce-overhead",
        description="torch.compile mode when compile is on (reduce-overhead: CUDA graphs on a GPU, inductor's default on a CPU)",
    )
    compile_gemv: bool = compile_gemv_field()

    @model_validator(mode="after")
    def _consistent(self) -> SpeculativeOptions:
        if self.proposer == "hf_assisted":
            if self.hf_mode is None:
                raise ValueError("proposer 'hf_assisted' needs hf_mode: draft_model, prompt_lookup or early_exit")
            mode = self.hf_mode
        else:
            if self.hf_mode is not None:
                raise ValueError(f"hf_mode applies to proposer 'hf_assisted' only (proposer is '{self.proposer}')")
            mode = self.proposer
        if mode in ("draft_model", "early_exit"):
            if not self.draft:
                raise ValueError(f"{mode} needs 'draft' ('self:<k>', 'shape:<name>' or a HF id/path)")
            if mode == "early_exit" and not SELF_RE.match(self.draft):
                raise ValueError(f"hf_mode early_exit needs draft 'self:<k>' (the exit layer), got {quote(self.draft)}")
            m = SELF_RE.match(self.draft)
            if self.draft.startswith("self:") and (m is None or int(m.group(1)) < 1):
                raise ValueError(f"draft {quote(self.draft)}: write self:<k> with an integer k >= 1")
            if self.draft.startswith(SHAPE_PREFIX) and self.draft[len(SHAPE_PREFIX) :] not in shipped_config_names():
                raise ValueError(
                    f"draft {quote(self.draft)}: a shape: draft names a shipped config "
                    f"(allowed: {', '.join('shape:' + n for n in shipped_config_names())})"
                )
        elif self.draft is not None:
            raise ValueError(f"'draft' does not apply to prompt lookup (got {quote(self.draft)})")
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"min_ngram ({self.min_ngram}) must be <= max_ngram ({self.max_ngram})")
        if self.proposer == "hf_assisted":
            if self.hf_mode == "prompt_lookup" and self.min_ngram != 1:
                raise ValueError("HF prompt lookup always falls back to 1-grams: min_ngram must be 1 with hf_assisted")
            if self.hf_mode == "prompt_lookup" and self.adaptive_gamma:
                raise ValueError("HF prompt lookup has no gamma schedule: adaptive_gamma is not supported there")
            if self.gamma_max is not None:
                raise ValueError("gamma_max applies to our own loop only (HF's heuristic schedule has no bound)")
            if self.compile:
                raise ValueError(
                    "compile: true applies to our own loop (proposer draft_model or prompt_lookup), not to proposer "
                    "'hf_assisted', whose forwards run inside transformers' assisted generation"
                )
        self._check_draft_vocab()
        if self.gamma_max is not None and self.gamma_max < self.gamma:
            raise ValueError(f"gamma_max ({self.gamma_max}) must be >= gamma ({self.gamma})")
        return self

    def _check_draft_vocab(self) -> None:
        """``draft_vocab`` trims the LM head of a draft that our own loop calls: none for prompt lookup, and HF
        assisted generation calls its assistant's (or its early exit's) full head inside transformers."""
        if self.draft_vocab is None:
            return
        if self.mode == "prompt_lookup":
            raise ValueError("draft_vocab trims a draft model's LM head; prompt lookup has none (remove draft_vocab)")
        if self.proposer == "hf_assisted":
            raise ValueError(
                f"draft_vocab applies to proposer 'draft_model' only: HF assisted generation (hf_mode {self.hf_mode}) "
                "runs the draft's full LM head inside transformers, so rooflens cannot trim it"
            )

    @property
    def mode(self) -> str:
        return self.hf_mode if self.proposer == "hf_assisted" else self.proposer  # type: ignore[return-value]

    @property
    def effective_gamma_max(self) -> int:
        return self.gamma_max if self.gamma_max is not None else max(16, self.gamma)
