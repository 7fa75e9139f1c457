"""A decoding toolkit for engines that run their own loop (in the spirit of gpt-fast's generate.py).

Model-level steps work on any Hugging Face causal LM: :func:`prefill`, :func:`decode_one_token`
and :func:`decode_n_tokens` (greedy, EOS masked like the ``hf`` baseline, exactly N tokens,
one ``clock.tokens(1)`` each), the KV-cache helpers and :func:`greedy_config` (the baseline's
GenerationConfig). Layer-level access is for the Llama family: :class:`LayerStack` views a
causal LM as embed -> layers -> norm -> head and :func:`forward_layers` runs it layer by layer,
calling back after each layer (and stopping there when the callback says so).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle
from transformers import DynamicCache, GenerationConfig
from transformers.generation.configuration_utils import CompileConfig
from transformers.generation.streamers import BaseStreamer
from transformers.masking_utils import create_causal_mask

from rooflens.engines.base import TokenClock

# ---------------------------------------------------------------------------- greedy decoding

_EOS_MASKED: ContextVar[bool] = ContextVar("rooflens_eos_masked", default=True)


@contextmanager
def eos_allowed() -> Iterator[None]:
    """Inside, engines may choose EOS like any other token: the task-quality pass (``rooflens.bench.task_quality``)
    cuts each answer at its first EOS. Outside, EOS is masked so that every timed run has exactly
    ``max_new_tokens`` (one mechanism for all engines: :func:`mask_eos` and :func:`greedy_config` read it)."""
    token = _EOS_MASKED.set(False)
    try:
        yield
    finally:
        _EOS_MASKED.reset(token)


def eos_masked() -> bool:
    return _EOS_MASKED.get()


def eos_token_ids(model: torch.nn.Module) -> list[int]:
    """The EOS ids the ``hf`` baseline masks (model.config first, then model.generation_config)."""
    eos = getattr(model.config, "eos_token_id", None)
    if eos is None and getattr(model, "generation_config", None) is not None:
        eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
    vocab = int(model.config.vocab_size)
    return sorted({int(i) for i in ids if 0 <= int(i) < vocab})


def greedy_config(
    model: torch.nn.Module, max_new_tokens: int, static_cache: bool = False, compile_config: CompileConfig | None = None
) -> GenerationConfig:
    """The ``hf`` baseline's GenerationConfig: greedy, exactly ``max_new_tokens`` (EOS masked), compiled
    only with a ``compile_config``."""
    cfg = model.config
    gc = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens if eos_masked() else None,  # masks EOS: every run has the same length
        eos_token_id=getattr(cfg, "eos_token_id", None),
        pad_token_id=getattr(cfg, "pad_token_id", None) or getattr(cfg, "eos_token_id", None),
        use_cache=True,
        cache_implementation="static" if static_cache else None,
    )
    if compile_config is not None:
        gc.compile_config = compile_config
    else:
        gc.disable_compile = True  # a static cache alone would otherwise be compiled on CUDA
    return gc


def mask_eos(logits: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """``logits`` in float32 with the EOS ids at -inf (a copy; EOS kept inside :func:`eos_allowed`)."""
    if not (eos and eos_masked()):
        return logits.float()
    logits = logits.to(torch.float32, copy=True)  # .float() of a float32 tensor is the tensor itself
    logits[..., eos] = float("-inf")
    return logits


def new_cache(model: torch.nn.Module) -> DynamicCache:
    """An empty KV cache for ``model``."""
    return DynamicCache(config=model.config)


def crop_cache(cache: Any, length: int) -> None:
    """Roll ``cache`` back to ``length`` tokens (transformers 5: ``crop(-n)`` removes the last n)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def last_logits(model: torch.nn.Module, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """The logits after the last of ``input_ids`` ([batch, vocab]), appending them to ``cache``."""
    return model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]


