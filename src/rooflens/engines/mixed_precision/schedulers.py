"""PMPD's precision schedulers: after each decode step, the precision of the next one.

One interface, :meth:`Scheduler.schedule` ``(step, cache, logits, bits) -> bits``: ``step`` is the number of
decode tokens produced so far (the prefill's token excluded), ``cache`` the KV cache, ``logits`` the last
step's next-token logits ``[vocab]`` and ``bits`` the current rung. Schedulers only ever step *down* the
ladder (progressive lowering); :meth:`Scheduler.start` is called once per generation, after the prefill.

``static``      step down after fixed decode-step counts (PMPD's ``naive`` scheduler, tuned offline);
``confidence``  step down once the max softmax probability stays above a running threshold (PMPD's
                ``confidence`` baseline: mean + k·std of the scores seen at the current rung);
``learned``     PMPD's KV-cache classifier: after the prefill it reads the last layer's K/V and picks, per
                step-down, one of the switch points {0, T/3, 2T/3, never}; then it acts as ``static``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

SWITCH_FRACTIONS = (0.0, 1 / 3, 2 / 3, None)  # None: never switch (the learned scheduler's 4 classes)


def switch_step(fraction: float | None, max_new_tokens: int) -> int | None:
    """The decode step of a switch point (None: never)."""
    return None if fraction is None else int(round(fraction * max_new_tokens))


class Scheduler(ABC):
    def __init__(self, ladder: Sequence[int]):
        self.ladder = tuple(ladder)

    def start(self, cache: Any, max_new_tokens: int) -> None:
        """A new generation begins (the prefill is done)."""

    @abstractmethod
    def schedule(self, step: int, cache: Any, logits: torch.Tensor, bits: int) -> int:
        """The rung of the next decode step."""

    def lower(self, bits: int) -> int:
        i = self.ladder.index(bits)
        return self.ladder[min(i + 1, len(self.ladder) - 1)]


class StaticScheduler(Scheduler):
    """Rung i+1 from decode step ``switch_steps[i]`` on (cumulative step counts, non-decreasing)."""

    def __init__(self, ladder: Sequence[int], switch_steps: Sequence[int | None]):
        super().__init__(ladder)
        if len(switch_steps) != len(self.ladder) - 1:
            raise ValueError(f"switch_steps needs {len(self.ladder) - 1} value(s) for the ladder {list(self.ladder)}")
        self.switch_steps = list(switch_steps)

    def target(self, step: int) -> int:
        rung = 0
        for s in self.switch_steps:
            if s is not None and step >= s:
                rung += 1
            else:
                break
        return self.ladder[rung]

    def schedule(self, step: int, cache: Any, logits: torch.Tensor, bits: int) -> int:
        return min(bits, self.target(step))  # never back up


class ConfidenceScheduler(Scheduler):
    """Step down when the last ``window`` max-probabilities are all >= mean + k·std of those seen at this rung
    (at least ``warmup`` of them first). The engine's options hold the defaults."""

    def __init__(self, ladder: Sequence[int], k: float, warmup: int, window: int):
        super().__init__(ladder)
        self.k, self.warmup, self.window = k, warmup, window
        self._scores: list[float] = []

    def start(self, cache: Any, max_new_tokens: int) -> None:
        self._scores = []

    def schedule(self, step: int, cache: Any, logits: torch.Tensor, bits: int) -> int:
        score = float(torch.softmax(logits.float(), dim=-1).max())
        self._scores.append(score)
        seen = self._scores[: -self.window] if self.window else self._scores
        if len(seen) < self.warmup or bits == self.ladder[-1]:
            return bits
        mean = sum(seen) / len(seen)
        std = math.sqrt(sum((s - mean) ** 2 for s in seen) / len(seen))
        if all(s >= mean + self.k * std for s in self._scores[-self.window :]):
            self._scores = []  # a new rung gathers its own statistics
            return self.lower(bits)
        return bits


class KVCacheClassifier(nn.Module):
    """PMPD's learned scheduler: one learned query per KV head attends over the last layer's keys/values;
    LayerNorm, MLP -> logits of the 4 switch points."""

    def __init__(self, kv_heads: int, head_dim: int, hidden: int = 64):
        super().__init__()
        self.query = nn.Parameter(torch.randn(kv_heads, head_dim) / math.sqrt(head_dim))
        self.norm = nn.LayerNorm(kv_heads * head_dim)
        self.mlp = nn.Sequential(
            nn.Linear(kv_heads * head_dim, hidden), nn.ReLU(), nn.Linear(hidden, len(SWITCH_FRACTIONS))
        )

    def forward(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """keys / values ``[B, kv_heads, T, D]`` -> class logits ``[B, 4]``."""
        k, v = keys.float(), values.float()
        att = torch.softmax(torch.einsum("hd,bhtd->bht", self.query, k) / math.sqrt(k.shape[-1]), dim=-1)
        pooled = torch.einsum("bht,bhtd->bhd", att, v).flatten(1)
        return self.mlp(self.norm(pooled))


def last_layer_kv(cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's K/V so far: all of a dynamic cache's, the filled prefix of a static one's."""
    layer = cache.layers[-1]
    n = int(layer.get_seq_length())
    return layer.keys[..., :n, :], layer.values[..., :n, :]


class LearnedScheduler(StaticScheduler):
    """One classifier per step-down decides its switch point after the prefill; then static."""

    def __init__(self, ladder: Sequence[int], classifiers: Sequence[KVCacheClassifier]):
        super().__init__(ladder, [None] * (len(ladder) - 1))
        self.classifiers = list(classifiers)
        self.choices: list[int] = []

    @torch.no_grad()
    def start(self, cache: Any, max_new_tokens: int) -> None:
        keys, values = last_layer_kv(cache)
        self.choices = [int(c(keys, values).argmax(-1)[0]) for c in self.classifiers]
        steps, last = [], 0
        for c in self.choices:
            s = switch_step(SWITCH_FRACTIONS[c], max_new_tokens)
            s = None if s is None or last is None else max(s, last)  # cascaded: a later rung never switches earlier
            steps.append(s)
            last = s
        self.switch_steps = steps
