"""Profiler ranges on a model for one profiled repetition: each module's forward, the rotary embedding and the KV
cache update each inside a range named by the analytic model's operator class, and each pass of the generation
inside a step range. Everything is undone afterwards: the timed repetitions never run instrumented.

The cache update and ``generate``'s logits processors are patched on their transformers classes for the duration.
A module's class comes from its qualified name (``model.layers.3.self_attn.q_proj`` -> ``q_proj``): the last two
components, then the last one, looked up per family; a decoder layer's own operators are its residual adds, an
attention module's own operators the attention itself (SDPA and its reshapes), an MLP's own its activation and
product; the outer modules' own operators are ``setup`` (masks, positions, cache set-up). Modules of any other
name (a quantized linear's internals) stay inside their parent's range.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from rooflens.engines.base import TokenClock
from rooflens.engines.marks import ENGINE, OP, STEP, profiler_range, recording_ranges

LLAMA_ROLES = {
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "o_proj",
    "mlp.gate_proj": "gate_proj",
    "mlp.up_proj": "up_proj",
    "mlp.down_proj": "down_proj",
    "mlp.act_fn": "act_mul",
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_attn_norm",
    "self_attn": "attention",
    "mlp": "act_mul",
    "embed_tokens": "embedding",
    "rotary_emb": "rotary",
    "norm": "final_norm",
    "lm_head": "lm_head",
}
GPT2_ROLES = {
    "attn.c_attn": "c_attn",
    "attn.c_proj": "c_proj",
    "mlp.c_fc": "c_fc",
    "mlp.c_proj": "mlp_c_proj",
    "mlp.act": "gelu",
    "attn": "attention",
    "mlp": "gelu",
    "ln_1": "ln_1",
    "ln_2": "ln_2",
    "ln_f": "final_norm",
    "wte": "embedding",
    "wpe": "wpe",
    "lm_head": "lm_head",
}
_LAYER = re.compile(r"(^|\.)(layers|h)\.\d+$")
_OUTER = {"", "model", "transformer"}


def role_of(name: str, family: str) -> str | None:
    """The operator class of the module called ``name`` in a model of ``family`` (None: not instrumented)."""
    if name in _OUTER:
        return "setup"
    if _LAYER.search(name):
        return "residual_add"
    roles = GPT2_ROLES if family == "gpt2" else LLAMA_ROLES
    parts = name.split(".")
    return roles.get(".".join(parts[-2:])) or roles.get(parts[-1])


def _wrap_forward(module: torch.nn.Module, range_name: str, undo: ExitStack) -> None:
    """``module.forward`` inside a profiler range (an instance attribute, removed again by ``undo``)."""
    had = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    inner = module.forward

    @functools.wraps(inner)  # transformers reads forward's signature (logits_to_keep, ...): keep it
    def forward(*args: Any, **kwargs: Any) -> Any:
        with profiler_range(range_name):
            return inner(*args, **kwargs)

    module.forward = forward  # type: ignore[method-assign]

    def restore() -> None:
        if had:
            module.forward = previous  # type: ignore[method-assign]
        else:
            del module.forward

    undo.callback(restore)


def _patch(owner: Any, attr: str, range_name: str, undo: ExitStack) -> None:
    """``owner.attr`` (a function or a method) called inside a profiler range; restored by ``undo``."""
    original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)

    @functools.wraps(original)
    def patched(*args: Any, **kwargs: Any) -> Any:
        with profiler_range(range_name):
            return original(*args, **kwargs)

    setattr(owner, attr, patched)
    undo.callback(setattr, owner, attr, original)


def _instrument_model(model: torch.nn.Module, family: str, undo: ExitStack) -> None:
    modelling = set()
    for name, module in model.named_modules():
        role = role_of(name, family)
        if role is not None:
            _wrap_forward(module, OP + role, undo)
        if role == "attention":
            modelling.add(type(module).__module__)
    for module_name in sorted(modelling):  # the modelling file's apply_rotary_pos_emb, looked up at call time
        owner = sys.modules.get(module_name)
        if owner is not None and callable(getattr(owner, "apply_rotary_pos_emb", None)):
            _patch(owner, "apply_rotary_pos_emb", OP + "rotary", undo)


def _instrument_transformers(undo: ExitStack) -> None:
    """Every transformers cache's ``update`` (one method on the base class) inside the ``kv_cache`` range, and
    ``generate``'s logits processors inside ``sampling``."""
    from transformers.cache_utils import Cache
    from transformers.generation.logits_process import LogitsProcessorList

    for owner, attr, cls in ((Cache, "update", "kv_cache"), (LogitsProcessorList, "__call__", "sampling")):
        if attr in owner.__dict__:
            _patch(owner, attr, OP + cls, undo)


@contextmanager
def instrumented(model: torch.nn.Module, family: str, engine_modules: dict[str, torch.nn.Module]) -> Iterator[None]:
    """``model`` (the engine's target) and ``engine_modules`` (its own: a draft model, ...) inside their ranges,
    and :func:`rooflens.engines.marks.engine_work` on, for the duration."""
    with ExitStack() as undo:
        _instrument_model(model, family, undo)
        for label, module in engine_modules.items():
            _wrap_forward(module, ENGINE + label, undo)
        _instrument_transformers(undo)
        undo.enter_context(recording_ranges())
        yield


class SteppedClock(TokenClock):
    """A token clock that also puts each pass of the generation in a profiler range: from ``start()`` to the
    first emission ``prefill``, then between emissions ``decode`` (none after the last of ``n_new`` tokens)."""

    def __init__(self, device: torch.device, n_new: int, now: Callable[[], float] = time.perf_counter):
        super().__init__(device, now)
        self.n_new = n_new
        self._open: Any = None

    def _enter(self, phase: str) -> None:
        self._open = profiler_range(STEP + phase)
        self._open.__enter__()

    def _close(self) -> None:
        if self._open is not None:
            self._open.__exit__(None, None, None)
            self._open = None

    def start(self) -> None:
        super().start()
        self._enter("prefill")

    def tokens(self, n: int = 1) -> None:
        super().tokens(n)
        self._close()
        if self.n_tokens < self.n_new:
            self._enter("decode")

    def stop(self) -> None:
        self._close()
        super().stop()