class EagerSession:
    """A generation in progress on a dynamic cache, logits out: the eager twin of
    :class:`rooflens.engines.compiled.StaticSession`, for loops that step the model themselves."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.cache = new_cache(model)

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        return last_logits(self.model, ids, self.cache)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        return last_logits(self.model, token, self.cache)


def prefill(model: torch.nn.Module, input_ids: torch.Tensor, cache: Any, eos: list[int]) -> torch.Tensor:
    """Run the prompt into ``cache``; the first new token ([batch, 1])."""
    return mask_eos(last_logits(model, input_ids, cache), eos).argmax(-1, keepdim=True)


def decode_one_token(model: torch.nn.Module, token: torch.Tensor, cache: Any, eos: list[int]) -> torch.Tensor:
    """Feed one token ([batch, 1]); the next one."""
    return mask_eos(last_logits(model, token, cache), eos).argmax(-1, keepdim=True)


def decode_n_tokens(
    model: torch.nn.Module, token: torch.Tensor, cache: Any, n: int, eos: list[int], clock: TokenClock
) -> torch.Tensor:
    """The ``n`` greedy tokens after ``token`` ([batch, n]), one ``clock.tokens(1)`` each."""
    out = []
    for _ in range(n):
        token = decode_one_token(model, token, cache, eos)
        out.append(token)
        clock.tokens(1)
    return torch.cat(out, dim=1) if out else token[:, :0]


class ClockStreamer(BaseStreamer):
    """Feeds ``generate``'s streamer calls to a TokenClock: the first put is the prompt, then the tokens
    of each put are counted (assisted generation puts several at once)."""

    def __init__(self, clock: TokenClock):
        self.clock = clock
        self._seen_prompt = False
        self.puts = 0
        self.tokens = 0
        self.sizes: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        n = int(value.shape[-1]) if value.dim() >= 2 else 1
        self.puts += 1
        self.tokens += n
        self.sizes.append(n)
        self.clock.tokens(n)

    def end(self) -> None:
        pass


@contextmanager
def hooks() -> Iterator[list[RemovableHandle]]:
    """A list to append hook handles to; every handle in it is removed on exit, even on an error."""
    handles: list[RemovableHandle] = []
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------- the layer stack

_WALKABLE = frozenset({"llama"})  # decoder layers called as LlamaModel.forward calls them, one full-attention mask


@dataclass(frozen=True)
class LayerStack:
    """A causal LM seen as embed_tokens -> layers -> norm -> lm_head, with its rotary embedding and config."""

    config: Any
    embed_tokens: torch.nn.Module
    layers: torch.nn.ModuleList
    norm: torch.nn.Module
    rotary_emb: torch.nn.Module
    lm_head: torch.nn.Module

    @classmethod
    def of(cls, model: torch.nn.Module) -> LayerStack:
        """The stack of ``model``; ValueError for a model type whose stack this cannot walk."""
        model_type = getattr(model.config, "model_type", None)
        base = getattr(model, "model", None)
        if model_type not in _WALKABLE or base is None or not hasattr(model, "lm_head"):
            raise ValueError(
                f"cannot walk the layer stack of model type {model_type!r} ({type(model).__name__}); "
                f"supported: {', '.join(sorted(_WALKABLE))}"
            )
        return cls(base.config, base.embed_tokens, base.layers, base.norm, base.rotary_emb, model.lm_head)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head on a hidden state."""
        return self.lm_head(self.norm(hidden))


def forward_layers(
    stack: LayerStack,
    input_ids: torch.Tensor,
    cache: Any,
    positions: torch.Tensor,
    on_layer: Callable[[int, torch.Tensor], bool] | None = None,
) -> tuple[int, torch.Tensor]:
    """Run ``input_ids`` (at ``positions``, 1-D) through the layers, appending to ``cache``.

    After layer i, ``on_layer(i, hidden)`` returning True stops there (layers after i then have
    no cache entry for these tokens). Returns (last layer run, its hidden state, not normed).
    """
    hidden = stack.embed_tokens(input_ids)
    position_ids = positions.view(1, -1)
    mask = create_causal_mask(
        config=stack.config, inputs_embeds=hidden, attention_mask=None, past_key_values=cache, position_ids=position_ids
    )
    rotary = stack.rotary_emb(hidden, position_ids=position_ids)
    i = -1
    for i, layer in enumerate(stack.layers):
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=rotary,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        if on_layer is not None and on_layer(i, hidden):
            break
    return i, hidden


def write_kv(stack: LayerStack, hidden: torch.Tensor, positions: torch.Tensor, cache: Any, layers: range) -> None:
    """Append to ``cache``, for each layer in ``layers``, the K/V that layer computes from ``hidden`` as its input.

    Early exit's KV fill: the layers after an exit get an entry computed from the exit layer's hidden
    state (CALM's state propagation) at the cost of their K and V projections only.
    """
    cos, sin = stack.rotary_emb(hidden, position_ids=positions.view(1, -1))
    for j in layers:
        k, v = layer_kv(stack.layers[j], hidden, cos, sin)
        cache.update(k, v, j)


def layer_kv(
    layer: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys (rotated) and values [batch, heads, rows, head_dim] a Llama decoder layer computes from ``hidden``."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (*x.shape[:-1], -1, attn.head_dim)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    return k, v


# ---------------------------------------------------------------------------- self-drafts


def _shallow_module_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A new module object sharing every parameter, buffer and child with ``module``.

    Its child / parameter / hook tables are its own, so replacing a child or registering a hook
    on the copy does not touch the original (and vice versa).
    """
    new = copy.copy(module)
    for key, value in list(new.__dict__.items()):
        if key.startswith("_") and isinstance(value, (dict, set)):
            new.__dict__[key] = copy.copy(value)
    return new


def decoder_layers(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """(base model, attribute name, layer list) of a decoder-only causal LM."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    for attr in ("layers", "h"):
        layers = getattr(base, attr, None) if base is not None else None
        if isinstance(layers, torch.nn.ModuleList):
            return base, attr, layers
    raise ValueError(
        f"draft 'self:<k>' needs a decoder whose layers are a ModuleList at <base>.layers or <base>.h; "
        f"{type(model).__name__} has none"
    )


def truncated_model(model: torch.nn.Module, k: int) -> torch.nn.Module:
    """The first ``k`` layers of ``model`` + its embeddings, final norm and LM head; no weight is copied.

    A shallow copy of the CausalLM and of its base model whose layer list is a slice of the
    target's and whose config (a copy) says ``num_hidden_layers = k``. It has its own
    ``generation_config``, and any KV cache made for it (``DynamicCache(config=draft.config)``)
    is separate from the target's.
    """
    base, attr, layers = decoder_layers(model)
    n = len(layers)
    if not 1 <= k < n:
        raise ValueError(f"draft 'self:{k}': the target has {n} layers; k must be in 1..{n - 1}")
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = k
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:k]
    new_base = _shallow_module_copy(base)
    setattr(new_base, attr, torch.nn.ModuleList(list(layers)[:k]))
    new_base.config = cfg
    new = _shallow_module_copy(model)
    setattr(new, model.base_model_prefix, new_base)
    new.config = cfg
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    return new
