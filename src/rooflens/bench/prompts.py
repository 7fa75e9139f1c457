"""Prompts of an exact token length: deterministic synthetic ids, or windows of the shipped corpus."""

from __future__ import annotations

from importlib import resources

import torch

from rooflens.models.loader import LoadedModel


def corpus_text(name: str = "corpus") -> str:
    return (resources.files("rooflens") / "data" / f"{name}.txt").read_text()


def synthetic_prompts(model: LoadedModel, batch: int, length: int, seed: int) -> torch.Tensor:
    """Seeded random ids drawn from the vocabulary minus special tokens (so none is EOS)."""
    gen = torch.Generator().manual_seed(seed)
    special = model.special_token_ids
    allowed = torch.tensor([i for i in range(model.vocab_size) if i not in special])
    idx = torch.randint(len(allowed), (batch, length), generator=gen)
    return allowed[idx]


def corpus_prompts(model: LoadedModel, batch: int, length: int, seed: int) -> torch.Tensor:
    """Row i is ``length`` consecutive tokens of the corpus starting at a seeded offset (wrapping)."""
    if model.tokenizer is None:
        raise ValueError(f"prompt 'corpus' needs a tokenizer; {model.info.label} has none (use prompt: synthetic)")
    ids = model.tokenizer(corpus_text(), add_special_tokens=False)["input_ids"]
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(ids), (batch,), generator=gen).tolist()
    rows = [[ids[(s + j) % len(ids)] for j in range(length)] for s in starts]
    return torch.tensor(rows, dtype=torch.long)


def make_prompts(model: LoadedModel, source: str, batch: int, length: int, seed: int) -> torch.Tensor:
    build = {"synthetic": synthetic_prompts, "corpus": corpus_prompts}[source]
    return build(model, batch, length, seed).to(model.device)
