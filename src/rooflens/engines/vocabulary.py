"""The target's vocabulary ranked by how often it emits each token (VocabTrim's ranking), shared by the engines
that trim a draft's LM head: ``early_exit``'s draft head and ``speculative``'s ``draft_vocab``.

The ranking counts the model's own output tokens first, then the input text's, then falls back to the id, so
every id gets a rank and the top ones are what the model actually says.
"""

from __future__ import annotations

import torch

from rooflens.engines.decoding import greedy_config


@torch.no_grad()
def greedy_sequences(model: torch.nn.Module, prompts: torch.Tensor, gen_len: int, batch: int = 8) -> torch.Tensor:
    """Each prompt followed by ``gen_len`` full-depth greedy tokens (EOS masked, as the hf baseline)."""
    gc = greedy_config(model, gen_len)
    out = [model.generate(c, attention_mask=torch.ones_like(c), generation_config=gc) for c in prompts.split(batch)]
    return torch.cat(out)


def ranked_vocabulary(vocab_size: int, outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Every id: by frequency among ``outputs``, then among ``inputs``, then by id (VocabTrim's ranking)."""
    out_counts = torch.bincount(outputs.reshape(-1).cpu(), minlength=vocab_size).double()
    in_counts = torch.bincount(inputs.reshape(-1).cpu(), minlength=vocab_size).double()
    score = out_counts * (in_counts.max() + 1) + in_counts  # outputs first, inputs break ties
    return torch.sort(score, descending=True, stable=True).indices.to(outputs.device)
