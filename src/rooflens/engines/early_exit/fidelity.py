"""How an ``early_exit`` run departs from SpecEE's reference setup, as read in the authors' artifact
(RickWayne1125/SpecEE) and its predictor training (MathsCode/ISCA25-SpecEE)."""

from __future__ import annotations

from rooflens.engines.early_exit.calibration import Calibration
from rooflens.engines.options.early_exit import EarlyExitOptions, parse_draft
from rooflens.results.stat import Deviation, Fidelity

REFERENCE = (
    "the authors' artifact (RickWayne1125/SpecEE): k = 4 candidates from a pretrained EAGLE-1 head, predictors "
    "12-512-1 trained on 80 prompts x 256 tokens, a two-level schedule (offline layers; online the last 5 exits x "
    "at x-2, x, x+2), skipped layers' KV left unwritten, fp16"
)
PAPER_TRAINING = (80, 256)  # prompts x tokens per prompt of the predictors' training data


def _draft(options: EarlyExitOptions) -> Deviation | None:
    """None for ``eagle:<folder>``: a pretrained EAGLE-1 head is the reference's own draft."""
    kind, k = parse_draft(options.draft)
    if kind == "eagle":
        return None
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


def _skipped_kv(policy: str) -> Deviation:
    here, effect = {
        "fill": (
            "fill: the skipped layers' K/V computed from the exit hidden state (CALM's policy)",
            "later tokens attend to filled entries: closer to the full model's output than unwritten, at the cost of "
            "the fill's projections",
        ),
        "deferred": (
            "deferred: the skipped layers still run for the exited token, batched with the next token's pass, so the "
            "cache holds only the full model's K/V",
            "later tokens see exactly the full model's cache (no drift from the KV policy); the skipped layers' "
            "compute is postponed, not saved: the saving is weight reads per token, i.e. on memory-bound decode",
        ),
    }[policy]
    return Deviation(setting="skipped_kv", here=here, reference="unwritten (skipped_kv: unwritten)", effect=effect)


def _threshold(threshold: float, calibration: Calibration | None) -> Deviation | None:
    """The exit threshold when it is not the artifact's fixed 0.5: calibrated (auto) or set by hand."""
    if calibration is None and threshold == 0.5:
        return None
    if calibration is None:
        here, effect = f"{threshold:g}, set in the options", "a lower threshold exits more and diverges sooner"
    elif calibration.reached:
        here = calibration.describe()
        effect = "exits only as far as they keep the full model's greedy output on held-out text: fewer than at 0.5"
    else:
        here, effect = calibration.describe(), "no exits at all: the run is the full model"
    return Deviation(setting="threshold", here=here, reference="0.5, fixed", effect=effect)


def fidelity(options: EarlyExitOptions, threshold: float = 0.5, calibration: Calibration | None = None) -> Fidelity:
    """The reference setup of SpecEE and each way ``options`` (and the threshold in use) depart from it."""
    out = [d for d in (_draft(options),) if d is not None]
    if (dev := _threshold(threshold, calibration)) is not None:
        out.append(dev)
    if options.k != 4:
        out.append(Deviation(setting="k", here=str(options.k), reference="4"))
    if options.skipped_kv != "unwritten":
        out.append(_skipped_kv(options.skipped_kv))
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
