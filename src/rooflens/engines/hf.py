"""The baseline: plain Hugging Face ``generate``, greedy; or, with ``compile: true``, rooflens's compiled decode
loop (:mod:`rooflens.engines.compiled`: static cache, compiled prefill and decode step, gpt-fast style)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig

from rooflens.engines.base import Engine, TokenClock
from rooflens.engines.compiled import CompiledDecoder, CompileLog
from rooflens.engines.decoding import ClockStreamer, greedy_config
from rooflens.engines.options.hf import HFOptions
from rooflens.engines.registry import register
from rooflens.engines.stat_table import StatSpec, stats_from_table
from rooflens.results.stat import EngineStat

COMPILE_STATS = {
    "compile_time_s": StatSpec(
        "s",
        "wall time of compiling (torch.compile, inductor cache at {cache}) and {warm_run} per cell shape, "
        "before the cell's repetitions, never inside a timed one: {shapes}",
    ),
    "compile_mode": StatSpec("", "torch.compile mode as run on this device ({why})"),
}


def compile_record(
    log: CompileLog, mode: str | None, asked: str, cache: Path, warm_run: str = "one short generation"
) -> dict[str, EngineStat]:
    """:data:`COMPILE_STATS` of a compiled loop: its log, the mode it ran (None: inductor's default), the mode the
    options asked for, its inductor cache, and what its warm-up ran besides compiling."""
    why = "CUDA graphs exist only on a GPU" if mode is None and asked != "default" else "as asked"
    values = {"compile_time_s": log.seconds, "compile_mode": mode or "default"}
    return stats_from_table(
        COMPILE_STATS, values, cache=cache, shapes=log.describe() or "none", why=why, warm_run=warm_run
    )


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
            self._decoder = CompiledDecoder(self.module, self.model.device, self.options.compile_mode)
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
        d = self._decoder
        if d is None:
            return {}
        return compile_record(d.log, d.mode, self.options.compile_mode, d.cache_folder)

    def stats(self) -> dict[str, EngineStat]:
        return self.compile_stats()
