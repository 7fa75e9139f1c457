"""``prompt_len: from-data``: a prompt set's own lengths decide the timed prompts' length.

The engines take a ``[batch, length]`` tensor without a padding mask, so the timed prompts of a cell share one
length: the median of the set's encoded prompts (through the chat template when the workload asks for it), each
fitted to it by the set's fit rule. The workload keeps the p10/p50/p90 in ``prompt_lengths``; the task-quality
pass (:mod:`rooflens.bench.task_quality`) prompts every item at its own length whatever ``prompt_len`` is.
"""

from __future__ import annotations

from typing import Any

import torch

from rooflens.bench.preflight import PreflightError
from rooflens.config import Experiment, Workload
from rooflens.data.prompt_sets import encode, load_prompt_set
from rooflens.models.loader import load_tokenizer


def length_percentiles(lengths: list[int]) -> dict[str, float]:
    """p10 / p50 / p90 of token counts (linear interpolation between order statistics)."""
    t = torch.tensor(lengths, dtype=torch.float64)
    return {f"p{q}": float(torch.quantile(t, q / 100)) for q in (10, 50, 90)}


def _resolved(w: Workload, tokenizer: Any) -> Workload:
    lengths = [len(encode(item, tokenizer, w.chat_template)) for item in load_prompt_set(w.prompt)]
    spread = length_percentiles(lengths)
    return w.model_copy(update={"prompt_len": max(1, round(spread["p50"])), "prompt_lengths": spread})


def resolve_prompt_lengths(exp: Experiment) -> Experiment:
    """``exp`` with every ``prompt_len: from-data`` replaced by its set's median length (unchanged without one)."""
    if not any(w.prompt_len == "from-data" for w in exp.workloads):
        return exp
    tokenizer = load_tokenizer(exp.model)
    if tokenizer is None:
        raise PreflightError(f"prompt_len: from-data counts tokens, and {exp.model.label} has no tokenizer")
    workloads = [_resolved(w, tokenizer) if w.prompt_len == "from-data" else w for w in exp.workloads]
    return exp.model_copy(update={"workloads": workloads})
