"""Output quality of a measured cell: agreement with the baseline engine's greedy tokens, and perplexity."""

from __future__ import annotations

import torch

from rooflens.bench.cells import Cell
from rooflens.data.quality import PPL_WINDOW, agreement, heldout_ids, perplexity, rouge_l
from rooflens.engines.base import Engine
from rooflens.models.loader import LoadedModel
from rooflens.results.record import QualityResult, Quantity

SharedPerplexity = dict[torch.nn.Module, Quantity]
"""Perplexity of a loaded model itself, measured once for every engine that scores it (the lossless ones)."""


def measure_perplexity(engine: Engine, model: LoadedModel, shared: SharedPerplexity) -> Quantity | str:
    """Perplexity of the engine's scoring model on the held-out text, or why there is none."""
    if model.info.weights != "real" or model.tokenizer is None:
        return "random weights or no tokenizer"
    scorer = engine.scoring_model()
    if scorer is None:
        return f"engine '{engine.name}' has no single scoring model"
    if scorer is model.model and model.model in shared:
        return shared[model.model]  # lossless engines score the loaded model itself: once
    ppl, count = perplexity(scorer, heldout_ids(model.tokenizer))
    result = Quantity(
        value=ppl,
        unit="",
        source="measured",
        how=f"exp(mean NLL) over {count} tokens of the shipped held-out text, windows of {PPL_WINDOW}",
    )
    if scorer is model.model:
        shared[model.model] = result
    return result


def quality_of(
    cell: Cell, baseline: str, tokens: torch.Tensor, reference: torch.Tensor | None, ppl: Quantity | str | None
) -> QualityResult:
    """``tokens`` (the cell's first measured repetition) against ``reference`` (the baseline engine's on the
    same prompts, None when it has no successful run of this cell), and the engine's perplexity."""
    notes = []
    if isinstance(ppl, str):
        notes.append(f"perplexity n/a: {ppl}")
    if reference is None:
        notes.append(f"agreement n/a: the baseline engine '{baseline}' has no successful run of this cell")
    result = QualityResult(
        reference=f"greedy tokens of the baseline engine '{baseline}' on the same prompts (first measured repetition)",
        perplexity=ppl if isinstance(ppl, Quantity) else None,
        note="; ".join(notes) or None,
    )
    if reference is None:
        return result
    a = agreement(tokens, reference)
    result.agreement = Quantity(
        value=a.fraction,
        unit="fraction",
        source="measured",
        how="matching tokens / all generated tokens, position by position",
    )
    result.first_divergence = Quantity(
        value=a.first_divergence,
        unit="token",
        source="measured",
        how=f"earliest position where any row differs ({cell.workload.gen_len} = never)",
    )
    scores = [rouge_l(row.tolist(), ref.tolist()) for row, ref in zip(tokens.cpu(), reference.cpu())]
    result.rouge_l = Quantity(
        value=sum(scores) / len(scores),
        unit="fraction",
        source="measured",
        how="ROUGE-L F1 (longest common subsequence) of the greedy tokens vs the baseline's, mean over rows",
    )
    return result
