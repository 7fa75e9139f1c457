"""The baseline: plain Hugging Face ``generate``, greedy; optionally static KV cache + torch.compile."""

from __future__ import annotations

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import CompileConfig

from rooflens.engines.base import Engine, TokenClock
from rooflens.engines.decoding import ClockStreamer, greedy_config
from rooflens.engines.options.hf import HFOptions
from rooflens.engines.registry import register


@register
class HFEngine(Engine):
    name = "hf"
    summary = "Hugging Face generate(), greedy, eager (the baseline); optional static cache + torch.compile"
    Options = HFOptions
    lossless = True  # it is the reference
    examples = ({}, {"cache": "static"})

    @property
    def module(self) -> torch.nn.Module:
        """The model ``generate`` runs on; engines that transform weights (quantized) override it."""
        return self.model.model

    def scoring_model(self) -> torch.nn.Module:
        return self.module

    def profiled_modules(self) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
        return self.module, {}

    def generation_config(self, max_new_tokens: int) -> GenerationConfig:
        cc = None
        if self.options.compile:
            cc = CompileConfig(fullgraph=True, mode=self.options.compile_mode)
            # transformers only auto-compiles on accelerators; this (documented-as-testing) flag
            # extends it to the CPU so that `compile: true` means the same thing everywhere.
            cc._compile_all_devices = True
        static = self.options.cache == "static"
        return greedy_config(self.module, max_new_tokens, static_cache=static, compile_config=cc)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        out = self.module.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=self.generation_config(max_new_tokens),
            streamer=ClockStreamer(clock),
        )
        return out[:, input_ids.shape[1] :]
