"""An EAGLE-style draft head over a trimmed vocabulary, trained by rooflens for the model at hand.

At the decode step that feeds token x_t the target will produce x_{t+1}. The head sees what is known
before that step: the embedding of x_t and the target's normed hidden state of the previous step (the
one that produced x_t; after an early exit, the exit layer's). ``fc`` projects the pair to one hidden
state, one decoder layer of the target's architecture (initialised from the target's last layer, with
its own KV cache) mixes in the head's earlier states, and a copy of the target's final norm followed by
the LM-head rows of the trimmed vocabulary (VocabTrim: the most frequent tokens of the model's own
outputs) gives the logits. Only ``fc`` and the decoder layer are trained; the head never reads the full
vocabulary projection, which is 21 % of SmolLM2's weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from rooflens.engines.decoding import LayerStack


class DraftHead(nn.Module):
    def __init__(self, stack: LayerStack, vocab_ids: torch.Tensor):
        super().__init__()
        cfg = copy.deepcopy(stack.config)
        cfg.num_hidden_layers = 1
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = cfg.layer_types[:1]
        self.config = cfg
        h = int(cfg.hidden_size)
        ref = next(stack.layers[-1].parameters())
        self.fc = nn.Linear(2 * h, h, bias=False, device=ref.device, dtype=torch.float32)
        with torch.no_grad():  # start as "embedding + previous hidden"; training mixes them properly
            self.fc.weight.copy_(torch.cat([torch.eye(h), torch.eye(h)], dim=1))
        self.layer = type(stack.layers[-1])(cfg, layer_idx=0).to(device=ref.device, dtype=torch.float32)
        self.layer.load_state_dict({k: v.float() for k, v in stack.layers[-1].state_dict().items()})
        self.norm = copy.deepcopy(stack.norm).float().requires_grad_(False)
        self.rotary = copy.deepcopy(stack.rotary_emb).float()
        self.register_buffer("vocab_ids", vocab_ids.to(ref.device).long())
        # the LM-head rows of the trimmed vocabulary: rebuilt from the target by bind(), never saved
        self.register_buffer("head_rows", torch.empty(0), persistent=False)
        self.bind(stack)

    def bind(self, stack: LayerStack) -> DraftHead:
        self.head_rows = stack.lm_head.weight.detach()[self.vocab_ids].float().contiguous()
        return self

    @property
    def vocab_size(self) -> int:
        return int(self.vocab_ids.numel())

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def forward(
        self, embeds: torch.Tensor, prev_hidden: torch.Tensor, position_ids: torch.Tensor, cache: Any = None
    ) -> torch.Tensor:
        """Trimmed-vocabulary logits [B, T, V'] for pairs (embedding of x_t, normed hidden of step t-1)."""
        x = self.fc(torch.cat([embeds.float(), prev_hidden.float()], dim=-1))
        mask = create_causal_mask(
            config=self.config, inputs_embeds=x, attention_mask=None, past_key_values=cache, position_ids=position_ids
        )
        rotary = self.rotary(x, position_ids=position_ids)
        x = self.layer(
            x,
            attention_mask=mask,
            position_embeddings=rotary,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return self.norm(x) @ self.head_rows.T

    def weight_elements(self) -> int:
        """Weights one draft step reads: fc, the decoder layer, the norm and the trimmed LM-head rows."""
        return (
            sum(p.numel() for p in self.fc.parameters())
            + sum(p.numel() for p in self.layer.parameters())
            + int(self.head_rows.numel())
            + sum(p.numel() for p in self.norm.parameters())
        )
