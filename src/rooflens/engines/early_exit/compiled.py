"""``compile: true`` for the early_exit engine (issue 26): the decode step's tensor work compiled on static caches, its
per-token control flow (the schedule, the exit tests, the verification, the deferred walk) still Python.

One compiled function runs one decoder layer on rows and serves every layer: the layer module and one layer of the
static cache (:class:`LayerSlot`) are its arguments. Dynamo lifts a module's parameters to graph inputs (torch's
``inline_inbuilt_nn_modules``) and guards the slot's type and tensor shapes, never which layer it is, so a walk through
L layers calls one graph L times. Its attention mask and write position come from the slot's own fill count
(``cumulative_length``), its rotary positions from the row's position: a layer that ``skipped_kv: unwritten`` left
behind holds fewer entries than the position says, as a dynamic cache's layer would. One row (the step's token) is a
static graph; several (``deferred``'s owed rows joining the step's token) a second one, its row count dynamic.

Compiled too: the full-depth prefill (its length dynamic, like :class:`rooflens.engines.compiled.CompiledDecoder`'s),
``fill``'s K/V projections of one layer (again one graph for every layer), the exit predictor (features and the
layer's MLP, the layer an index tensor), the pre-check's trimmed head, the full LM head with its argmax (verification
and the final head), ``self:k``'s top-k, and the draft head's prefill and step on a static cache of its own. Every
graph is compiled in :meth:`CompiledOps.warm`, which calls each once, before a cell's timed repetitions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from transformers import StaticCache
from transformers.utils.output_capturing import _active_collector

from rooflens.engines.compiled import (
    RECOMPILE_LIMIT,
    CompileLog,
    cache_length,
    compile_mode,
    compiled,
    eos_bias,
    inductor_cache,
    prepare_kernels,
    static_cache,
    step_calls,
)
from rooflens.engines.decoding import LayerStack, layer_kv
from rooflens.engines.early_exit.deferred import DeferredPass
from rooflens.engines.early_exit.ops import EagerOps, ExitTest
from rooflens.engines.early_exit.predictors import ExitPredictors, exit_features


class LayerSlot:
    """One layer of a static cache seen as a whole cache: a decoder layer's ``past_key_values.update(k, v,
    layer_idx)`` writes into this layer whatever index it passes."""

    def __init__(self, layer: Any):
        self.layer = layer

    def update(self, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any):
        return self.layer.update(key, value)


# ---------------------------------------------------------------------------- the compiled functions


def _layer(layer: Module, rotary: Module, hidden: Tensor, first: Tensor, slot: LayerSlot) -> Tensor:
    """``layer`` on rows [1, m, H] at positions first.., appended to ``slot``: row r sees the slot's entries and the
    rows up to r (an additive mask over the slot's whole length)."""
    m, device = hidden.shape[1], hidden.device
    rows = torch.arange(m, device=device)
    written = slot.layer.cumulative_length + rows  # where each row's K/V lands
    visible = torch.arange(slot.layer.max_cache_len, device=device)[None, :] <= written[:, None]
    zero = torch.zeros((), dtype=hidden.dtype, device=device)
    mask = torch.where(visible, zero, torch.finfo(hidden.dtype).min).view(1, 1, m, -1)
    positions = (first + rows).view(1, -1)
    # transformers' output-capturing hooks (installed on the layers by any forward that asked for hidden states or
    # attentions) read a ContextVar, which dynamo cannot trace; set under compile it is a plain global, as in a
    # compiled whole-model forward, and the hooks stay inactive
    token = _active_collector.set(None)
    out = layer(
        hidden,
        attention_mask=mask,
        position_embeddings=rotary(hidden, position_ids=positions),
        position_ids=positions,
        past_key_values=slot,
        use_cache=True,
    )
    _active_collector.reset(token)
    return out


def _layer_one(layer: Module, rotary: Module, hidden: Tensor, first: Tensor, slot: LayerSlot) -> Tensor:  # 1 row
    return _layer(layer, rotary, hidden, first, slot)


def _layer_rows(layer: Module, rotary: Module, hidden: Tensor, first: Tensor, slot: LayerSlot) -> Tensor:  # m >= 2
    return _layer(layer, rotary, hidden, first, slot)


def _kv_fill(layer: Module, rotary: Module, hidden: Tensor, first: Tensor, slot: LayerSlot) -> None:
    """``skipped_kv: fill``: the K/V ``layer`` computes from ``hidden`` [1, 1, H], appended to ``slot``."""
    cos, sin = rotary(hidden, position_ids=first.view(1, 1))
    slot.update(*layer_kv(layer, hidden, cos, sin))


def _prefill(base: Module, head: Module, ids: Tensor, cache: StaticCache, bias: Tensor) -> tuple[Tensor, Tensor]:
    """(final-normed hidden states [1, P, H], the first token [1]) of the prompt through the base model."""
    normed = base(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state
    return normed, (head(normed[:, -1]).float() + bias).argmax(-1)


def _draft_prefill(draft: Module, embeds: Tensor, prev: Tensor, positions: Tensor, cache: StaticCache) -> None:
    draft(embeds, prev, positions, cache)  # its logits are never read (and so never computed)


def _draft_candidates(
    draft: Module, embeds: Tensor, prev: Tensor, positions: Tensor, cache: StaticCache, k: int
) -> Tensor:
    """The draft head's top ``k`` vocabulary ids for one (embedding, previous normed hidden [H]) pair."""
    logits = draft(embeds, prev.view(1, 1, -1), positions, cache)
    return draft.vocab_ids[logits[0, -1].topk(k).indices]


def _exit_logit(
    norm: Module, predictors: ExitPredictors, hidden: Tensor, rows: Tensor, prev: Tensor, index: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(normed [H], features, softmax, exit logit) of a layer's last hidden row [H]."""
    normed = norm(hidden)
    feat, prob = exit_features(normed, rows, prev)
    return normed, feat, prob, predictors.logit_at(index, feat)


def _trimmed_best(rows: Tensor, normed: Tensor) -> tuple[Tensor, Tensor]:
    """(best logit, its row) of the pre-check's trimmed vocabulary."""
    trimmed = rows @ normed.float()
    return trimmed.max(), trimmed.argmax()


def _head_token(head: Module, normed: Tensor, bias: Tensor) -> Tensor:
    """The full-vocabulary argmax of a normed hidden state [H] (an exit's verification)."""
    return (head(normed).float() + bias).argmax()


def _final(norm: Module, head: Module, hidden: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """(normed [H], token) after the last layer."""
    normed = norm(hidden)
    return normed, (head(normed).float() + bias).argmax()


def _self_topk(norm: Module, head: Module, hidden: Tensor, bias: Tensor, k: int) -> Tensor:
    """``self:k``'s candidates from a hidden state [H]."""
    return (head(norm(hidden)).float() + bias).topk(k).indices


# ---------------------------------------------------------------------------- the ops


@dataclass
class StaticCaches:
    """The static caches of one cache length: the target's (and a slot per layer), the draft head's, positions."""

    target: StaticCache
    slots: list[LayerSlot]
    draft: StaticCache | None
    positions: torch.Tensor  # arange(length): a position as a 0-d tensor is a view of it

    def reset(self) -> None:
        self.target.reset()
        if self.draft is not None:
            self.draft.reset()


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """``t`` copied into a new contiguous tensor: a slice of a longer tensor has other strides, which a graph's
    guards would tell apart from the contiguous tensors of every other call."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


class CompiledOps(EagerOps):
    """:class:`EagerOps` on static caches (one set per cache length, rounded up as
    :func:`rooflens.engines.compiled.cache_length` does), every piece compiled (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        stack: LayerStack,
        predictors: ExitPredictors,
        draft: torch.nn.Module | None,
        eos: list[int],
        precheck_rows: torch.Tensor | None,
        device: torch.device,
        mode: str,
        gemv: bool = True,
    ):
        super().__init__(model, stack, predictors, draft, eos, precheck_rows)
        self.device = device
        self.mode = compile_mode(mode, device)
        self.cache_folder = inductor_cache()
        kernels, self.gemv = prepare_kernels(model, device, gemv)
        self.step = step_calls(self.mode, device, fixed_modules=False)
        self.log = CompileLog()
        self._sets: dict[int, StaticCaches] = {}
        self._now: StaticCaches | None = None
        self._warm: set[tuple[int, int]] = set()
        with torch.inference_mode():  # as the generations' own tensors: a graph's guards tell the two kinds apart
            self._bias = eos_bias(int(model.config.vocab_size), eos, device)
            self._index = [torch.tensor([i], device=device) for i in range(len(stack.layers))]  # predictor i
            self._no_prev = torch.zeros(predictors.k, device=device)  # the first checked layer's softmax change
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        torch._dynamo.config.fail_on_recompile_limit_hit = True  # an error, never an eager step called compiled
        graph = partial(compiled, kernels, fullgraph=True, mode=self.mode, device=device)
        static, dynamic = partial(graph, dynamic=False, per_token=True), partial(graph, dynamic=None)  # mark_dynamic
        self._prefill_c, self._rows_c, self._draft_prefill_c = (
            dynamic(_prefill),
            dynamic(_layer_rows),
            dynamic(_draft_prefill),
        )
        self._layer_c, self._kv_c, self._draft_c = static(_layer_one), static(_kv_fill), static(_draft_candidates)
        self._exit_c, self._best_c, self._head_c = static(_exit_logit), static(_trimmed_best), static(_head_token)
        self._final_c, self._topk_c = static(_final), static(_self_topk)

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        """A graph's output kept past the graph's next call: copied under CUDA graphs, which overwrite it then."""
        return t.clone() if self.mode == "reduce-overhead" else t

    @property
    def now(self) -> StaticCaches:
        if self._now is None:
            raise RuntimeError("CompiledOps: start() a generation first")
        return self._now

    def _caches(self, length: int) -> StaticCaches:
        if length not in self._sets:
            dtype = self.stack.embed_tokens.weight.dtype
            target = static_cache(self.model.config, 1, length, dtype, self.device)
            draft = None
            if self.draft is not None:  # the draft heads run in float32
                draft = static_cache(self.draft.config, 1, length, torch.float32, self.device)
            positions = torch.arange(length, device=self.device)
            self._sets[length] = StaticCaches(target, [LayerSlot(s) for s in target.layers], draft, positions)
        return self._sets[length]

    def start(self, prompt_len: int, n_new: int) -> StaticCache:
        self._now = self._caches(cache_length(prompt_len, n_new))
        self._now.reset()
        self._bias = eos_bias(int(self.model.config.vocab_size), self.eos, self.device)  # eos_allowed() or not
        return self._now.target

    def prefill(self, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ids = _fresh(ids)
        if ids.shape[1] > 1:
            torch._dynamo.mark_dynamic(ids, 1)
        normed, token = self._prefill_c(self.model.model, self.stack.lm_head, ids, cache, self._bias)
        return self._out(normed), token

    def draft_cache(self) -> Any:
        return self.now.draft

    def draft_prefill(self, embeds: torch.Tensor, prev: torch.Tensor, positions: torch.Tensor, cache: Any) -> None:
        args = [_fresh(embeds), _fresh(prev), _fresh(positions)]
        if embeds.shape[1] > 1:
            for t in args:
                torch._dynamo.mark_dynamic(t, 1)
        self._draft_prefill_c(self.draft, *args, cache)

    def draft_candidates(
        self, embeds: torch.Tensor, prev: torch.Tensor, positions: torch.Tensor, cache: Any, k: int
    ) -> torch.Tensor:
        return self._draft_c(self.draft, _fresh(embeds), prev.reshape(-1), _fresh(positions), cache, k)

    def _run(self, j: int, hidden: torch.Tensor, first: int) -> torch.Tensor:
        """Layer ``j`` on rows [1, m, H] at positions first..: the one-row graph, or the rows graph."""
        now = self.now
        args = (self.stack.layers[j], self.stack.rotary_emb, hidden, now.positions[first], now.slots[j])
        if hidden.shape[1] == 1:
            return self._out(self._layer_c(*args))
        torch._dynamo.mark_dynamic(hidden, 1)
        return self._out(self._rows_c(*args))

    def walk(self, x: torch.Tensor, pos: torch.Tensor, cache: Any, exit_test: ExitTest) -> torch.Tensor:
        hidden, first = self.stack.embed_tokens(x), int(pos)
        for j in range(len(self.stack.layers)):
            hidden = self._run(j, hidden, first)
            if exit_test(j, hidden):
                break
        return hidden

    def deferred(self, cache: Any, pos: int) -> DeferredPass:
        return DeferredPass(self.stack, cache, pos, layer=self._run)

    def self_topk(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        return self._topk_c(self.stack.norm, self.stack.lm_head, hidden[0, -1], self._bias, k)

    def exit_logit(
        self, i: int, hidden: torch.Tensor, rows: torch.Tensor, prev: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        prev = self._no_prev if prev is None else prev
        args = (self.stack.norm, self.predictors, hidden[0, -1], rows, prev, self._index[i])
        normed, feat, prob, logit = self._exit_c(*args)
        return self._out(normed).view(1, 1, -1), self._out(feat), self._out(prob), float(logit)

    def trimmed_best(self, normed: torch.Tensor) -> tuple[float, int]:
        value, j = self._best_c(self.precheck_rows, normed.reshape(-1))
        return float(value), int(j)

    def head_token(self, normed: torch.Tensor) -> int:
        return int(self._head_c(self.stack.lm_head, normed.reshape(-1), self._bias))

    def final(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed, token = self._final_c(self.stack.norm, self.stack.lm_head, h[0, -1], self._bias)
        return self._out(normed).view(1, 1, -1), token.view(1)

    def fill(self, h: torch.Tensor, pos: torch.Tensor, cache: Any, layers: range) -> None:
        now = self.now
        first = now.positions[int(pos)]
        for j in layers:
            self._kv_c(self.stack.layers[j], self.stack.rotary_emb, h, first, now.slots[j])

    # -- warm-up

    @torch.inference_mode()
    def warm(self, prompt: torch.Tensor, n_new: int, k: int, skipped_kv: str, self_topk: bool) -> float:
        """Compile every graph a generation of this shape may call (one call each); seconds spent, 0 when warm."""
        P = prompt.shape[1]
        key = (P, cache_length(P, n_new))
        if key in self._warm:
            return 0.0
        t0 = time.perf_counter()
        self._call_graphs(prompt, n_new, k, skipped_kv, self_topk)
        seconds = time.perf_counter() - t0
        self._warm.add(key)
        self.log.seconds += seconds
        self.log.shapes.append(f"prompt {P}, cache {key[1]}: {seconds:.1f} s")
        return seconds

    def _call_graphs(self, prompt: torch.Tensor, n_new: int, k: int, skipped_kv: str, self_topk: bool) -> None:
        """The prefill and the draft head's feeds on this shape's caches; then, from slot 0 (they fit whatever the
        prompt's length), one layer on one row and on two (deferred), a K/V fill, a predictor with and without a
        previous layer, the pre-check, the verification head, the final head and ``self:k``'s top-k."""
        P, stack, device = prompt.shape[1], self.stack, prompt.device
        cache = self.start(P, n_new)
        normed, token = self.prefill(prompt, cache)
        x = token.view(1, 1)
        if self.draft is not None:
            at = torch.arange(P, device=device).view(1, -1)
            if P >= 2:
                self.draft_prefill(stack.embed_tokens(prompt[:, 1:]), normed[:, :-1], at[:, :-1], self.now.draft)
            self.draft_candidates(stack.embed_tokens(x), normed[:, -1:], at[:, -1:], self.now.draft, k)
        self.now.reset()
        h = self.walk(x, torch.tensor([0], device=device), cache, lambda i, hidden: True)
        if skipped_kv == "deferred":
            self._run(0, torch.cat([h, h], dim=1), 1)
        if skipped_kv == "fill":
            self.fill(h, torch.tensor([1], device=device), cache, range(1))
        rows = stack.lm_head.weight[torch.arange(k, device=device)]  # as Candidates.of gathers them
        normed1, _, prob, _ = self.exit_logit(0, h, rows, None)
        self.exit_logit(0, h, rows, prob)
        if self.precheck_rows is not None:
            self.trimmed_best(normed1)
        self.head_token(normed1)
        self.final(h)
        if self_topk:
            self.self_topk(h, k)
        self.now.reset()
