"""A test-only engine that injects a known slowdown into another engine: ``slowed`` wraps any registered engine
and, at each token emission, keeps torch's threads computing for ``factor - 1`` times the time the emission
took, so the wrapped engine's TTFT and decode time grow by ``factor`` (its tokens are unchanged). The wait
is torch work on the same threads, not a sleep or a Python spin: an idle pool goes to sleep, and waking it
for the next token added as much again (a 1.111 injection read as -20 % on ~20 ms tokens). Never shipped:
the gate's detection trials (benchmarks/ab_trials.py) put this folder first on the ab workers' path
(``--src``)."""

from __future__ import annotations

import time
from typing import Any

import torch

from rooflens.engines.base import Engine, EngineOptions, TokenClock
from rooflens.engines.registry import build_engine


class _SlowClock:
    """Passes emissions on to the real clock after stretching each interval by ``factor``."""

    def __init__(self, clock: TokenClock, factor: float):
        self.clock, self.factor = clock, factor
        self.work = torch.ones(128, 128)  # one product: ~0.1 ms on two threads, the wait's granularity
        self.last = time.perf_counter()

    def tokens(self, n: int = 1) -> None:
        now = time.perf_counter()
        until = now + (self.factor - 1) * (now - self.last)
        while time.perf_counter() < until:
            torch.mm(self.work, self.work)
        self.last = time.perf_counter()
        self.clock.tokens(n)


class SlowedEngine(Engine):
    name = "slowed"
    summary = "test engine: another engine, each token interval stretched by a factor"

    class Options(EngineOptions):
        engine: dict[str, Any]
        factor: float = 1.1

    def prepare(self) -> None:
        from rooflens.config import EngineSpec

        self.inner = build_engine(EngineSpec.model_validate(self.options.engine), self.model)
        self.inner.prepare()

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        return self.inner.generate(input_ids, max_new_tokens, _SlowClock(clock, self.options.factor))

    def reset_stats(self) -> None:
        self.inner.reset_stats()

    def stats(self):
        return self.inner.stats()
