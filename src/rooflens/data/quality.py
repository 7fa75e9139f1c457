"""Output quality: perplexity on held-out text, and agreement with the baseline's greedy tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rooflens.data.prompts import corpus_ids

PPL_WINDOW = 256


def heldout_ids(tokenizer) -> torch.Tensor:
    """The shipped held-out text (never used for prompts) as one sequence of token ids."""
    return torch.tensor(corpus_ids(tokenizer, "heldout"), dtype=torch.long)


@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, window: int = PPL_WINDOW) -> tuple[float, int]:
    """exp(mean NLL) over non-overlapping windows of ``window`` tokens; returns (ppl, tokens scored).

    Each window is scored on its own (the first token of a window has no context and is not
    scored), so the figure depends on ``window``; records say which one was used.
    """
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window].unsqueeze(0).to(device)
        if chunk.shape[1] < 2:
            break
        logits = model(chunk).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum").item()
        count += chunk.shape[1] - 1
    return math.exp(nll / count), count


@dataclass(frozen=True)
class Agreement:
    fraction: float  # matching tokens / all tokens
    first_divergence: int  # earliest position (0-based) where any row differs; gen_len if none


def rouge_l(tokens: Sequence[int], reference: Sequence[int]) -> float:
    """ROUGE-L F1 of two token sequences (Lin 2004, beta = 1): from their longest common subsequence.

    PMPD's quality metric; unlike position-wise agreement, one early difference does not zero the rest.
    """
    if not tokens or not reference:
        return 0.0
    prev = [0] * (len(reference) + 1)
    for t in tokens:
        cur = [0]
        for j, r in enumerate(reference):
            cur.append(prev[j] + 1 if t == r else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(tokens), lcs / len(reference)
    return 2 * p * r / (p + r)


def agreement(tokens: torch.Tensor, reference: torch.Tensor) -> Agreement:
    """Position-wise agreement of two [batch, n] token tensors (greedy outputs on the same prompts)."""
    if tokens.shape != reference.shape:
        raise ValueError(f"token shapes differ: {tuple(tokens.shape)} vs reference {tuple(reference.shape)}")
    same = tokens.cpu() == reference.cpu()
    n = same.shape[1]
    first = [int((~row).nonzero()[0]) if not bool(row.all()) else n for row in same]
    return Agreement(fraction=float(same.float().mean()), first_divergence=min(first))
