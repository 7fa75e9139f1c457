"""How an ``early_exit`` run departs from SpecEE's reference setup, as read in the authors' artifact
(RickWayne1125/SpecEE) and its predictor training (MathsCode/ISCA25-SpecEE)."""

from __future__ import annotations

from rooflens.engines.options.early_exit import EarlyExitOptions, parse_draft
from rooflens.results.stat import Deviation, Fidelity

REFERENCE = (
    "the authors' artifact (RickWayne1125/SpecEE): k = 4 candidates from a pretrained EAGLE-1 head, predictors "
    "12-512-1 trained on 80 prompts x 256 tokens, a two-level schedule (offline layers; online the last 5 exits x "
    "at x-2, x, x+2), skipped layers' KV left unwritten, fp16"
)
PAPER_TRAINING = (80, 256)  # prompts x tokens per prompt of the predictors' training data


def _draft(options: EarlyExitOptions) -> Deviation:
    kind, k = parse_draft(options.draft)
    here = {
        "head": f"rooflens's own draft head (a decoder layer and a {options.draft_vocab}-token LM head trained on "
        f"{options.train_prompts} x {options.train_gen_len} corpus tokens)",
        "lookup": "n-gram lookup in the prompt and the output so far",
        "head+lookup": f"rooflens's own draft head ({options.draft_vocab}-token LM head, trained on "
        f"{options.train_prompts} x {options.train_gen_len} corpus tokens) and n-gram lookup",
        "self": f"the target's own layer {k} through the LM head",
    }[kind]
    return Deviation(
        setting="draft",
        here=here,
        reference="a pretrained EAGLE-1 head (fc 2h -> h, one decoder layer, the full LM head)",
        effect="the candidates' hit rate caps the exit rate: a weaker source exits less often than SpecEE",
    )


def fidelity(options: EarlyExitOptions) -> Fidelity:
    """The reference setup of SpecEE and each way ``options`` depart from it."""
    out = [_draft(options)]
    if options.k != 4:
        out.append(Deviation(setting="k", here=str(options.k), reference="4"))
    if options.skipped_kv == "fill":
        out.append(
            Deviation(
                setting="skipped_kv",
                here="fill: the skipped layers' K/V computed from the exit hidden state (CALM's policy)",
                reference="unwritten (skipped_kv: unwritten)",
                effect="later tokens attend to filled entries: closer to the full model's output, at the cost of the "
                "fill's projections",
            )
        )
    if options.schedule == "all":
        out.append(Deviation(setting="schedule", here="a predictor at every layer", reference="two-level"))
    else:  # rooflens's online step takes every layer within the radius, SpecEE's only x-2, x and x+2
        out.append(
            Deviation(
                setting="online schedule",
                here=f"last {options.online_window} exits, every layer within {options.online_radius} of each",
                reference="last 5 exits, layers x-2, x, x+2 of each",
                effect="more predictor calls per token",
            )
        )
    if options.predictor_hidden != 512:
        out.append(Deviation(setting="predictor_hidden", here=str(options.predictor_hidden), reference="512"))
    if (options.train_prompts, options.train_gen_len) != PAPER_TRAINING:
        out.append(
            Deviation(
                setting="predictor training data",
                here=f"{options.train_prompts} corpus prompts x {options.train_gen_len} tokens",
                reference="80 prompts x 256 tokens",
            )
        )
    return Fidelity(technique="SpecEE (Xu et al., ISCA 2025)", reference=REFERENCE, deviations=out)
