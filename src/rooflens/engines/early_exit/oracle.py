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

from rooflens.engines.decoding import LayerStack, eos_token_ids, forward_layers, mask_eos, new_cache


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
    """Decode ``n_new`` tokens greedily at full depth after ``prompt_ids`` ([1, P]); see the module docstring."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
        raise ValueError(f"the oracle decodes one sequence: prompt_ids must be [1, P], got {tuple(prompt_ids.shape)}")
    stack = LayerStack.of(model)
    eos = eos_token_ids(model)
    cache = new_cache(model)
    ids, start = prompt_ids, 0
    needed, tokens = [], []
    for _ in range(n_new):
        predictions: list[int] = []

        def predict(i: int, hidden: torch.Tensor) -> bool:
            predictions.append(int(mask_eos(stack.logits(hidden[:, -1]), eos).argmax(-1)))
            return False  # never stop: the oracle needs the full-depth token

        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        forward_layers(stack, ids, cache, positions, on_layer=predict)
        token = predictions[-1]
        needed.append(predictions.index(token) + 1)
        tokens.append(token)
        start += ids.shape[1]
        ids = torch.tensor([[token]], device=prompt_ids.device)
    return OracleExits(tuple(needed), len(stack.layers), torch.tensor(tokens))
