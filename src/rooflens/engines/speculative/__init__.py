"""Speculative decoding: a cheap proposer drafts tokens, the target verifies them in one forward pass.

Three proposers:

``draft_model``
    A draft causal LM with the target's vocabulary drafts ``gamma`` tokens greedily (or by sampling) with its
    own KV cache (:mod:`.drafts` loads it: ``self:<k>``, ``shape:<name>`` or a Hugging Face id / path); with
    ``draft_vocab`` its LM head keeps only the target's N most emitted tokens (VocabTrim, :mod:`.vocabtrim`).
``prompt_lookup``
    No draft model: the continuation of an earlier occurrence of the last n-gram is the draft.
``hf_assisted``
    transformers' own assisted generation (:mod:`.assisted`): the reference implementation.

The first two run our own loop (:mod:`.loop`; proposers in :mod:`.proposers`, token choice in
:mod:`.chooser`, acceptance in :mod:`.acceptance`), batch 1: exactly ``max_new_tokens`` tokens come out and
greedy output equals the target's greedy output token for token (EOS ids are masked, as ``min_new_tokens``
does for the ``hf`` baseline). Sampling is plain temperature sampling (no top-k / top-p) and its output
distribution is the target's, by the speculative-sampling theorem (Leviathan et al. 2023, Chen et al. 2023).
:mod:`.stats` holds what the engine counts and the table of its statistics, :mod:`.draft_cost` the draft's
analytic cost on the roofline, :mod:`.fidelity` VocabTrim's reference setup, :mod:`.compiled` the loop's compiled
forwards (``compile: true``); :mod:`.engine` the engine itself.
"""

from rooflens.engines.speculative.engine import SpeculativeEngine

__all__ = ["SpeculativeEngine"]
