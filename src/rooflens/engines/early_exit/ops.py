"""The tensor work of an early_exit decode step, eager: what the engine's per-token control flow (exit decisions,
verification, scheduling, the deferred walk) calls. :class:`rooflens.engines.early_exit.compiled.CompiledOps` is the
same interface on static caches with every piece compiled (``compile: true``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rooflens.engines.decoding import LayerStack, forward_layers, mask_eos, new_cache, write_kv
from rooflens.engines.early_exit.deferred import DeferredPass
from rooflens.engines.early_exit.predictors import ExitPredictors, exit_features

ExitTest = Callable[[int, torch.Tensor], bool]


class EagerOps:
    """The target's prefill, layers, heads and KV fill, the draft head and the exit predictors, run eagerly on a
    dynamic cache. Returned hidden states keep the shapes the engine stores: normed ones are ``[1, 1, H]``."""

    def __init__(
        self,
        model: torch.nn.Module,
        stack: LayerStack,
        predictors: ExitPredictors,
        draft: torch.nn.Module | None,
        eos: list[int],
        precheck_rows: torch.Tensor | None,
    ):
        self.model, self.stack, self.predictors, self.draft = model, stack, predictors, draft
        self.eos, self.precheck_rows = eos, precheck_rows

    def start(self, prompt_len: int, n_new: int) -> Any:
        """A new generation: the target's empty KV cache."""
        return new_cache(self.model)

    def prefill(self, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(final-normed hidden states [1, P, H], the first token [1]) of the prompt at full depth."""
        stack = self.stack
        _, h = forward_layers(stack, ids, cache, torch.arange(ids.shape[1], device=ids.device))
        normed = stack.norm(h)
        return normed, mask_eos(stack.lm_head(normed[:, -1:])[:, -1], self.eos).argmax(-1)

    def draft_cache(self) -> Any:
        assert self.draft is not None
        return self.draft.new_cache()

    def draft_prefill(self, embeds: torch.Tensor, prev: torch.Tensor, positions: torch.Tensor, cache: Any) -> None:
        """The draft head over T (embedding, previous normed hidden) pairs of the prompt, into its cache."""
        assert self.draft is not None
        self.draft(embeds, prev, positions, cache)

    def draft_candidates(
        self, embeds: torch.Tensor, prev: torch.Tensor, positions: torch.Tensor, cache: Any, k: int
    ) -> torch.Tensor:
        """The draft head's top ``k`` vocabulary ids after one more (embedding, previous normed hidden) pair."""
        assert self.draft is not None
        logits = self.draft(embeds, prev, positions, cache)
        return self.draft.vocab_ids[logits[0, -1].topk(k).indices]

    def walk(self, x: torch.Tensor, pos: torch.Tensor, cache: Any, exit_test: ExitTest) -> torch.Tensor:
        """The step's token through the layers until ``exit_test`` stops them; the last hidden state [1, 1, H]."""
        _, h = forward_layers(self.stack, x, cache, pos, exit_test)
        return h

    def deferred(self, cache: Any, pos: int) -> DeferredPass:
        """``skipped_kv: deferred``'s walk of one step (its layers run by :func:`.deferred.run_layer`)."""
        return DeferredPass(self.stack, cache, pos)

    def self_topk(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """``self:k``'s candidates: the top ``k`` of the full LM head on the last row of ``hidden``."""
        stack = self.stack
        return mask_eos(stack.lm_head(stack.norm(hidden[0, -1])), self.eos).topk(k).indices

    def exit_logit(
        self, i: int, hidden: torch.Tensor, rows: torch.Tensor, prev: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Layer ``i``'s predictor on the last row of ``hidden``: (normed [1, 1, H], features, softmax, exit logit)."""
        normed = self.stack.norm(hidden[:, -1:])
        feat, prob = exit_features(normed[0, 0], rows, prev)
        return normed, feat, prob, float(self.predictors.logit(i, feat))

    def trimmed_best(self, normed: torch.Tensor) -> tuple[float, int]:
        """(best logit, its row) over the pre-check's trimmed vocabulary."""
        assert self.precheck_rows is not None
        trimmed = self.precheck_rows @ normed[0, 0].float()
        j = int(trimmed.argmax())
        return float(trimmed[j]), j

    def head_token(self, normed: torch.Tensor) -> int:
        """The full-vocabulary argmax of a normed hidden state (an exit's verification)."""
        return int(mask_eos(self.stack.lm_head(normed[0, 0]), self.eos).argmax())

    def final(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(final-normed hidden [1, 1, H], the token [1]) after the last layer."""
        normed = self.stack.norm(h)
        return normed, mask_eos(self.stack.lm_head(normed)[:, -1], self.eos).argmax(-1)

    def fill(self, h: torch.Tensor, pos: torch.Tensor, cache: Any, layers: range) -> None:
        """``skipped_kv: fill``: K/V of ``layers`` projected from the exit layer's hidden state."""
        write_kv(self.stack, h, pos, cache, layers)
