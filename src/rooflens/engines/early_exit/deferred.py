"""``skipped_kv: deferred``: the layers an exit skipped still run for that token, later, batched with the next
token's pass through them, so every KV entry the cache ever holds is exactly the full model's.

Why: with ``fill`` (K/V projected from the exit state) or ``unwritten`` (no entry), the later tokens attend to
entries the full model never computes, and greedy decoding drifts even when every exit emits the full model's
own token (measured on SmolLM2-135M, held-out text, prompt 96, 48 tokens, exits only where the layer argmax
already is the full model's token: agreement 0.10-0.35 with ``fill``). Here an exit leaves the token's hidden state
at its exit depth *pending*; the next decode step runs its own token alone through the layers below that depth,
then the pending rows and its own row together (one more row per layer: on a memory-bound decode the weights are
read once either way). Pending rows always share one depth (the invariant that keeps the rows contiguous): a
token that exits below it keeps running alone up to it, and a block above :data:`MAX_PENDING` rows is completed
through the last layer at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rooflens.engines.decoding import LayerStack

MAX_PENDING = 8  # pending rows after which an exit completes them at once (bounds the rows per layer)


@dataclass
class Pending:
    """Hidden states [1, m, H] of the last m tokens at the input of layer ``depth``; layers >= depth have no KV
    for them yet."""

    hidden: torch.Tensor
    depth: int

    @property
    def rows(self) -> int:
        return int(self.hidden.shape[1])


def run_layer(stack: LayerStack, j: int, hidden: torch.Tensor, first_pos: int, cache) -> torch.Tensor:
    """Layer ``j`` on rows [1, m, H] at positions first_pos.., attending to the cache's entries for layer ``j``."""
    m = hidden.shape[1]
    positions = torch.arange(first_pos, first_pos + m, device=hidden.device).view(1, -1)
    mask = None
    if m > 1:  # causal among the rows, everything cached before them visible
        past = cache.get_seq_length(j)
        mask = torch.full((m, past + m), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        mask = mask.triu(past + 1).view(1, 1, m, past + m)
    return stack.layers[j](
        hidden,
        attention_mask=mask,
        position_embeddings=stack.rotary_emb(hidden, position_ids=positions),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    )


LayerFn = Callable[[int, torch.Tensor, int], torch.Tensor]
"""(layer j, rows [1, m, H], position of the first row) -> the layer's output rows, their K/V cached."""


@dataclass
class DeferredPass:
    """One decode step's walk: the step's token at ``pos`` plus, from their depth on, the pending rows. ``layer``
    runs one layer on rows (default: :func:`run_layer` on ``cache``; ``compile: true``: a compiled graph)."""

    stack: LayerStack
    cache: object
    pos: int
    layer: LayerFn | None = None

    def _layer(self, j: int, hidden: torch.Tensor, first: int) -> torch.Tensor:
        if self.layer is not None:
            return self.layer(j, hidden, first)
        return run_layer(self.stack, j, hidden, first, self.cache)

    def run(
        self, x: torch.Tensor, pending: Pending | None, exit_test: Callable[[int, torch.Tensor], bool]
    ) -> tuple[torch.Tensor, Pending | None, int, int]:
        """(the token's last hidden state [1, 1, H], the new pending block, layers run, of them run after the exit
        only to keep the invariant or complete the block)."""
        L = len(self.stack.layers)
        hidden, first, exit_at, extra = self.stack.embed_tokens(x), self.pos, None, 0
        for j in range(L):
            if pending is not None and j == pending.depth:  # the pending rows join below the step's token
                hidden, first = torch.cat([pending.hidden, hidden], 1), self.pos - pending.rows
                pending = None
            if exit_at is not None and pending is None:
                block = Pending(hidden, j)  # every row is at depth j: they wait there for the next step
                if block.rows <= MAX_PENDING:
                    return hidden[:, -1:], block, j, extra
                done = self._complete(block, first)
                return hidden[:, -1:], None, L, extra + done
            hidden = self._layer(j, hidden, first)
            extra += exit_at is not None
            if exit_at is None and exit_test(j, hidden[:, -1:]):
                exit_at = j
        return hidden[:, -1:], None, L, extra  # every row through the last layer: nothing pending

    def _complete(self, block: Pending, first: int) -> int:
        """Run the block's rows through the layers it still lacks; the layers run."""
        hidden = block.hidden
        for j in range(block.depth, len(self.stack.layers)):
            hidden = self._layer(j, hidden, first)
        return len(self.stack.layers) - block.depth
