"""The target's vocabulary ranked by how often it emits each token (VocabTrim's ranking), shared by the engines
that trim a draft's LM head: ``early_exit``'s draft head and ``speculative``'s ``draft_vocab``.

The ranking counts the model's own output tokens first, then the input text's, then falls back to the id, so
every id gets a rank and the top ones are what the model actually says. :func:`calibration_text` collects the
text to count the way ``early_exit``'s training does (greedy continuations of corpus prompts plus the model's
next-token argmax over the shipped corpus); :func:`target_ranking` caches its ranking on disk per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rooflens.data.prompts import corpus_windows, training_prompts
from rooflens.engines.artifacts import ArtifactKind
from rooflens.engines.decoding import eos_token_ids, greedy_config, mask_eos


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


@dataclass(frozen=True)
class RankSettings:
    """The calibration text of :func:`target_ranking` (``early_exit``'s training defaults); keys its cache file."""

    prompts: int = 16
    prompt_len: int = 64
    gen_len: int = 64
    seed: int = 0

    def describe(self, corpus: bool = True) -> str:
        """The calibration text in words (``corpus``: the model has a tokenizer, else the prompts are random ids)."""
        if not corpus:
            return f"the target's greedy continuations of {self.prompts} random-id prompts ({self.prompt_len} + {self.gen_len} tokens)"
        return (
            f"the target's greedy continuations of {self.prompts} shipped-corpus prompts ({self.prompt_len} + "
            f"{self.gen_len} tokens) and its next-token argmax over the corpus"
        )


RANKING = ArtifactKind("vocab-rank", version=1, settings_type=RankSettings)


@torch.no_grad()
def next_token_argmax(model: torch.nn.Module, windows: torch.Tensor, batch: int = 2) -> torch.Tensor:
    """``[w, T]``: the model's argmax (EOS masked) after every position of each window, teacher forced."""
    if windows.shape[0] == 0:  # no corpus (a model without a tokenizer)
        return windows
    eos = eos_token_ids(model)
    return torch.cat(
        [mask_eos(model(input_ids=c, use_cache=False).logits, eos).argmax(-1) for c in windows.split(batch)]
    )


def calibration_text(
    model: torch.nn.Module, tokenizer: Any, settings: RankSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, the model's output ids) to rank by: greedy continuations of corpus prompts (seeded random
    ids without a tokenizer) and the model's next-token argmax over the corpus windows, as ``early_exit``
    trains on."""
    P = settings.prompt_len
    prompts = training_prompts(model, tokenizer, settings.prompts, P, settings.seed)
    seqs = greedy_sequences(model, prompts, settings.gen_len)
    windows = corpus_windows(model, tokenizer, P + settings.gen_len)
    inputs = torch.cat([seqs.reshape(-1), windows.reshape(-1)])
    outputs = torch.cat([seqs[:, P:].reshape(-1), next_token_argmax(model, windows).reshape(-1)])
    return inputs, outputs


def target_ranking(
    model: torch.nn.Module, tokenizer: Any, label: str, settings: RankSettings = RankSettings()
) -> torch.Tensor:
    """Every id of ``model``'s vocabulary, most emitted first (:func:`ranked_vocabulary` over
    :func:`calibration_text`), from the cache or computed now and cached."""
    device = next(model.parameters()).device
    path = RANKING.path(model, label, settings)
    if RANKING.cached(path):
        try:
            return RANKING.load(path)[1]["ranked_vocab"].to(device)
        except Exception:  # noqa: BLE001 - a damaged or foreign file is replaced by a fresh ranking
            pass
    inputs, outputs = calibration_text(model, tokenizer, settings)
    ranked = ranked_vocabulary(int(model.config.vocab_size), outputs, inputs)
    RANKING.save(path, settings, {"ranked_vocab": ranked.cpu()})  # a refused write keeps it in memory
    return ranked
