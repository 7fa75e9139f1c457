"""Prompts of an exact token length: deterministic synthetic ids, windows of the shipped corpus, or items of a prompt
set (:mod:`rooflens.data.prompt_sets`: the shipped ``chat`` and ``summaries``, or ``file:PATH``) fitted to it."""

from __future__ import annotations

from importlib import resources
from typing import Any, Protocol

import torch

from rooflens.data.prompt_sets import encode, fit, load_prompt_set


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


def set_prompts(
    model: PromptModel, source: str, batch: int, length: int, seed: int, chat_template: bool = True
) -> torch.Tensor:
    """Row i is item ``seed + i`` (wrapping) of the prompt set ``source``, encoded (through the model's chat
    template when ``chat_template`` and it has one) and fitted to ``length`` tokens (``prompt_sets.FIT_RULE``)."""
    if model.tokenizer is None:
        raise ValueError(f"prompt {source!r} needs a tokenizer; {model.info.label} has none (use prompt: synthetic)")
    items = load_prompt_set(source)
    filler = corpus_ids(model.tokenizer)
    rows = [
        fit(encode(items[(seed + i) % len(items)], model.tokenizer, chat_template), length, filler)
        for i in range(batch)
    ]
    return torch.tensor(rows, dtype=torch.long)


def make_prompts(
    model: PromptModel, source: str, batch: int, length: int, seed: int, chat_template: bool = True
) -> torch.Tensor:
    """``batch`` prompts of ``length`` tokens from ``source`` (a workload's ``prompt``), on the model's device."""
    if source == "synthetic":
        out = synthetic_prompts(model, batch, length, seed)
    elif source == "corpus":
        out = corpus_prompts(model, batch, length, seed)
    else:
        out = set_prompts(model, source, batch, length, seed, chat_template)
    return out.to(model.device)


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
