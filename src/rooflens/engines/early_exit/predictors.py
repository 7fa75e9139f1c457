"""SpecEE's per-layer exit predictors: one small MLP per layer on features of the k candidate tokens.

Features after layer i (SpecEE, ``model_llama_ee.py``): the final norm applied to the layer's hidden
state, projected on the LM-head rows of the k candidates (k logits), their softmax over the k only,
and the change of that softmax since the previously checked layer (the softmax itself at the first) -
3·k values. The MLP (3k -> hidden -> 1, ReLU) says how likely this layer's argmax already is the final
token. All layers' MLPs live in stacked tensors so that training runs them in one batched product.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def exit_features(
    normed: torch.Tensor, cand_rows: torch.Tensor, last_prob: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [..., 3k], softmax [..., k]) of normed hidden states [..., H] and candidate rows.

    ``cand_rows`` is [k, H] (one candidate set) or [..., k, H] (one per hidden state).
    """
    normed = normed.float()
    if cand_rows.dim() == 2:
        logits = normed @ cand_rows.float().T
    else:
        logits = (cand_rows.float() @ normed.unsqueeze(-1)).squeeze(-1)
    prob = torch.softmax(logits, dim=-1)
    gap = prob if last_prob is None else prob - last_prob
    return torch.cat([logits, prob, gap], dim=-1), prob


class ExitPredictors(nn.Module):
    def __init__(self, num_layers: int, k: int, hidden: int):
        super().__init__()
        self.num_layers, self.k, self.hidden = num_layers, k, hidden
        n_in = 3 * k
        self.w1 = nn.Parameter(torch.randn(num_layers, n_in, hidden) / math.sqrt(n_in))
        self.b1 = nn.Parameter(torch.zeros(num_layers, hidden))
        self.w2 = nn.Parameter(torch.randn(num_layers, hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(num_layers))

    def logits_all(self, features: torch.Tensor) -> torch.Tensor:
        """Exit logits [L, n] for features [L, n, 3k] (layer i's MLP on row i)."""
        h = torch.relu(torch.baddbmm(self.b1.unsqueeze(1), features, self.w1))
        return (h * self.w2.unsqueeze(1)).sum(-1) + self.b2.unsqueeze(1)

    def logit(self, layer: int, feature: torch.Tensor) -> torch.Tensor:
        """Layer ``layer``'s exit logit for one feature vector [3k] (a 0-d tensor)."""
        h = torch.relu(torch.addmv(self.b1[layer], self.w1[layer].T, feature.reshape(-1)))
        return torch.dot(h, self.w2[layer]) + self.b2[layer]

    def logit_at(self, index: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """:meth:`logit` with the layer given as a one-element long tensor: a compiled graph of it then serves every
        layer (an int would be a constant of the graph)."""
        w1, b1, w2, b2 = (p.index_select(0, index)[0] for p in (self.w1, self.b1, self.w2, self.b2))
        h = torch.relu(torch.addmv(b1, w1.T, feature.reshape(-1)))
        return torch.dot(h, w2) + b2

    def weight_elements(self) -> int:
        """Weights one predictor call reads (one layer's MLP)."""
        return sum(p[0].numel() for p in self.parameters())


def threshold_logit(threshold: float) -> float:
    """The exit-logit bound equivalent to ``sigmoid(logit) > threshold`` (saves a sigmoid per call)."""
    if threshold <= 0.0:
        return -math.inf
    if threshold >= 1.0:
        return math.inf
    return math.log(threshold / (1.0 - threshold))
