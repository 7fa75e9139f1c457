"""How an engine changes the analytic roofline cost of its passes (produced by engines, read by the roofline)."""

from __future__ import annotations

from dataclasses import dataclass

from rooflens.roofline.analytic import OpCost


@dataclass(frozen=True)
class RooflineHints:
    """How an engine changes the analytic cost of a token (None: as the plain model).

    ``weight_bits``: bits per weight incl. scales/zeros, both phases; ``prefill_weight_bits`` /
    ``decode_weight_bits``: one phase's, where they differ (mixed precision; None: ``weight_bits``);
    ``layers_executed``: mean decoder layers run per token (early exit); ``tokens_per_pass``: tokens kept per target decode pass and
    ``tokens_verified_per_pass``: tokens that pass processes (speculative verification: accepted+1
    of gamma+1); ``extra_ops``: the engine's own work per decode pass (an early-exit draft head,
    predictors), added to the pass's analytic cost; ``note``: what the analytic model leaves out.
    """

    weight_bits: float | None = None
    layers_executed: float | None = None
    tokens_per_pass: float | None = None
    tokens_verified_per_pass: float | None = None
    prefill_weight_bits: float | None = None
    decode_weight_bits: float | None = None
    extra_ops: tuple[OpCost, ...] = ()
    note: str = ""

    def bits_for(self, phase: str) -> float | None:
        """The weight bits of ``phase`` ("prefill" or "decode"), None when the engine does not change them."""
        own = self.prefill_weight_bits if phase == "prefill" else self.decode_weight_bits
        return own if own is not None else self.weight_bits
