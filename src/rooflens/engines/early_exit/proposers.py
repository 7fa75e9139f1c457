"""Where an exit's k candidate tokens come from.

``head``      rooflens's trained draft head (:mod:`.draft_head`): top-k over its trimmed vocabulary.
``lookup``    prompt lookup, free: the tokens that followed earlier occurrences of the last n-gram
              (longest n first, latest occurrence first), then the most frequent output tokens.
``head+lookup`` up to ceil(k/2) prompt-lookup tokens, then the draft head's best.
``self:<k>``  the target's own first k layers: top-k of the full LM head after layer k - 1 (those
              layers are not run twice: the decode step goes on from there).

Every proposer gives exactly ``k`` distinct ids, so the predictors' features always have 3·k values.
"""

from __future__ import annotations

import torch


def fill_candidates(found: list[int], k: int, ranked: torch.Tensor) -> torch.Tensor:
    """``found`` (distinct, best first) completed to ``k`` ids from ``ranked`` (most frequent tokens first)."""
    out = list(dict.fromkeys(found))[:k]
    if len(out) < k:
        seen = set(out)
        for t in ranked[: k + len(out)].tolist():
            if t not in seen:
                out.append(t)
                seen.add(t)
                if len(out) == k:
                    break
    return torch.tensor(out, dtype=torch.long, device=ranked.device)


def lookup_candidates(seq: torch.Tensor, k: int, ranked: torch.Tensor, max_ngram: int = 3) -> torch.Tensor:
    """Prompt-lookup candidates for the token after 1-D ``seq`` (see the module docstring)."""
    return fill_candidates(lookup_found(seq, k, max_ngram), k, ranked)


def mixed_candidates(seq: torch.Tensor, head_best: list[int], k: int, ranked: torch.Tensor) -> torch.Tensor:
    """``head+lookup``: up to ceil(k/2) prompt-lookup tokens, then the draft head's ``head_best``."""
    return fill_candidates(lookup_found(seq, (k + 1) // 2)[: (k + 1) // 2] + head_best, k, ranked)


def lookup_found(seq: torch.Tensor, k: int, max_ngram: int = 3) -> list[int]:
    """Up to about ``k`` distinct tokens that followed earlier occurrences of the sequence's last n-gram."""
    L = int(seq.numel())
    found: list[int] = []
    for n in range(min(max_ngram, L - 1), 0, -1):
        windows = seq[: L - 1].unfold(0, n, 1)  # starts 0..L-1-n: every earlier n-gram with a successor
        hits = (windows == seq[L - n :]).all(dim=1).nonzero().flatten()
        if hits.numel():
            found += seq[hits.flip(0) + n].tolist()  # latest occurrence first
            if len(set(found)) >= k:
                break
    return list(dict.fromkeys(found))
