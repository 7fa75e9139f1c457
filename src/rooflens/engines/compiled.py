"""A compiled decode loop for the engines (gpt-fast's ``generate.py`` on a Hugging Face causal LM).

A static KV cache, and two functions compiled with ``torch.compile(fullgraph=True)``: the prefill, its
sequence length dynamic (one graph per batch size, whatever the prompt), and the one-token decode step with
static shapes (one graph per batch size and cache length; the cache length is rounded up to a multiple of
:data:`CACHE_BUCKET` so that nearby cells share it). Inductor's C++/OpenMP kernels on a CPU; on a GPU the
``reduce-overhead`` mode adds CUDA graphs. The loop around the step is plain Python, one clock tick per token,
greedy with EOS masked as in every engine (:func:`rooflens.engines.decoding.eos_masked`).

Compiling happens in :meth:`CompiledDecoder.warm`, which the harness calls before a cell's first repetition
(:meth:`rooflens.engines.base.Engine.warm`), never inside a timed one; its wall time is reported. Inductor's
on-disk cache lives under rooflens's cache folder, so a later run of the same shapes loads its kernels instead
of generating them.

:class:`CompiledForward` is the piece for loops that judge logits themselves (speculative decoding): a model's
compiled prefill and fixed-width blocks on its own static cache, whose write position can be rewound.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import StaticCache

from rooflens.engines.base import TokenClock
from rooflens.engines.decoding import eos_masked, eos_token_ids
from rooflens.fsutil import cache_dir, own_folder

CACHE_BUCKET = 128  # static cache lengths are rounded up to this: cells of nearby lengths share a decode graph
GRAPH_LIMIT = 64  # CompiledForward's graphs per function (dynamo's own limit, 8, raises under fullgraph=True)
INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"


def inductor_cache() -> Path:
    """Inductor's on-disk cache: ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it, else rooflens's cache folder
    (created private: inductor loads the code it finds there)."""
    if INDUCTOR_ENV not in os.environ:
        folder = own_folder(cache_dir("inductor"), "torch.compile loads the compiled kernels it finds there")
        os.environ[INDUCTOR_ENV] = str(folder)
    return Path(os.environ[INDUCTOR_ENV])


def compile_mode(mode: str, device: torch.device) -> str | None:
    """``torch.compile``'s mode on ``device``: CUDA graphs (``reduce-overhead``) exist only on a GPU, so on a CPU
    that mode is inductor's default."""
    if mode == "default" or (mode == "reduce-overhead" and device.type != "cuda"):
        return None
    return mode


