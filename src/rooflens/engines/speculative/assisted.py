"""``hf_assisted``: transformers' own assisted generation, the reference implementation.

``hf_mode`` picks the candidate generator: ``draft_model`` (``assistant_model=``), ``prompt_lookup``
(``prompt_lookup_num_tokens=``) or ``early_exit`` (``assistant_early_exit=k``: the target drafts with its
first k layers). Statistics come from forward hooks: the target's last decoder layer runs only in
full-depth (target) passes, and its input length is the number of tokens that pass verifies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig

from rooflens.engines.base import TokenClock, synchronize
from rooflens.engines.decoding import ClockStreamer, decoder_layers, greedy_config, hooks
from rooflens.engines.options.speculative import SELF_RE, SpeculativeOptions
from rooflens.engines.speculative.stats import SpeculativeCounters


def assisted_config(opts: SpeculativeOptions, target: torch.nn.Module, max_new_tokens: int) -> GenerationConfig:
    """The target's generation config: greedy or plain temperature sampling, and the candidate generator."""
    gc = greedy_config(target, max_new_tokens)
    if opts.do_sample:
        gc.do_sample = True
        gc.temperature = opts.temperature
        gc.top_k = 0  # plain temperature sampling, like our loop (HF's default would be top_k=50)
        gc.top_p = 1.0
    if opts.mode == "prompt_lookup":
        gc.prompt_lookup_num_tokens = opts.gamma
        gc.max_matching_ngram_size = opts.max_ngram
    elif opts.mode == "early_exit":
        gc.assistant_early_exit = int(SELF_RE.match(opts.draft).group(1))  # type: ignore[union-attr]
    return gc


@contextmanager
def assistant_settings(
    opts: SpeculativeOptions, target: torch.nn.Module, draft: torch.nn.Module | None
) -> Iterator[dict[str, Any]]:
    """``generate``'s extra keyword arguments, with the assistant's gamma schedule set for the duration.

    AssistedCandidateGenerator reads the schedule from the ASSISTANT's generation_config, not from
    kwargs: the draft's own copy, or the target's (its own assistant under early exit), restored on exit.
    """
    if opts.mode == "prompt_lookup":
        yield {}
        return
    kwargs: dict[str, Any] = {"assistant_model": draft} if opts.mode == "draft_model" else {}
    assistant = draft if opts.mode == "draft_model" else target
    agc = assistant.generation_config  # type: ignore[union-attr]
    settings = {
        "num_assistant_tokens": opts.gamma,
        "num_assistant_tokens_schedule": "heuristic" if opts.adaptive_gamma else "constant",
        "assistant_confidence_threshold": opts.confidence_threshold,
    }
    old = {name: getattr(agc, name, None) for name in settings}
    try:
        for name, value in settings.items():
            setattr(agc, name, value)
        yield kwargs
    finally:
        for name in reversed(settings):
            setattr(agc, name, old[name])


@dataclass
class PassMeter:
    """Forward hooks that count target passes (and the tokens each verifies), draft passes and their times."""

    target: torch.nn.Module
    draft: torch.nn.Module | None
    early_exit: bool  # the target drafts with fewer layers itself
    device: torch.device
    verified: list[int] = field(default_factory=list)  # tokens fed to each target pass
    draft_calls: int = 0
    times: dict[str, float] = field(default_factory=lambda: {"target": 0.0, "draft": 0.0})
    _started: dict[int, tuple[str, float]] = field(default_factory=dict)

    def install(self, handles: list) -> None:
        base, _, layers = decoder_layers(self.target)
        full_depth = base.config.num_hidden_layers

        def last_layer_pre(_mod, args, kw):
            h = args[0] if args else kw["hidden_states"]
            self.verified.append(int(h.shape[1]))

        def role_of_target() -> str:  # early exit: the target module drafts with fewer layers
            return "draft" if base.config.num_hidden_layers < full_depth else "target"

        handles.append(layers[-1].register_forward_pre_hook(last_layer_pre, with_kwargs=True))
        self._time(handles, self.target, role_of_target if self.early_exit else (lambda: "target"))
        if self.draft is not None and not self.early_exit:
            self._time(handles, self.draft, lambda: "draft")

    def _time(self, handles: list, module: torch.nn.Module, role) -> None:
        def pre(mod, _args):
            r = role()
            if r == "draft":
                self.draft_calls += 1
            synchronize(self.device)
            self._started[id(mod)] = (r, time.perf_counter())

        def post(mod, _args, _out):
            r, t0 = self._started.pop(id(mod))
            synchronize(self.device)
            self.times[r] += time.perf_counter() - t0

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))


def count_assisted(
    c: SpeculativeCounters, meter: PassMeter, streamer: ClockStreamer, prompt_len: int, new_tokens: int
) -> None:
    """Add one assisted generation to the counters: the first target pass is the prefill and also verifies
    the first draft; each later one verifies its input minus the last emitted token."""
    passes = meter.verified
    c.generations += 1
    c.generated += new_tokens
    c.target_passes += len(passes)
    c.verify_passes += len(passes)
    c.draft_passes += meter.draft_calls
    c.drafted += (passes[0] - prompt_len if passes else 0) + sum(x - 1 for x in passes[1:])
    c.accepted += streamer.tokens - streamer.puts
    for n in streamer.sizes:
        c.count_accepted(n - 1)
    c.draft_time += meter.times["draft"]
    c.verify_time += meter.times["target"]


def generate_assisted(
    opts: SpeculativeOptions,
    target: torch.nn.Module,
    draft: torch.nn.Module | None,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    clock: TokenClock,
    counters: SpeculativeCounters,
    seed: int,
) -> torch.Tensor:
    """One assisted ``generate`` (RNG seeded with ``seed``, forked so the caller's is untouched); counts into
    ``counters``. Returns the new tokens, ``[1, max_new_tokens]``."""
    device = input_ids.device
    gc = assisted_config(opts, target, max_new_tokens)
    meter = PassMeter(target, draft if opts.mode == "draft_model" else None, opts.mode == "early_exit", device)
    streamer = ClockStreamer(clock)
    with (
        assistant_settings(opts, target, draft) as kwargs,
        hooks() as handles,
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
    ):
        meter.install(handles)
        torch.manual_seed(seed)
        out = target.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=gc,
            streamer=streamer,
            **kwargs,
        )
    new = out[:, input_ids.shape[1] :]
    count_assisted(counters, meter, streamer, input_ids.shape[1], int(new.shape[1]))
    return new
