"""What the early_exit engine keeps while it decodes: one generation's state, one decode step's exit
attempt, the counters its statistics are computed from, and the lap timer that splits decode time by phase."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from rooflens.engines.base import synchronize

PHASES = ("draft", "layers", "predictors", "exit_head", "final_head", "kv_fill")
AUDIT_GENERATIONS = 4  # the last generations kept for the audit in stats()


@dataclass
class Candidates:
    """The k tokens a decode step may exit with, and what the exit test reads of them."""

    ids: torch.Tensor  # [k] token ids
    head_rows: torch.Tensor  # [k, H] their LM-head rows (the predictors' features)
    id_set: set[int]
    eos_slots: list[int]  # positions of EOS ids in ``ids`` (never the pre-check's best candidate)

    @classmethod
    def of(cls, ids: torch.Tensor, head_weight: torch.Tensor, eos: set[int]) -> Candidates:
        listed = ids.tolist()
        return cls(ids, head_weight[ids], set(listed), [j for j, t in enumerate(listed) if t in eos])


@dataclass
class ExitAttempt:
    """One decode step walking the layers: its candidates (``self:k``: set after layer k-1), the predictor calls
    made and, once a layer's exit is verified, where and with which token it exits."""

    candidates: Candidates | None
    prev_features: torch.Tensor | None = None  # the previous checked layer's features (exit_features' state)
    calls: list[tuple[int, bool]] = field(default_factory=list)  # (layer, predictor fired)
    exit_layer: int | None = None
    exit_token: int | None = None
    exit_normed: torch.Tensor | None = None  # [1, 1, H] the exit layer's final-normed hidden state


@dataclass
class GenerationState:
    """One generate() call: the token buffer, the caches and what the next step's draft and schedule read."""

    tokens: torch.Tensor  # [1, P + N]: the prompt, then the output as it is produced
    prompt_len: int
    length: int  # tokens in ``tokens`` so far; the target's cache holds length - 1 of them
    cache: Any  # the target's KV cache
    draft_cache: Any  # the draft head's (None without a draft head)
    last_normed: torch.Tensor  # [1, 1, H] final-normed hidden state that produced the last token (draft input)
    recent_exits: deque  # last layer run by the recent steps (the online schedule)
    calls_log: list[list[tuple[int, bool]]] = field(default_factory=list)  # per decode step
    exits_log: list[int | None] = field(default_factory=list)  # per decode step: exit layer or None (full depth)
    pending: Any = None  # skipped_kv deferred: the exited tokens' rows still owed their deeper layers (Pending)

    @property
    def last_token(self) -> torch.Tensor:
        return self.tokens[:, self.length - 1 : self.length]


@dataclass
class KeptGeneration:
    """A finished generation, kept on the CPU for the audit."""

    prompt: torch.Tensor
    tokens: torch.Tensor
    calls: list[list[tuple[int, bool]]]  # per decode step: (layer, predictor fired)
    exits: list[int | None]  # per decode step: exit layer or None (full depth)


@dataclass
class ExitCounters:
    """Totals since reset_stats, from which stats() and roofline_hints() are computed."""

    generations: int = 0
    steps: int = 0  # decode steps (the prefill's token excluded)
    exits: int = 0
    layers_run: int = 0
    predictor_calls: int = 0
    fired: int = 0  # predictor calls above the threshold
    precheck_rejects: int = 0  # of those, rejected by the pre-check (no full LM head)
    exit_heads: int = 0  # full-vocabulary LM heads run to verify an exit
    catch_up_layers: int = 0  # skipped_kv deferred: layer passes run after a step's exit (owed rows, invariant)
    layers_hist: list[int] = field(default_factory=list)  # [n] = decode steps that ran n layers
    phase_time: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))  # decode seconds
    prefill_time: float = 0.0
    kept: deque[KeptGeneration] = field(default_factory=lambda: deque(maxlen=AUDIT_GENERATIONS))


class PhaseLap:
    """Adds the time since the previous lap to a phase (device synchronised on CUDA)."""

    def __init__(self, device: torch.device, into: dict[str, float]):
        self.device, self.into = device, into
        synchronize(device)
        self.t = time.perf_counter()

    def __call__(self, phase: str) -> None:
        synchronize(self.device)
        t = time.perf_counter()
        self.into[phase] = self.into.get(phase, 0.0) + t - self.t
        self.t = t

    def restart(self) -> None:
        """Time from now on (what passed since the last lap belongs to no phase: the token clock's own sync)."""
        self.t = time.perf_counter()
