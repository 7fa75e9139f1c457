"""Prompts of an exact token length: deterministic synthetic ids, or windows of the shipped corpus."""

from __future__ import annotations

from importlib import resources
from typing import Any, Protocol

import torch


class _HasLabel(Protocol):
    label: str


class PromptModel(Protocol):
    """What prompt building reads of a loaded model (``rooflens.models.loader.LoadedModel`` has it)."""

    tokenizer: Any
    info: _HasLabel
    device: torch.device

    @property
    def vocab_size(self) -> int: ...

    @property
    def special_token_ids(self) -> set[int]: ...


def corpus_text(name: str = "corpus") -> str:
    """A shipped text file of this package: ``corpus`` (prompts) or ``heldout`` (perplexity)."""
    return (resources.files(__package__) / f"{name}.txt").read_text()


def corpus_ids(tokenizer: Any, name: str = "corpus") -> list[int]:
    """A shipped text as token ids (no special tokens)."""
    return tokenizer(corpus_text(name), add_special_tokens=False)["input_ids"]


def synthetic_prompts(model: PromptModel, batch: int, length: int, seed: int) -> torch.Tensor:
    """Seeded random ids drawn from the vocabulary minus special tokens (so none is EOS)."""
    gen = torch.Generator().manual_seed(seed)
    special = model.special_token_ids
    allowed = torch.tensor([i for i in range(model.vocab_size) if i not in special])
    idx = torch.randint(len(allowed), (batch, length), generator=gen)
    return allowed[idx]


def corpus_prompts(model: PromptModel, batch: int, length: int, seed: int) -> torch.Tensor:
    """Row i is ``length`` consecutive tokens of the corpus starting at a seeded offset (wrapping)."""
    if model.tokenizer is None:
        raise ValueError(f"prompt 'corpus' needs a tokenizer; {model.info.label} has none (use prompt: synthetic)")
    ids = corpus_ids(model.tokenizer)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(ids), (batch,), generator=gen).tolist()
    rows = [[ids[(s + j) % len(ids)] for j in range(length)] for s in starts]
    return torch.tensor(rows, dtype=torch.long)


def make_prompts(model: PromptModel, source: str, batch: int, length: int, seed: int) -> torch.Tensor:
    build = {"synthetic": synthetic_prompts, "corpus": corpus_prompts}[source]
    return build(model, batch, length, seed).to(model.device)


# ---------------------------------------------------------------------------- offline training data


def training_prompts(model: torch.nn.Module, tokenizer: Any, n: int, length: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``length`` tokens starting evenly over the corpus (wrapping); seeded random ids
    without a tokenizer. The engines' offline training (early-exit predictors, precision schedulers) uses them."""
    device = next(model.parameters()).device
    if tokenizer is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, int(model.config.vocab_size), (n, length), generator=g).to(device)
    ids = corpus_ids(tokenizer)
    rows = [[ids[(i * len(ids) // n + j) % len(ids)] for j in range(length)] for i in range(n)]
    return torch.tensor(rows, dtype=torch.long, device=device)


def corpus_windows(model: torch.nn.Module, tokenizer: Any, length: int) -> torch.Tensor:
    """The corpus cut into consecutive windows of ``length`` tokens (empty without a tokenizer)."""
    device = next(model.parameters()).device
    if tokenizer is None:
        return torch.empty(0, length, dtype=torch.long, device=device)
    ids = corpus_ids(tokenizer)
    n = len(ids) // length
    return torch.tensor(ids[: n * length], dtype=torch.long, device=device).view(n, length)
