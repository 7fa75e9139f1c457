"""One teacher-forced pass over whole sequences, with a view after every decoder layer: what each layer
would predict at every position. The predictors' training labels, the engine's audit and the exit oracle
all read it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rooflens.engines.artifacts import Progress
from rooflens.engines.decoding import LayerStack, eos_token_ids, forward_layers, mask_eos, new_cache


@dataclass
class TeacherForced:
    """Per-layer views of sequences [n, T] at the positions ``start .. T-2`` (the tokens they predict: start+1 ..)."""

    normed: torch.Tensor  # [L, N, H] final norm of each layer's hidden state
    layer_argmax: torch.Tensor  # [L, N] full-vocabulary argmax per layer (EOS masked)
    layer_topk: torch.Tensor | None  # [N, k] top-k after layer ``topk_layer`` (self:k candidates)
    final_normed: torch.Tensor  # [n, T, H] last layer, every position
    final_tokens: torch.Tensor  # [n, T] the model's own token after every position


@torch.no_grad()
def teacher_forced(
    model: torch.nn.Module,
    seqs: torch.Tensor,
    start: int,
    topk_layer: int | None = None,
    k: int = 4,
    batch: int = 4,
    progress: Progress | None = None,
) -> TeacherForced:
    stack = LayerStack.of(model)
    eos = eos_token_ids(model)
    n, T = seqs.shape
    L = len(stack.layers)
    normed, argmax, topk, f_normed, f_tokens = [], [], [], [], []
    for b, chunk in enumerate(seqs.split(batch)):
        per_layer_n: list[torch.Tensor] = []
        per_layer_a: list[torch.Tensor] = []

        def collect(i: int, hidden: torch.Tensor) -> bool:
            hn = stack.norm(hidden)
            logits = mask_eos(stack.lm_head(hn[:, start : T - 1]), eos)
            per_layer_n.append(hn[:, start : T - 1].float().reshape(-1, hn.shape[-1]))
            per_layer_a.append(logits.argmax(-1).reshape(-1))
            if i == topk_layer:
                topk.append(logits.topk(k, dim=-1).indices.reshape(-1, k))
            if i == L - 1:
                f_normed.append(hn.float())
                f_tokens.append(mask_eos(stack.lm_head(hn), eos).argmax(-1))
            return False

        forward_layers(stack, chunk, new_cache(model), torch.arange(T, device=seqs.device), on_layer=collect)
        normed.append(torch.stack(per_layer_n))
        argmax.append(torch.stack(per_layer_a))
        if progress:
            progress("teacher-forced pass", b + 1, -(-n // batch))
    return TeacherForced(
        torch.cat(normed, 1),
        torch.cat(argmax, 1),
        torch.cat(topk) if topk else None,
        torch.cat(f_normed),
        torch.cat(f_tokens),
    )
