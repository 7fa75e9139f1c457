"""What the speculative engine counts over its generations, and how it reports them.

:class:`SpeculativeCounters` is filled by both generation paths (our loop and HF assisted generation);
:data:`STATS` says what each reported number means. A few words differ between the two paths (what a
target pass is, how time is measured): those are ``{placeholders}`` filled from :data:`LOOP_WORDING` or
:data:`HF_WORDING`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rooflens.engines.stat_table import StatSpec, stats_from_table
from rooflens.results.stat import EngineStat


@dataclass
class SpeculativeCounters:
    """Totals since the last ``reset_stats``: passes, tokens drafted and accepted, time per phase."""

    generations: int = 0
    generated: int = 0  # new tokens
    target_passes: int = 0  # prefill passes included
    verify_passes: int = 0
    draft_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_time: float = 0.0
    verify_time: float = 0.0
    prefill_time: float = 0.0
    accepted_hist: list[int] = field(default_factory=list)  # [n]: verify passes that accepted n draft tokens

    def count_accepted(self, n: int) -> None:
        """One verify pass accepted ``n`` draft tokens."""
        if n >= len(self.accepted_hist):
            self.accepted_hist.extend([0] * (n + 1 - len(self.accepted_hist)))
        self.accepted_hist[n] += 1

    def count_round(self, drafted: int, accepted: int) -> None:
        """One draft/verify round of our loop: a target pass that verified ``drafted`` tokens."""
        self.target_passes += 1
        self.verify_passes += 1
        self.drafted += drafted
        self.accepted += accepted
        self.count_accepted(accepted)


_CLOCKED_PHASES = "sum of time.perf_counter intervals around the phase (device synchronized on CUDA)"
_HOOKED_FORWARDS = "sum of forward times measured by pre/post forward hooks (device synchronized on CUDA)"

LOOP_WORDING = {
    "target_passes": ": 1 prefill per generation + 1 verify pass per draft/verify round",
    "verify_passes": " (prefill excluded)",
    "first_token": " (the prefill's first token excluded)",
    "draft_time": "drafting: draft-model forwards incl. its prefill, or the n-gram lookup",
    "verify_time": "verify forwards + acceptance + cache roll-back, prefill excluded",
    "time_how": _CLOCKED_PHASES,
}
"""The words of :data:`STATS` for our own loop (``draft_model``, ``prompt_lookup``)."""

HF_WORDING = {
    "target_passes": " (in HF assisted generation the first pass is the prefill and also verifies the first draft)",
    "verify_passes": " (every target pass verifies)",
    "first_token": "",
    "draft_time": "draft-model forwards (0 for prompt lookup, whose search is not separable)",
    "verify_time": "target forwards, the first (prefill + verify) included",
    "time_how": _HOOKED_FORWARDS,
}
"""The words of :data:`STATS` for HF assisted generation (``hf_assisted``)."""

STATS: dict[str, StatSpec] = {  # in key order, as records have always listed them; ``draft`` last
    "acceptance_rate": StatSpec(description="accepted_tokens / drafted_tokens"),
    "accepted_length_hist": StatSpec(description="[n] = verify passes that accepted exactly n draft tokens"),
    "accepted_tokens": StatSpec("tok", "draft tokens accepted (bonus/correction tokens not counted)"),
    "draft_flops_saved_fraction": StatSpec(
        description="derived from the analytic model: share of a full-vocabulary draft forward's FLOPs (one token) "
        "that the trimmed LM head does not compute"
    ),
    "draft_passes": StatSpec(description="draft-model forward passes incl. the draft's prefill (0 for prompt lookup)"),
    "draft_time_fraction": StatSpec(description="draft_time_s / (draft_time_s + verify_time_s)"),
    "draft_time_s": StatSpec("s", "{draft_time}; {time_how}"),
    "draft_vocab": StatSpec(
        "tok",
        "draft_vocab (VocabTrim): tokens the draft's trimmed LM head keeps, the target's most emitted first (see "
        "draft); the target verifies over its full vocabulary",
    ),
    "draft_vocab_coverage": StatSpec(
        description="generated tokens inside the draft's trimmed vocabulary / generated tokens (a token outside it "
        "is never drafted: the target supplies it)"
    ),
    "draft_weight_bytes_saved_fraction": StatSpec(
        description="derived from the analytic model: share of a full-vocabulary draft forward's weight bytes "
        "(one token, its KV reads left out) that the trimmed LM head does not read"
    ),
    "drafted_tokens": StatSpec("tok", "draft tokens sent to verification"),
    "gamma_mean": StatSpec(
        "tok",
        "draft tokens per verify pass (below gamma at the end of a run, on lookup misses, or when adaptive)",
    ),
    "generated_tokens": StatSpec("tok", "new tokens over those calls"),
    "generations": StatSpec(description="generate() calls since reset_stats"),
    "mean_accepted_per_pass": StatSpec("tok", "accepted draft tokens per verify pass{verify_passes}"),
    "prefill_time_s": StatSpec("s", "target prefill; {time_how}"),  # our loop only
    "target_passes": StatSpec(description="target forward passes{target_passes}"),
    "tokens_per_target_pass": StatSpec(
        "tok",
        "generated_tokens / target_passes, prefill pass included (plain decoding: exactly 1); "
        "identity: generated_tokens = target_passes + accepted_tokens",
    ),
    "tokens_per_verify_pass": StatSpec(
        "tok", "tokens emitted per verify pass = mean_accepted_per_pass + 1{first_token}"
    ),
    "verify_passes": StatSpec(description="draft/verify rounds"),  # our loop only
    "verify_time_s": StatSpec("s", "{verify_time}; {time_how}"),
    "draft": StatSpec(description="the proposer's draft"),
}


def _ratio(a: float, b: float) -> float | str:
    return a / b if b else "n/a"


def speculative_stats(
    c: SpeculativeCounters, hf: bool, draft_note: str, vocab_values: dict[str, Any] | None = None
) -> dict[str, EngineStat]:
    """The engine's statistics from its counters (``hf``: counted in HF assisted generation) and, under
    ``draft_vocab``, the trimmed vocabulary's (``vocab_values``); empty before the first generation."""
    if c.generations == 0:
        return {}
    values = {
        "acceptance_rate": _ratio(c.accepted, c.drafted),
        "accepted_length_hist": list(c.accepted_hist),
        "accepted_tokens": c.accepted,
        "draft_passes": c.draft_passes,
        "draft_time_fraction": _ratio(c.draft_time, c.draft_time + c.verify_time),
        "draft_time_s": c.draft_time,
        "drafted_tokens": c.drafted,
        "gamma_mean": _ratio(c.drafted, c.verify_passes),
        "generated_tokens": c.generated,
        "generations": c.generations,
        "mean_accepted_per_pass": _ratio(c.accepted, c.verify_passes),
        "prefill_time_s": None if hf else c.prefill_time,
        "target_passes": c.target_passes,
        "tokens_per_target_pass": _ratio(c.generated, c.target_passes),
        "tokens_per_verify_pass": _ratio(c.generated - (0 if hf else c.generations), c.verify_passes),
        "verify_passes": None if hf else c.verify_passes,
        "verify_time_s": c.verify_time,
        "draft": draft_note or None,
        **(vocab_values or {}),
    }
    return stats_from_table(STATS, values, **(HF_WORDING if hf else LOOP_WORDING))
