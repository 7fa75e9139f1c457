"""How a ``mixed_precision`` run departs from PMPD's reference setup, as read in the authors' code
(SamsungLabs/PMPD)."""

from __future__ import annotations

from rooflens.engines.options.mixed_precision import MixedPrecisionOptions
from rooflens.results.stat import Deviation, Fidelity

REFERENCE = (
    "SamsungLabs/PMPD: Any-Precision LLM weights (SqueezeLLM non-uniform codes, nested bit-planes: one copy at the "
    "top precision) or one GPTQ model per precision; prefill at 4 bits, decode from 3 down to 2 bits; the learned "
    "scheduler trained on 256 C4 samples x 256 tokens, or the static one tuned on a task's validation set"
)


def _quantizer(options: MixedPrecisionOptions) -> Deviation:
    """RTN or HQQ (uniform codes either way) against the paper's SqueezeLLM / GPTQ."""
    groups = f"uniform codes in groups of {options.group_size}" + (
        " (symmetric)" if options.symmetric else " (with integer zero points)"
    )
    if options.quantizer == "hqq":
        fitted = "scale" if options.symmetric else "scale and zero point"
        here = f"HQQ (half-quadratic, calibration-free: each group's {fitted} fitted to an lp error), {groups}"
        effect = (
            "HQQ narrows the gap to the paper's quantizers at 3 and 2 bits but does not close it (still uniform "
            "codes, no calibration data, no sensitivity weighting): the low rungs may still look worse than in the paper"
        )
    else:
        here = f"round-to-nearest (RTN, min-max scales), {groups}"
        effect = (
            "at 3 and 2 bits round-to-nearest loses far more quality than the paper's quantizers: the low rungs "
            "look worse than in the paper (quantizer: hqq narrows the gap)"
        )
    return Deviation(
        setting="quantizer",
        here=here,
        reference="SqueezeLLM (non-uniform, sensitivity-weighted) or GPTQ",
        effect=effect,
    )


def fidelity(options: MixedPrecisionOptions) -> Fidelity:
    """The reference setup of PMPD and each way ``options`` depart from it."""
    top = options.ladder[0]
    prefill = top if options.prefill_bits is None else options.prefill_bits
    out = [
        _quantizer(options),
        Deviation(
            setting="storage",
            here="one packed copy per rung (memory: the sum of the rungs)",
            reference="nested bit-planes: one copy at the top precision serves every rung",
        ),
    ]
    if options.ladder != [3, 2] or prefill != 4:
        out.append(
            Deviation(
                setting="precisions",
                here=f"prefill at {prefill}{'' if prefill == 'original' else ' bits'}, decode ladder {options.ladder}",
                reference="prefill at 4 bits, decode ladder [3, 2]",
            )
        )
    if options.scheduler == "confidence":
        out.append(
            Deviation(
                setting="scheduler",
                here="confidence (running mean + k std of the top probability)",
                reference="learned (a classifier on the last layer's KV) or static; confidence is the paper's baseline",
            )
        )
    elif options.scheduler == "learned" or options.switch_steps is None:
        out.append(
            Deviation(
                setting="scheduler training data",
                here=f"{options.train_prompts} corpus prompts x {options.train_gen_len} tokens",
                reference="256 C4 samples x 256 tokens (learned); a task's validation set (static)",
            )
        )
    return Fidelity(technique="PMPD (Chen et al., ICLR 2025)", reference=REFERENCE, deviations=out)
