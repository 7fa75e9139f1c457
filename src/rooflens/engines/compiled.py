"""A compiled decode loop for the engines (gpt-fast's ``generate.py`` on a Hugging Face causal LM).

A static KV cache, and two functions compiled with ``torch.compile(fullgraph=True)``: the prefill, its
sequence length dynamic (one graph per batch size, whatever the prompt), and the one-token decode step with
static shapes (one graph per batch size and cache length; the cache length is rounded up to a multiple of
:data:`CACHE_BUCKET` so that nearby cells share it). Inductor's C++/OpenMP kernels on a CPU, the step's calls
made from inductor's C++ wrapper; on a GPU the ``reduce-overhead`` mode adds CUDA graphs (:func:`step_options`).
The loop around the step is plain Python, one clock tick per token, greedy with EOS masked as in every engine
(:func:`rooflens.engines.decoding.eos_masked`).

Compiling happens in :meth:`CompiledDecoder.warm`, which the harness calls before a cell's first repetition
(:meth:`rooflens.engines.base.Engine.warm`), never inside a timed one; its wall time is reported. Inductor's
on-disk cache lives under rooflens's cache folder, so a later run of the same shapes loads its kernels instead
of generating them.

:class:`CompiledForward` is the piece for loops that judge logits themselves (speculative decoding): a model's
compiled prefill and fixed-width blocks on its own static cache, whose write position can be rewound.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import StaticCache

from rooflens.engines.base import TokenClock
from rooflens.engines.decoding import eos_masked, eos_token_ids
from rooflens.engines.stat_table import StatSpec, stats_from_table
from rooflens.fsutil import cache_dir, own_folder
from rooflens.kernels.dense import gemv_mode
from rooflens.kernels.linear import resolve_lowbit_layers
from rooflens.results.stat import EngineStat

CACHE_BUCKET = 128  # static cache lengths are rounded up to this: cells of nearby lengths share a decode graph
# Dynamo keeps compiled code per code object, and every decoder shares these methods' code: each engine and shape
# is one more entry. Past torch's default of 8 it would run the step eager, under a compiled engine's name.
RECOMPILE_LIMIT = 64
INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
GQA_ENV = "TRANSFORMERS_SDPA_FORCE_GQA"  # Hugging Face's switch: its sdpa attention passes enable_gqa=True


def inductor_cache() -> Path:
    """Inductor's on-disk cache: the user's ``$TORCHINDUCTOR_CACHE_DIR`` when they set one before rooflens was
    imported, else rooflens's cache folder (created private: inductor loads the code it finds there). Torch writes
    its own default into the environment at its first compile, so the variable alone cannot tell the two apart."""
    import rooflens

    if rooflens.USER_INDUCTOR_CACHE:
        folder = Path(rooflens.USER_INDUCTOR_CACHE)
    else:
        folder = own_folder(cache_dir("inductor"), "torch.compile loads the compiled kernels it finds there")
    os.environ[INDUCTOR_ENV] = str(folder)
    return folder


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


COMPILE_STATS = {
    "compile_time_s": StatSpec(
        "s",
        "wall time of compiling (torch.compile, inductor cache at {cache}) and {warm_run} per cell shape, "
        "before the cell's repetitions, never inside a timed one: {shapes}",
    ),
    "compile_mode": StatSpec("", "torch.compile mode as run on this device ({why})"),
    "compile_fp32_linear": StatSpec("", "what the compiled graphs' fp32 linear layers call (option compile_gemv)"),
    "compile_step_calls": StatSpec("", "how a per-token graph makes its calls and what its guards check"),
}


def compile_record(
    log: CompileLog,
    mode: str | None,
    asked: str,
    cache: Path,
    gemv: str = "torch's linear",
    warm_run: str = "one short generation",
    step: str = "",
) -> dict[str, EngineStat]:
    """:data:`COMPILE_STATS` of a compiled loop: its log, the mode it ran (None: inductor's default), the mode the
    options asked for, its inductor cache, what its fp32 linears call, what its warm-up ran besides compiling, and
    how its per-token graphs call (:func:`step_calls`)."""
    why = "CUDA graphs exist only on a GPU" if mode is None and asked != "default" else "as asked"
    values = {"compile_time_s": log.seconds, "compile_mode": mode or "default", "compile_fp32_linear": gemv}
    if step:
        values["compile_step_calls"] = step
    shapes = log.describe() or "none"
    return stats_from_table(COMPILE_STATS, values, cache=cache, shapes=shapes, why=why, warm_run=warm_run)


def compile_stats(decoder: CompiledDecoder | None, asked_mode: str) -> dict[str, EngineStat]:
    """How a :class:`CompiledDecoder` compiled, for an engine's ``stats()`` (empty when it has not)."""
    if decoder is None:
        return {}
    return compile_record(decoder.log, decoder.mode, asked_mode, decoder.cache_folder, decoder.gemv, step=decoder.step)


def prepare_kernels(model: torch.nn.Module, device: torch.device, gemv: bool) -> tuple[Callable[[], Any], str]:
    """Before tracing (neither is traceable): the low-bit layers' kernels chosen (and built), and what to enter around
    each call of a graph for the fp32 linears (:func:`rooflens.kernels.dense.gemv_mode`), with its words."""
    resolve_lowbit_layers(model, device)
    return gemv_mode(device, gemv)


def step_options(mode: str | None, device: torch.device, fixed_modules: bool) -> dict[str, Any]:
    """Inductor's options for a static graph called once per token (or per layer of a token), beside ``mode``'s own.

    A decode step of SmolLM2 calls ~600 generated kernels and operators. Two per-call costs then weigh on a CPU,
    measured on a 2-core AMD EPYC (rl 4-bit, batch 1, median of 31 steps): inductor's Python wrapper, which makes
    those calls (the C++ wrapper took the step from 16.8 ms to 12.8), and dynamo's guards, ~10,000 of them on
    the modules' attributes, parameters and hooks (skipping them took it from 18.1 to 16.8 ms).

    - ``cpp_wrapper`` on a CPU: the graph's calls made from C++. On a GPU CUDA graphs replay them (``mode``).
    - ``fixed_modules``: no guards on the model's modules. Only for a model whose modules nothing changes after
      compiling: mixed precision switches a rung by setting an attribute, so its steps keep them.
      :func:`compiled` gives such a graph a code object of its own, so another loop's graphs are never tried on it.
    """
    options: dict[str, Any] = dict(torch._inductor.list_mode_options(mode or "default"))
    if device.type == "cpu":
        options["cpp_wrapper"] = True
    if fixed_modules:
        options["guard_filter_fn"] = torch.compiler.skip_guard_on_all_nn_modules_unsafe
    return options


def step_calls(mode: str | None, device: torch.device, fixed_modules: bool) -> str:
    """:func:`step_options` in words, for the record."""
    options = step_options(mode, device, fixed_modules)
    calls = (
        "inductor's C++ wrapper"
        if options.get("cpp_wrapper")
        else "CUDA graph replays"
        if options.get("triton.cudagraphs")
        else "inductor's Python wrapper"
    )
    guards = "no guards on the model's modules" if fixed_modules else "dynamo's full guards"
    in_place = attention_switch(device) is GqaInPlace
    attention = "GQA keys and values read in place (sdpa's enable_gqa)" if in_place else "repeat_kv"
    return f"{calls}; {guards}; {attention}"


class GqaInPlace:
    """While entered, Hugging Face's sdpa attention hands a GQA model's key and value heads to sdpa as they are
    (``enable_gqa=True``; a CPU only, where sdpa's flash kernel takes it with a mask).

    Traced by dynamo, Hugging Face's attention otherwise copies each KV head once per query head of its group
    (``repeat_kv``): for SmolLM2 (9 query heads, 3 KV heads) on a 128-token static cache, 0.6 MB per layer and step
    (the fused kernel holding the copy took 47 us per layer under the torch profiler). Measured on a 2-core AMD EPYC,
    the compiled rl 4-bit decode step of SmolLM2 went from 12.8 to 10.2 ms once the copy was gone (median of 31
    steps). Eager, Hugging Face folds one query token's heads onto the KV heads instead, which it does not do under
    dynamo. sdpa with ``enable_gqa`` gives the floats of the repeated heads' (checked bit for bit on SmolLM2's
    shapes).

    Hugging Face reads the switch when dynamo traces the attention, so every compiled call enters it: a trace at any
    call (a recompile) sees it. Not reentrant across threads (it sets a process environment variable)."""

    def __enter__(self) -> None:
        self._old = os.environ.get(GQA_ENV)
        os.environ[GQA_ENV] = "1"

    def __exit__(self, *exc: object) -> None:
        if self._old is None:
            os.environ.pop(GQA_ENV, None)
        else:
            os.environ[GQA_ENV] = self._old


def attention_switch(device: torch.device) -> Callable[[], Any]:
    """What a compiled graph's calls enter for attention on ``device``: :class:`GqaInPlace` on a CPU; on a GPU nothing
    (there sdpa with a mask and ``enable_gqa`` would fall back to its math kernel)."""
    return GqaInPlace if device.type == "cpu" else contextlib.nullcontext


def own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a function or a bound method) with a code object of its own. Dynamo keeps compiled graphs per code
    object and tells them apart by their guards: a graph compiled without guards on the modules must be the only
    one its code object holds."""
    func = getattr(fn, "__func__", fn)
    name = f"{func.__name__}_{next(_OWN_CODE)}"
    code = func.__code__.replace(co_name=name, co_qualname=name)
    copy = types.FunctionType(code, func.__globals__, name, func.__defaults__, func.__closure__)
    return types.MethodType(copy, fn.__self__) if hasattr(fn, "__self__") else copy


_OWN_CODE = itertools.count()


def compiled(
    kernels: Callable[[], Any],
    fn: Callable[..., Any],
    *,
    mode: str | None,
    device: torch.device,
    per_token: bool = False,
    fixed_modules: bool = False,
    **options: Any,
) -> Callable[..., Any]:
    """``torch.compile(fn, **options)`` in ``mode``, called with ``kernels()`` entered (:func:`prepare_kernels`):
    dynamo traces the fp32-linear mode into the graph and guards on it, so every call must enter the same one; and
    :func:`attention_switch`'s context.
    ``per_token``: a static graph called once per token or per layer, compiled with :func:`step_options`
    (``fixed_modules`` applies to such a graph only)."""
    if per_token:
        fn = own_code(fn) if fixed_modules else fn
        graph = torch.compile(fn, options=step_options(mode, device, fixed_modules), **options)
    else:
        graph = torch.compile(fn, mode=mode, **options)

    attention = attention_switch(device)

    def call(*args: Any) -> Any:
        with kernels(), attention():
            return graph(*args)

    return call


def eos_bias(vocab_size: int, eos: list[int], device: torch.device) -> torch.Tensor:
    """What a compiled graph adds to float32 logits to mask EOS as :func:`rooflens.engines.decoding.mask_eos` does
    (-inf at the EOS ids; zeros inside :func:`rooflens.engines.decoding.eos_allowed`): read when a generation starts,
    since a graph cannot read the context variable."""
    bias = torch.zeros(vocab_size, device=device)
    if eos_masked() and eos:
        bias[eos] = float("-inf")
    return bias


def static_cache(config: Any, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> StaticCache:
    """A static KV cache of ``length`` tokens for a model of ``config``, its tensors allocated now, not at the first
    update: a first (warm-up) graph traced on an empty cache would not match the filled one of every later
    generation, and the first timed prefill would compile again."""
    cache = StaticCache(config=config, max_cache_len=length)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache.early_initialization(batch, heads, head_dim, dtype, device)
    return cache


@dataclass
class CompileLog:
    """What compiling cost: wall seconds of each warm-up (compiling and one short generation), per cell shape."""

    seconds: float = 0.0
    shapes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return ", ".join(self.shapes)


class CompiledDecoder:
    """Greedy generation of exactly N tokens through a compiled prefill and decode step on a static cache."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        mode: str = "reduce-overhead",
        gemv: bool = True,
        fixed_modules: bool = False,
    ):
        """``fixed_modules``: nothing changes ``model``'s modules after compiling (:func:`step_options`)."""
        self.model = model
        self.device = device
        self.mode = compile_mode(mode, device)
        self.cache_folder = inductor_cache()
        kernels, self.gemv = prepare_kernels(model, device, gemv)
        self.step = step_calls(self.mode, device, fixed_modules)
        self.log = CompileLog()
        self._caches: dict[tuple[int, int], StaticCache] = {}
        self._warm: set[tuple[int, int, int]] = set()
        self._eos = eos_token_ids(model)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        torch._dynamo.config.fail_on_recompile_limit_hit = True  # an error, never an eager step called compiled
        # two functions, so that each has its own compiled code: the prefill's length is dynamic, the step's static
        graph = partial(compiled, kernels, fullgraph=True, mode=self.mode, device=device)
        static = partial(graph, dynamic=False, per_token=True, fixed_modules=fixed_modules)
        dynamic = partial(graph, dynamic=None)
        self._prefill, self._decode = dynamic(self._prefill_step), static(self._decode_step)
        # the same, logits out, for loops that read them (a scheduler): see :meth:`session`
        self._prefill_logits, self._decode_logits = dynamic(self._logits_prefill), static(self._logits_step)

    def _logits(self, ids: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.model(
            input_ids=ids, past_key_values=cache, cache_position=positions, use_cache=True, logits_to_keep=1
        )
        return out.logits[:, -1].float()

    def _logits_prefill(self, ids: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        return self._logits(ids, positions, cache)

    def _logits_step(self, ids: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        return self._logits(ids, positions, cache)

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
        if key not in self._caches:
            dtype = self.model.get_input_embeddings().weight.dtype  # the activations', hence the K/V's
            self._caches[key] = static_cache(self.model.config, batch, length, dtype, self.device)
        return self._caches[key]

    def _eos_bias(self) -> torch.Tensor:
        return eos_bias(int(self.model.config.vocab_size), self._eos, self.device)

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

    def session(self, batch: int, prompt_len: int, n_new: int) -> StaticSession:
        """One generation on a reset static cache, stepped by the caller, logits out (float32)."""
        cache = self._cache(batch, cache_length(prompt_len, n_new))
        cache.reset()
        return StaticSession(self, cache, torch.arange(prompt_len + n_new, device=self.device))

    def log_warm(self, what: str, seconds: float) -> None:
        """Count a warm-up run by the caller (an engine that compiles through :meth:`session`)."""
        self.log.seconds += seconds
        self.log.shapes.append(f"{what}: {seconds:.1f} s")


@dataclass
class StaticSession:
    """A generation in progress on a compiled decoder's static cache: the prefill, then one token per step."""

    decoder: CompiledDecoder
    cache: StaticCache
    positions: torch.Tensor
    length: int = 0  # tokens in the cache

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """The logits after ``ids`` ([batch, vocab]), the cache filled with them."""
        n = ids.shape[1]
        if n > 1:
            torch._dynamo.mark_dynamic(ids, 1)
            logits = self.decoder._prefill_logits(ids, self.positions[:n], self.cache)
        else:
            logits = self.decoder._decode_logits(ids, self.positions[:1], self.cache)
        self.length = n
        return logits.clone()

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """The logits after one more token ([batch, 1])."""
        at = self.length
        logits = self.decoder._decode_logits(token, self.positions[at : at + 1], self.cache)
        self.length += 1
        return logits.clone()  # a CUDA graph's output is overwritten by its next replay


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

    def __init__(self, model: torch.nn.Module, device: torch.device, mode: str = "reduce-overhead", gemv: bool = True):
        self.model = model
        self.device = device
        self.mode = compile_mode(mode, device)
        self.cache_folder = inductor_cache()
        kernels, self.gemv = prepare_kernels(model, device, gemv)
        self.step = step_calls(self.mode, device, fixed_modules=False)
        self.length = 0
        self._cache: StaticCache | None = None
        self._caches: dict[tuple[int, int], StaticCache] = {}
        # every (model, width, cache length) is a graph of its own: allow more of them than dynamo's default of 8
        graph = partial(
            compiled, kernels, fullgraph=True, mode=self.mode, device=device, recompile_limit=RECOMPILE_LIMIT
        )
        self._prefill = graph(self._prefill_rows, dynamic=None)
        self._block = graph(self._block_rows, dynamic=False, per_token=True)

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
