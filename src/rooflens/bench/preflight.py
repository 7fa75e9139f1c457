"""Checks made before anything is measured: the context fits the model, a cell fits in memory.

The memory estimate counts what a cell really allocates beside the loaded model: the engine's
own weights (a draft model, a quantized copy), the KV cache for batch x (prompt + gen), the
largest activations of one layer's prefill (eager attention materialises the score matrix), and
the float32 logits (the perplexity window is the largest for real-weights models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil
import torch

from rooflens.config import Experiment
from rooflens.data.quality import PPL_WINDOW
from rooflens.roofline.analytic import ModelShape, Precision, kv_cache_bytes

HEADROOM = 0.9  # use at most this fraction of the memory that is free now


class PreflightError(ValueError):
    """The experiment cannot run with this model as written; the message names the field and what is allowed."""


def context_limit(config: Any) -> tuple[int, str] | None:
    """The model's maximum sequence length and the config field it comes from (None when unknown)."""
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value, attr
    return None


def check_context(exp: Experiment, config: Any, model_label: str) -> None:
    """Every workload's prompt + generation must fit the model's context."""
    limit = context_limit(config)
    if limit is None:
        return
    n, field = limit
    problems = [
        f"workloads[{i}] ({w.display}): prompt_len {w.prompt_len} + gen_len {w.gen_len} = {w.prompt_len + w.gen_len} "
        f"tokens exceed the context of {model_label} ({field} = {n}); allowed: prompt_len + gen_len <= {n}"
        for i, w in enumerate(exp.workloads)
        if w.prompt_len + w.gen_len > n
    ]
    if problems:
        raise PreflightError("\n".join(problems))


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a cell allocates beside the loaded model, by part."""

    engine_weights: int
    engine_weights_what: str
    kv_cache: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.engine_weights + self.kv_cache + self.activations + self.logits

    def describe(self, batch: int, prompt_len: int, gen_len: int) -> str:
        parts = [
            f"KV cache {_gb(self.kv_cache)} for batch {batch} x (prompt {prompt_len} + gen {gen_len}) tokens",
            f"activations {_gb(self.activations)}",
            f"logits {_gb(self.logits)}",
        ]
        if self.engine_weights:
            parts.insert(0, f"{self.engine_weights_what} {_gb(self.engine_weights)}")
        return ", ".join(parts)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def cell_memory_need(
    config: Any,
    dtype: torch.dtype,
    *,
    batch: int,
    prompt_len: int,
    gen_len: int,
    real_weights: bool,
    engine_weights: tuple[int, str] = (0, ""),
) -> MemoryNeed:
    """Estimate what one cell allocates (engine weights only, for a model type the analytic model does not know)."""
    elem = torch.empty((), dtype=dtype).element_size()
    try:
        s = ModelShape.from_config(config)
    except (ValueError, AttributeError, TypeError):
        return MemoryNeed(engine_weights[0], engine_weights[1], 0, 0, 0)
    kv = int(kv_cache_bytes(s, batch=batch, seq_len=prompt_len + gen_len, precision=Precision(kv_bits=8.0 * elem)))
    width = 3 * s.hidden + s.q_dim + 2 * s.kv_dim + 2 * s.intermediate  # residual, norm, q/k/v, attn out, MLP
    scores = batch * s.num_heads * prompt_len * prompt_len  # one layer's prefill attention probabilities (eager)
    activations = (batch * prompt_len * width + 2 * scores) * elem
    logits = max(batch, PPL_WINDOW if real_weights else 0) * s.vocab * 4
    return MemoryNeed(engine_weights[0], engine_weights[1], kv, activations, logits)


def free_memory(device: torch.device) -> tuple[int, str]:
    """Bytes free now on ``device`` and what they are."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory on {device}"
    return int(psutil.virtual_memory().available), "available RAM"


def memory_shortfall(
    need: MemoryNeed, device: torch.device, *, batch: int, prompt_len: int, gen_len: int
) -> str | None:
    """Why the cell would not fit (None when it does), with the numbers."""
    have, where = free_memory(device)
    if need.total <= HEADROOM * have:
        return None
    return (
        f"would not fit in memory: needs ~{_gb(need.total)} beside the loaded model "
        f"({need.describe(batch, prompt_len, gen_len)}); {where} is {_gb(have)} "
        f"(at most {HEADROOM:.0%} of it is used); try a smaller batch, shorter sequences or another device"
    )