def cache_length(prompt_len: int, n_new: int) -> int:
    """The static cache's length for a prompt and its new tokens, rounded up to :data:`CACHE_BUCKET`."""
    need = prompt_len + n_new
    return -(-need // CACHE_BUCKET) * CACHE_BUCKET


@dataclass
class CompileLog:
    """What compiling cost: wall seconds of each warm-up (compiling and one short generation), per cell shape."""

    seconds: float = 0.0
    shapes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return ", ".join(self.shapes)


class CompiledDecoder:
    """Greedy generation of exactly N tokens through a compiled prefill and decode step on a static cache."""

    def __init__(self, model: torch.nn.Module, device: torch.device, mode: str = "reduce-overhead"):
        self.model = model
        self.device = device
        self.mode = compile_mode(mode, device)
        self.cache_folder = inductor_cache()
        self.log = CompileLog()
        self._caches: dict[tuple[int, int], StaticCache] = {}
        self._warm: set[tuple[int, int, int]] = set()
        self._eos = eos_token_ids(model)
        # two functions, so that each has its own compiled code: the prefill's length is dynamic, the step's static
        self._prefill = torch.compile(self._prefill_step, fullgraph=True, dynamic=None, mode=self.mode)
        self._decode = torch.compile(self._decode_step, fullgraph=True, dynamic=False, mode=self.mode)

    def _next(self, ids: torch.Tensor, positions: torch.Tensor, cache: Any, eos_bias: torch.Tensor) -> torch.Tensor:
        logits = self.model(
            input_ids=ids, past_key_values=cache, cache_position=positions, use_cache=True, logits_to_keep=1
        ).logits[:, -1]
        return (logits.float() + eos_bias).argmax(-1, keepdim=True)

    def _prefill_step(self, ids: torch.Tensor, positions: torch.Tensor, cache: Any, eos_bias: torch.Tensor):
        return self._next(ids, positions, cache, eos_bias)

    def _decode_step(self, ids: torch.Tensor, positions: torch.Tensor, cache: Any, eos_bias: torch.Tensor):
        return self._next(ids, positions, cache, eos_bias)

    def _cache(self, batch: int, length: int) -> StaticCache:
        key = (batch, length)
        if key not in self._caches:  # its layers take the K/V dtype and device at their first update
            self._caches[key] = StaticCache(config=self.model.config, max_cache_len=length)
        return self._caches[key]

    def _eos_bias(self) -> torch.Tensor:
        bias = torch.zeros(int(self.model.config.vocab_size), device=self.device)
        if eos_masked() and self._eos:
            bias[self._eos] = float("-inf")
        return bias

    def warm(self, prompts: torch.Tensor, n_new: int) -> float:
        """Compile for this shape (a short generation through both graphs); seconds spent, 0 when already warm."""
        batch, prompt_len = prompts.shape
        key = (batch, prompt_len, cache_length(prompt_len, n_new))
        if key in self._warm:
            return 0.0
        t0 = time.perf_counter()
        clock = TokenClock(self.device)
        clock.start()
        self.generate(prompts, min(n_new, 3), clock, length=key[2])
        clock.stop()
        seconds = time.perf_counter() - t0
        self._warm.add(key)
        self.log.seconds += seconds
        self.log.shapes.append(f"batch {batch}, prompt {prompt_len}, cache {key[2]}: {seconds:.1f} s")
        return seconds

    @torch.inference_mode()
    def generate(self, prompts: torch.Tensor, n_new: int, clock: TokenClock, length: int | None = None) -> torch.Tensor:
        """The ``n_new`` greedy tokens after ``prompts`` ([batch, n_new]), one ``clock.tokens(1)`` each."""
        batch, prompt_len = prompts.shape
        cache = self._cache(batch, length or cache_length(prompt_len, n_new))
        cache.reset()
        eos_bias = self._eos_bias()
        positions = torch.arange(prompt_len + n_new, device=self.device)
        if prompt_len > 1:
            torch._dynamo.mark_dynamic(prompts, 1)
            token = self._prefill(prompts, positions[:prompt_len], cache, eos_bias)
        else:
            token = self._decode(prompts, positions[:1], cache, eos_bias)
        out = [token.clone()]
        clock.tokens(1)
        for i in range(prompt_len, prompt_len + n_new - 1):
            token = self._decode(token, positions[i : i + 1], cache, eos_bias)
            out.append(token.clone())  # a CUDA graph's output is overwritten by its next replay
            clock.tokens(1)
        return torch.cat(out, dim=1)


def _fresh(ids: torch.Tensor) -> torch.Tensor:
    """``ids`` copied into a new contiguous tensor: a static graph is guarded on its inputs' strides, and a slice of a
    longer buffer (a row of a token buffer) has another row stride, which would compile the graph again."""
    return torch.empty(ids.shape, dtype=ids.dtype, device=ids.device).copy_(ids)


class CompiledForward:
    """One causal LM's forward on a static cache of its own, compiled, returning logits (not tokens): for a loop
    that judges them itself, as speculative decoding's verify pass and its draft's steps do.

    :meth:`last_logits` takes any length (compiled with the length dynamic) and returns the logits after the last
    token; :meth:`block_logits` returns every row's logits of a block of static width (one graph per width and cache
    length: callers keep the widths few). :attr:`length` is the cache's write position; :meth:`rewind` moves it back
    without touching the slots after it: their stale keys and values stay hidden, since transformers builds the
    causal mask from that same position (a query at position p sees slots 0..p only), and later writes overwrite them.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, mode: str = "reduce-overhead"):
        self.model = model
        self.device = device
        self.mode = compile_mode(mode, device)
        self.cache_folder = inductor_cache()
        self.length = 0
        self._cache: StaticCache | None = None
        self._caches: dict[tuple[int, int], StaticCache] = {}
        # every (model, width, cache length) is a graph of its own: allow more of them than dynamo's default of 8
        compile_ = partial(torch.compile, fullgraph=True, mode=self.mode, recompile_limit=GRAPH_LIMIT)
        self._prefill = compile_(self._prefill_rows, dynamic=None)
        self._block = compile_(self._block_rows, dynamic=False)

    def _prefill_rows(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        return self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def _block_rows(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        return self.model(input_ids=ids, past_key_values=cache, use_cache=True).logits

    @property
    def cache(self) -> StaticCache:
        if self._cache is None:
            raise RuntimeError("CompiledForward: start() a generation first")
        return self._cache

    @property
    def capacity(self) -> int:
        """Tokens the current cache holds at most."""
        return int(self.cache.layers[0].max_cache_len)

    @torch.inference_mode()
    def start(self, batch: int, length: int) -> None:
        """A new generation: the static cache for ``batch`` rows of up to ``length`` tokens, its position at 0.

        A cache is made once per shape, its layers initialised by one eager token: a cache first filled inside a
        compiled graph is guarded there as uninitialised, and the next call would compile again."""
        key = (batch, length)
        if key not in self._caches:
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            ids = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
            self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            self._caches[key] = cache
        self._cache = self._caches[key]
        self.rewind(0)

    @torch.inference_mode()
    def rewind(self, length: int) -> None:
        """Move the write position back to ``length`` (a static cache's roll-back: nothing is cropped)."""
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(length)
        self.length = length

    def _advance(self, width: int) -> None:
        if self.length + width > self.capacity:  # a compiled index_copy_ past the end would not be caught
            raise ValueError(f"static cache of {self.capacity} tokens: {self.length} + {width} do not fit")
        self.length += width

    @torch.inference_mode()
    def last_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Append ``ids`` (``[batch, n]``, any n); the logits after the last of them, ``[batch, vocab]``."""
        if ids.shape[1] == 1:  # a dynamic dimension is never 1: one token goes through a one-wide block
            return self.block_logits(ids)[:, -1]
        self._advance(ids.shape[1])
        ids = _fresh(ids)
        torch._dynamo.mark_dynamic(ids, 1)
        return self._prefill(ids, self.cache)

    @torch.inference_mode()
    def block_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Append ``ids`` (``[batch, width]``, width static); every row's logits, ``[batch, width, vocab]``, valid
        until the next call (a CUDA graph's outputs are overwritten by its next replay)."""
        self._advance(ids.shape[1])
        return self._block(_fresh(ids), self.cache)
