"""Proposers of our own loop: where the ``g`` draft tokens of a round come from.

``draft_model``
    A draft causal LM with the target's vocabulary drafts greedily (or by sampling) with its own KV cache,
    one forward pass per token (the first one also catches up on the tokens it has not seen yet); with
    ``draft_vocab`` its LM head covers only the trimmed vocabulary (:mod:`.vocabtrim`).
``prompt_lookup``
    No draft model: the continuation of the latest earlier occurrence of the last n tokens (n from
    ``max_ngram`` down to ``min_ngram``) in prompt + generated text is the draft.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rooflens.engines.decoding import crop_cache, last_logits, new_cache
from rooflens.engines.speculative.chooser import TokenChooser
from rooflens.engines.speculative.vocabtrim import DraftVocab


@dataclass(frozen=True)
class Draft:
    """One round's draft: the tokens sent to verification and what proposing them cost."""

    tokens: torch.Tensor  # [g], 1-D
    probs: torch.Tensor | None = None  # [g, V] the draft model's distributions when sampling; None: a point mass
    forward_passes: int = 0  # draft-model forwards

    @property
    def size(self) -> int:
        return int(self.tokens.numel())


class Proposer(Protocol):
    def start(self) -> None:
        """A new generation begins."""

    def propose(self, seq: torch.Tensor, g: int, chooser: TokenChooser) -> Draft:
        """Up to ``g`` tokens to follow ``seq`` (``[1, length]``: prompt + tokens emitted so far)."""

    def rollback(self, length: int) -> None:
        """Forget whatever the proposer holds beyond the first ``length`` tokens of the sequence."""


def lookup_ngram(seq: torch.Tensor, g: int, min_n: int, max_n: int) -> torch.Tensor:
    """Prompt-lookup draft: up to ``g`` tokens that followed an earlier occurrence of the sequence's last n-gram.

    ``seq`` is 1-D. n goes from ``max_n`` down to ``min_n``; for the first n with a match the
    latest occurrence that still has ``g`` tokens after it is used, else the earliest (longest
    continuation). Returns an empty tensor when nothing matches.
    """
    L = int(seq.numel())
    if g <= 0:
        return seq[:0]
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        windows = seq[: L - 1].unfold(0, n, 1)  # starts 0..L-1-n: every n-gram except the suffix itself
        hits = (windows == seq[L - n :]).all(dim=1).nonzero().flatten()
        if hits.numel() == 0:
            continue
        starts = hits.tolist()
        full = [s for s in starts if s + n + g <= L]
        s = full[-1] if full else starts[0]
        return seq[s + n : s + n + g]
    return seq[:0]


@dataclass
class LookupProposer:
    """``prompt_lookup``: n-gram lookup in the sequence itself; nothing to keep between rounds."""

    min_ngram: int
    max_ngram: int

    def start(self) -> None:
        pass

    def propose(self, seq: torch.Tensor, g: int, chooser: TokenChooser) -> Draft:
        return Draft(lookup_ngram(seq[0], g, self.min_ngram, self.max_ngram))

    def rollback(self, length: int) -> None:
        pass


@dataclass
class DraftModelProposer:
    """``draft_model``: ``g`` tokens from the draft model, one forward pass each, over its own KV cache; with a
    ``vocab`` the model's logits are over that trimmed vocabulary (VocabTrim) and are mapped back to full ids.
    The cache is reached through :meth:`start`, :meth:`seen`, :meth:`logits` and :meth:`rollback` (a dynamic
    cache here; a compiled forward on a static cache in :mod:`.compiled`)."""

    model: torch.nn.Module
    vocab: DraftVocab | None = None
    cache: Any = None

    def start(self) -> None:
        self.cache = new_cache(self.model)

    def seen(self) -> int:
        """Tokens of the sequence in the draft's cache."""
        return self.cache.get_seq_length()

    def logits(self, feed: torch.Tensor) -> torch.Tensor:
        """Append ``feed`` (``[1, n]``) to the draft's cache; the logits after its last token (``[V]``)."""
        return last_logits(self.model, feed, self.cache)[0]

    def propose(self, seq: torch.Tensor, g: int, chooser: TokenChooser) -> Draft:
        if g <= 0:
            return Draft(seq[0, :0])
        tokens, probs = [], []
        feed = seq[:, self.seen() :]  # what the draft has not seen: accepted + correction tokens
        for _ in range(g):
            logits = self.logits(feed)
            token, p = chooser.choose(logits) if self.vocab is None else self.vocab.choose(chooser, logits)
            tokens.append(token)
            if p is not None:
                probs.append(p)
            feed = token.view(1, 1)
        return Draft(torch.cat(tokens), torch.stack(probs) if chooser.sampling else None, forward_passes=g)

    def rollback(self, length: int) -> None:
        crop_cache(self.cache, min(self.seen(), length))
