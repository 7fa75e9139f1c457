"""The draft model's analytic cost: what its forwards add to a decode (verify) pass on the roofline, and the share
of a draft forward that VocabTrim's trimmed LM head saves.

A draft forward is costed as the analytic model's one-token decode pass of the draft's config at context 0: its
weights are read once per forward, its attention over its own KV cache is left out (small beside its weights
at batch 1), and the LM head's rows, FLOPs and logits are those of the vocabulary it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rooflens.roofline.analytic import ModelShape, OpCost, PhaseCost, Precision, decode_cost


@dataclass(frozen=True)
class DraftForward:
    """One draft forward of one token: everything but the LM head, and the LM head over ``vocab`` tokens."""

    body: OpCost
    head: OpCost

    @classmethod
    def of(cls, config: Any, bits: float, vocab: int | None = None) -> DraftForward:
        """The draft ``config``'s forward at ``bits`` per weight and activation, its head over ``vocab`` tokens
        (None: all); ValueError for an architecture the analytic model does not know."""
        shape = ModelShape.from_config(config)
        p = Precision(weight_bits=bits, act_bits=bits, kv_bits=bits)
        cost = decode_cost(shape, batch=1, context_len=0, precision=p)
        return cls(_body(cost), _head(shape.hidden, vocab or shape.vocab, bits))

    @property
    def flops(self) -> float:
        return self.body.flops + self.head.flops

    @property
    def weight_bytes(self) -> float:
        return self.body.weight_bytes + self.head.weight_bytes

    def ops(self, passes: float) -> tuple[OpCost, ...]:
        """``passes`` forwards as the roofline's extra ops of one verify pass: ``draft_forward`` and ``draft_lm_head``."""
        return tuple(_times(op, passes) for op in (self.body, self.head))


def _body(cost: PhaseCost) -> OpCost:
    """The pass without its LM head, as one op (layer ops counted once per layer)."""
    ops = [op for op in cost.ops if op.name != "lm_head"]

    def total(attr: str) -> float:
        return sum(getattr(op, attr) * cost.count(op) for op in ops)

    return OpCost(
        "draft_forward",
        "model",
        total("flops"),
        total("weight_bytes"),
        total("act_bytes"),
        total("kv_bytes"),
        total("matmul_flops"),
    )


def _head(hidden: int, vocab: int, bits: float) -> OpCost:
    """An LM head of ``vocab`` rows on one token: reads its rows and the hidden state, writes ``vocab`` logits."""
    mm = 2.0 * hidden * vocab
    return OpCost("draft_lm_head", "model", mm, vocab * hidden * bits / 8, (hidden + vocab) * bits / 8, 0.0, mm)


def _times(op: OpCost, n: float) -> OpCost:
    return OpCost(
        op.name, op.scope, op.flops * n, op.weight_bytes * n, op.act_bytes * n, op.kv_bytes * n, op.matmul_flops * n
    )


def head_saving(config: Any, bits: float, vocab: int) -> tuple[float, float]:
    """(weight bytes, FLOPs): the share of a full-vocabulary draft forward that a ``vocab``-token head saves."""
    full, trimmed = DraftForward.of(config, bits), DraftForward.of(config, bits, vocab)
    return 1.0 - trimmed.weight_bytes / full.weight_bytes, 1.0 - trimmed.flops / full.flops
