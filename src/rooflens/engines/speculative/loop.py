"""Our own speculative loop (``draft_model``, ``prompt_lookup``), batch 1::

    prefill the target on the prompt -> first token (emitted: TTFT is comparable to the baseline)
    repeat until max_new_tokens:
        draft     g = min(gamma, remaining - 1) tokens
        verify    [last token, d_1..d_g] in ONE target forward over its KV cache
        judge     keep a prefix of the draft + the target's own next token (:mod:`.acceptance`)
        commit    emit accepted + 1 tokens
        roll back both KV caches to the committed length

so exactly ``max_new_tokens`` tokens come out, and greedy output equals the target's greedy output token
for token (EOS is masked, so it never ends a run). The target's side (:class:`Target`) runs eagerly on a dynamic
cache (:class:`EagerTarget`) or, under ``compile: true``, compiled on a static cache (:mod:`.compiled`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rooflens.engines.base import TokenClock, synchronize
from rooflens.engines.decoding import crop_cache, last_logits, new_cache
from rooflens.engines.marks import engine_work
from rooflens.engines.speculative.acceptance import Verdict, judge
from rooflens.engines.speculative.chooser import TokenChooser
from rooflens.engines.speculative.proposers import Draft, Proposer
from rooflens.engines.speculative.stats import SpeculativeCounters


class Target(Protocol):
    """The target's side of the loop: its KV cache and its forwards (eager here, compiled in :mod:`.compiled`)."""

    def start(self, prompt_len: int, max_new_tokens: int) -> None:
        """A new generation, with an empty cache."""

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` (``[1, n]``) to the cache; the logits after the last one, ``[V]``."""

    def verify(self, block: torch.Tensor) -> torch.Tensor:
        """Append ``block`` (1-D: the last token and the draft) to the cache; its logits, ``[len(block), V]``."""

    def rollback(self, length: int) -> None:
        """Keep exactly the first ``length`` tokens in the cache."""


@dataclass
class EagerTarget:
    """The target's forwards as written, over a dynamic cache that a roll-back crops."""

    model: torch.nn.Module
    cache: Any = None

    def start(self, prompt_len: int, max_new_tokens: int) -> None:
        self.cache = new_cache(self.model)

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        return last_logits(self.model, tokens, self.cache)[0]

    def verify(self, block: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=block.view(1, -1), past_key_values=self.cache, use_cache=True).logits[0]

    def rollback(self, length: int) -> None:
        crop_cache(self.cache, length)


@dataclass
class Generation:
    """One generation in progress: the token buffer (the target's cache lives in its :class:`Target`)."""

    seq: torch.Tensor  # [1, prompt_len + max_new_tokens]: the prompt, then the tokens emitted so far
    prompt_len: int
    max_new_tokens: int
    length: int  # tokens in seq; the target's cache holds length - 1 of them

    @classmethod
    def start(cls, input_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        L = input_ids.shape[1]
        seq = torch.empty(1, L + max_new_tokens, dtype=input_ids.dtype, device=input_ids.device)
        seq[:, :L] = input_ids
        return cls(seq, L, max_new_tokens, L)

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - (self.length - self.prompt_len)

    @property
    def tokens(self) -> torch.Tensor:
        """``[1, length]``: the prompt and the tokens emitted so far."""
        return self.seq[:, : self.length]

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.seq[:, self.prompt_len :].clone()


class Stopwatch:
    """Phase times on ``device``: the device is synchronized at every reading."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mark = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self.mark = time.perf_counter()

    def split(self) -> float:
        """Seconds since the last start or split."""
        synchronize(self.device)
        now = time.perf_counter()
        elapsed, self.mark = now - self.mark, now
        return elapsed


def prefill(gen: Generation, target: Target, chooser: TokenChooser) -> None:
    """The prompt into the target's cache and the first token, exactly as plain decoding gives it."""
    first, _ = chooser.choose(target.prefill(gen.tokens))
    gen.seq[0, gen.length] = first[0]
    gen.length += 1


def verify(gen: Generation, target: Target, draft: Draft) -> torch.Tensor:
    """One target forward over ``[last token, draft tokens]``: its logits, ``[g + 1, V]``."""
    return target.verify(torch.cat([gen.seq[0, gen.length - 1 : gen.length], draft.tokens]))


def commit(gen: Generation, draft: Draft, verdict: Verdict) -> None:
    """Emit the accepted draft tokens and the target's next token."""
    n, at = verdict.accepted, gen.length
    gen.seq[0, at : at + n] = draft.tokens[:n]
    gen.seq[0, at + n] = verdict.next_token[0]
    gen.length += n + 1


def rollback_caches(gen: Generation, target: Target, proposer: Proposer) -> None:
    """Drop the rejected tokens' keys and values: both caches hold every committed token but the last."""
    target.rollback(gen.length - 1)
    proposer.rollback(gen.length - 1)


def next_gamma(gamma: int, drafted: int, accepted: int, gamma_max: int) -> int:
    """Adaptive gamma: one more after a fully accepted draft, one fewer otherwise, within 1..gamma_max."""
    if drafted == 0:
        return gamma
    return min(gamma + 1, gamma_max) if accepted == drafted else max(gamma - 1, 1)


@dataclass
class SpeculativeLoop:
    """The loop of the module docstring over a target, a proposer and a token chooser; counts into ``counters``."""

    target: Target
    proposer: Proposer
    chooser: TokenChooser
    counters: SpeculativeCounters
    gamma: int
    gamma_max: int | None = None  # set: adaptive gamma within 1..gamma_max

    def run(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        """``max_new_tokens`` new tokens after ``input_ids`` (``[1, L]``), ``[1, max_new_tokens]``."""
        gen = Generation.start(input_ids, max_new_tokens)
        self.target.start(gen.prompt_len, max_new_tokens)
        watch = Stopwatch(input_ids.device)
        watch.start()
        prefill(gen, self.target, self.chooser)
        self.counters.prefill_time += watch.split()
        self.counters.target_passes += 1
        clock.tokens(1)
        self.proposer.start()
        gamma = self.gamma
        while gen.remaining > 0:
            drafted, accepted = self.round(gen, min(gamma, gen.remaining - 1), watch)
            if self.gamma_max is not None:
                gamma = next_gamma(gamma, drafted, accepted, self.gamma_max)
            clock.tokens(accepted + 1)
        self.counters.generations += 1
        self.counters.generated += max_new_tokens
        return gen.new_tokens

    def round(self, gen: Generation, g: int, watch: Stopwatch) -> tuple[int, int]:
        """One draft/verify round of up to ``g`` draft tokens; (drafted, accepted)."""
        c = self.counters
        watch.start()
        with engine_work("draft"):
            draft = self.proposer.propose(gen.tokens, g, self.chooser)
        c.draft_passes += draft.forward_passes
        c.draft_time += watch.split()
        logits = verify(gen, self.target, draft)  # the target's own pass: its operators are the model's
        with engine_work("acceptance"):  # judging the draft, committing, rolling both caches back
            verdict = judge(logits, draft, self.chooser)
            commit(gen, draft, verdict)
            rollback_caches(gen, self.target, self.proposer)
        c.verify_time += watch.split()
        c.count_round(draft.size, verdict.accepted)
        return draft.size, verdict.accepted
