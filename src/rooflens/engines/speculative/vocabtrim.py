"""VocabTrim (Goel et al., 2025) for draft models (option ``draft_vocab``).

The draft's LM head keeps only the rows of the N tokens the target emits most (ranked once at prepare by
:func:`rooflens.engines.vocabulary.target_ranking`), so each draft step reads N x hidden head weights instead
of V x hidden. The draft then proposes only those tokens, mapped back to full-vocabulary ids; the target
verifies with its full head, so greedy output is unchanged and only acceptance can fall. Under sampling the
draft's distribution is the softmax over the N tokens (zero elsewhere): speculative sampling still returns
the target's distribution, since the residual ``max(0, p - q)`` covers the tokens the draft cannot propose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rooflens.engines.decoding import _shallow_module_copy
from rooflens.engines.speculative.chooser import TokenChooser


class TrimmedHead(torch.nn.Module):
    """An LM head over ``ids`` only: the rows (and bias) of a full head, gathered once into an N x hidden copy."""

    def __init__(self, head: torch.nn.Module, ids: torch.Tensor):
        super().__init__()
        weight = head.weight.detach()
        self.full_vocab = int(weight.shape[0])
        self.weight = torch.nn.Parameter(weight[ids].clone(), requires_grad=False)
        bias = getattr(head, "bias", None)
        trimmed_bias = None if bias is None else torch.nn.Parameter(bias.detach()[ids].clone(), requires_grad=False)
        self.register_parameter("bias", trimmed_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight, self.bias)


def trim_draft(draft: torch.nn.Module, ids: torch.Tensor) -> torch.nn.Module:
    """A copy of ``draft`` sharing every module but its LM head, which becomes a :class:`TrimmedHead` over ``ids``:
    its logits are ``[..., N]``, column i for token ``ids[i]``. ``draft`` itself (or the target it shares weights
    with, for ``self:<k>``) is left as it was."""
    get_head = getattr(draft, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor) or head.weight.dim() != 2:
        raise ValueError(f"draft_vocab: the draft ({type(draft).__name__}) has no LM head rooflens can trim")
    trimmed = _shallow_module_copy(draft)
    trimmed.set_output_embeddings(TrimmedHead(head, ids))
    return trimmed


@dataclass(frozen=True)
class DraftVocab:
    """The draft's trimmed vocabulary: which full-vocabulary id each trimmed logit stands for."""

    ids: torch.Tensor  # [N] full-vocabulary ids, best-ranked first
    member: torch.Tensor  # [V] bool: the id is in ``ids``
    local_eos: list[int]  # positions in ``ids`` of the target's EOS ids (masked, as the full draft masks them)

    @classmethod
    def top(cls, ranked: torch.Tensor, n: int, eos: list[int]) -> DraftVocab:
        """The first ``n`` ids of ``ranked`` (every id of the vocabulary, best first)."""
        ids = ranked[:n].clone()
        member = torch.zeros(ranked.numel(), dtype=torch.bool, device=ids.device)
        member[ids] = True
        where = {t: i for i, t in enumerate(ids.tolist())}
        return cls(ids, member, sorted(where[e] for e in eos if e in where))

    @property
    def size(self) -> int:
        return int(self.ids.numel())

    @property
    def full_size(self) -> int:
        return int(self.member.numel())

    def choose(self, chooser: TokenChooser, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`TokenChooser.choose` over trimmed ``logits`` (``[N]``): the full-vocabulary id (``[1]``) and, when
        sampling, the distribution over the full vocabulary (zero outside the trimmed set)."""
        local = TokenChooser(self.local_eos, chooser.temperature, chooser.generator)  # same RNG stream
        token, probs = local.choose(logits)
        if probs is None:
            return self.ids[token], None
        full = probs.new_zeros(self.full_size)
        full[self.ids] = probs
        return self.ids[token], full

    def covered(self, tokens: torch.Tensor) -> int:
        """How many of ``tokens`` (full-vocabulary ids) the trimmed draft can propose."""
        return int(self.member[tokens.reshape(-1)].sum())
