"""How a ``speculative`` run with ``draft_vocab`` departs from VocabTrim's reference setup (Goel et al., 2025).

Speculative decoding itself is lossless and implements no single paper's setup, so a run without
``draft_vocab`` has no fidelity entry; with it, the trimmed draft head is an adaptation of VocabTrim.
"""

from __future__ import annotations

from rooflens.engines.options.speculative import SpeculativeOptions
from rooflens.results.stat import Deviation, Fidelity

REFERENCE = (
    "the drafter's LM head cut to the tokens the target samples most often on a calibration set "
    "(target-generated completions ranked best in the paper); Llama-3 targets on Spec-Bench"
)


def fidelity(options: SpeculativeOptions, calibration_text: str) -> Fidelity | None:
    """VocabTrim's reference setup and how ``options`` depart from it (``calibration_text``: what the ranking
    counted, in words); None without ``draft_vocab``."""
    if options.draft_vocab is None:
        return None
    calibration = Deviation(
        setting="draft_vocab calibration",
        here=f"top {options.draft_vocab} tokens by frequency in {calibration_text}",
        reference="the most frequent tokens of the target's sampled completions on a calibration dataset",
        effect="greedy, not sampled, outputs are counted; corpus prompts of a benchmark come from the same text, so "
        "its coverage and acceptance are in-distribution",
    )
    return Fidelity(technique="VocabTrim (Goel et al., 2025)", reference=REFERENCE, deviations=[calibration])
