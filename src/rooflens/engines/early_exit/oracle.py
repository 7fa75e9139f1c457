"""The early-exit oracle: how early could a token have been known on this model?

On the model's own full-depth greedy decode, for each generated token, the earliest layer whose
prediction (final norm + LM head on that layer's last hidden state, EOS masked as the ``hf`` baseline
masks it) already equals the token the full model emits. No exit rule (SpecEE's predictors or any other)
can exit correctly earlier, so the mean layers this oracle needs bound what early exit can save on the
model; an exit after layer i still runs i + 1 layers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from rooflens.engines.base import TokenClock
from rooflens.engines.decoding import LayerStack, decode_n_tokens, eos_token_ids, new_cache, prefill
from rooflens.engines.early_exit.teacher_forcing import teacher_forced


@dataclass(frozen=True)
class OracleExits:
    """Per generated token, the layers the earliest correct exit runs (1 .. ``num_layers``)."""

    layers_needed: tuple[int, ...]
    num_layers: int
    tokens: torch.Tensor  # [n] the full-depth greedy tokens

    @property
    def mean_layers(self) -> float:
        return sum(self.layers_needed) / len(self.layers_needed)

    @property
    def layer_fraction(self) -> float:
        """Mean layers needed / all layers: the share of the layer stack an oracle exit still runs."""
        return self.mean_layers / self.num_layers

    def histogram(self) -> dict[int, int]:
        """Tokens per number of layers needed."""
        return dict(sorted(Counter(self.layers_needed).items()))


@torch.no_grad()
def oracle_exits(model: torch.nn.Module, prompt_ids: torch.Tensor, n_new: int) -> OracleExits:
    """Decode ``n_new`` tokens greedily at full depth after ``prompt_ids`` ([1, P]); see the module docstring.

    The tokens come from plain incremental decoding; each layer's prediction at every generated position
    from one teacher-forced pass over prompt + tokens (one batched LM head per layer, not one per token).
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
        raise ValueError(f"the oracle decodes one sequence: prompt_ids must be [1, P], got {tuple(prompt_ids.shape)}")
    if n_new < 1:
        raise ValueError(f"n_new must be >= 1, got {n_new}")
    stack = LayerStack.of(model)
    eos = eos_token_ids(model)
    cache = new_cache(model)
    token = prefill(model, prompt_ids, cache, eos)
    clock = TokenClock(prompt_ids.device)
    clock.start()
    tokens = torch.cat([token, decode_n_tokens(model, token, cache, n_new - 1, eos, clock)], dim=1)
    tf = teacher_forced(model, torch.cat([prompt_ids, tokens], dim=1), prompt_ids.shape[1] - 1)
    correct = tf.layer_argmax == tf.layer_argmax[-1]  # [L, n_new]
    needed = (correct.float().argmax(0) + 1).tolist()
    return OracleExits(tuple(int(n) for n in needed), len(stack.layers), tokens[0].cpu())
