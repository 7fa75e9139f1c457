"""The baseline: plain Hugging Face ``generate``, greedy; or, with ``compile: true``, rooflens's compiled decode
loop (:mod:`rooflens.engines.compiled`: static cache, compiled prefill and decode step, gpt-fast style)."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from rooflens.engines.base import Engine, TokenClock
from rooflens.engines.compiled import CompiledDecoder, compile_stats
from rooflens.engines.decoding import ClockStreamer, greedy_config
from rooflens.engines.options.hf import HFOptions
from rooflens.engines.registry import register
from rooflens.results.stat import EngineStat


@register
class HFEngine(Engine):
    name = "hf"
    summary = "Hugging Face generate(), greedy, eager (the baseline); or a compiled decode loop on a static cache"
    Options = HFOptions
    lossless = True  # it is the reference
    examples = ({}, {"cache": "static"})

    _decoder: CompiledDecoder | None = None

    @property
    def module(self) -> torch.nn.Module:
        """The model ``generate`` runs on; engines that transform weights (quantized) override it."""
        return self.model.model

    def scoring_model(self) -> torch.nn.Module:
        return self.module

    def profiled_modules(self) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
        return self.module, {}

    def generation_config(self, max_new_tokens: int) -> GenerationConfig:
        return greedy_config(self.module, max_new_tokens, static_cache=self.options.cache == "static")

    def decoder(self) -> CompiledDecoder:
        """The compiled loop on :attr:`module` (made at first use, after ``prepare``)."""
        if self._decoder is None:
            o = self.options
            self._decoder = CompiledDecoder(
                self.module, self.model.device, o.compile_mode, o.compile_gemv, fixed_modules=True
            )
        return self._decoder

    def warm(self, prompts: torch.Tensor, n_new: int) -> None:
        if self.options.compile:
            self.decoder().warm(prompts, n_new)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        if self.options.compile:
            return self.decoder().generate(input_ids, max_new_tokens, clock)
        out = self.module.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=self.generation_config(max_new_tokens),
            streamer=ClockStreamer(clock),
        )
        return out[:, input_ids.shape[1] :]

    def compile_stats(self) -> dict[str, EngineStat]:
        """How compiling went (empty when this engine is not compiled)."""
        return compile_stats(self._decoder, self.options.compile_mode)

    def stats(self) -> dict[str, EngineStat]:
        return self.compile_stats()
