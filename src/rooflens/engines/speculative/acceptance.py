"""Acceptance of a verified draft: which prefix of it the target keeps, and the target's own next token.

Greedy: the longest prefix of draft tokens equal to the target's argmax, then the target's argmax after
it (the correction token, or the bonus token when every draft token is kept). Sampling (Leviathan et al.
2023, Chen et al. 2023): keep draft token ``d_i`` with probability ``min(1, p(d_i) / q(d_i))``; on the first
rejection sample from ``norm(max(0, p - q))``; when all are kept sample the bonus token from ``p``. The
output distribution is then the target's; for prompt lookup, ``q`` is a point mass on the looked-up token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rooflens.engines.speculative.chooser import TokenChooser
from rooflens.engines.speculative.proposers import Draft


@dataclass(frozen=True)
class Verdict:
    """How many draft tokens the target kept, and the token it adds after them."""

    accepted: int
    next_token: torch.Tensor  # [1]: the correction token after a rejection, else the bonus token


def judge(target_logits: torch.Tensor, draft: Draft, chooser: TokenChooser) -> Verdict:
    """The verdict on ``draft`` given the target's logits over ``[last token, draft tokens]`` (``[g + 1, V]``)."""
    if chooser.sampling:
        return judge_sampled(chooser.probs(target_logits), draft, chooser)
    return judge_greedy(chooser.argmax(target_logits), draft)


def _kept_prefix(kept: list[bool]) -> int:
    return kept.index(False) if False in kept else len(kept)


def judge_greedy(target_choice: torch.Tensor, draft: Draft) -> Verdict:
    """``target_choice``: the target's argmax after each of ``[last token, draft tokens]`` (``[g + 1]``)."""
    g = draft.size
    n = _kept_prefix((target_choice[:g] == draft.tokens).tolist()) if g else 0
    return Verdict(n, target_choice[n : n + 1])


def judge_sampled(p: torch.Tensor, draft: Draft, chooser: TokenChooser) -> Verdict:
    """``p``: the target's distributions after each of ``[last token, draft tokens]`` (``[g + 1, V]``)."""
    g, tokens, q = draft.size, draft.tokens, draft.probs
    n = 0
    if g:
        idx = torch.arange(g, device=p.device)
        px = p[idx, tokens]
        qx = q[idx, tokens] if q is not None else torch.ones_like(px)
        u = torch.rand(g, device=p.device, generator=chooser.generator)
        n = _kept_prefix((u * qx < px).tolist())  # u < p/q without dividing by a tiny q
    if n == g:
        return Verdict(n, chooser.sample(p[g]))
    # rejected at position n: sample from norm(max(0, p - q))
    if q is not None:
        resid = (p[n] - q[n]).clamp_min(0)
    else:
        resid = p[n].clone()
        resid[tokens[n]] = 0.0
    if float(resid.sum()) <= 0.0:  # p == q numerically; a rejection then has probability ~0
        resid = p[n]
    return Verdict(n, chooser.sample(resid))
