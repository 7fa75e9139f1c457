"""The ``speculative`` engine: set-up (the draft), the choice of generation path, statistics, roofline hints."""

from __future__ import annotations

import torch

from rooflens.engines.base import Engine, EngineStat, RooflineHints, TokenClock
from rooflens.engines.decoding import eos_token_ids
from rooflens.engines.options.speculative import SELF_RE, SpeculativeOptions
from rooflens.engines.registry import register
from rooflens.engines.speculative.assisted import generate_assisted
from rooflens.engines.speculative.chooser import TokenChooser
from rooflens.engines.speculative.drafts import build_draft, check_early_exit, check_same_vocab, draft_parameter_count
from rooflens.engines.speculative.loop import SpeculativeLoop
from rooflens.engines.speculative.proposers import DraftModelProposer, LookupProposer, Proposer
from rooflens.engines.speculative.stats import SpeculativeCounters, speculative_stats


@register
class SpeculativeEngine(Engine):
    name = "speculative"
    summary = (
        "speculative decoding, lossless: draft model (self:k / shape / HF id), prompt lookup, or HF assisted "
        "generation; greedy or speculative sampling; acceptance statistics"
    )
    Options = SpeculativeOptions
    supports_batch = False
    lossless = True  # greedy: the target's argmax decides every kept token
    examples = ({"draft": "self:2", "gamma": 3}, {"proposer": "prompt_lookup", "gamma": 2})

    options: SpeculativeOptions

    def __init__(self, options: SpeculativeOptions, model):
        super().__init__(options, model)
        self.draft: torch.nn.Module | None = None
        self.draft_note = ""
        self._eos: list[int] = []
        self._counters = SpeculativeCounters()
        self._sampling_rng: torch.Generator | None = None  # our loop's, made on first use, kept across calls
        self._calls = 0  # generate() calls: hf_assisted seeds each with seed + calls
        self._prepared = False

    # -- set-up

    @classmethod
    def extra_weight_bytes(cls, options: SpeculativeOptions, model) -> tuple[int, str]:  # type: ignore[override]
        """A separate draft model's parameters in the target's dtype (``self:k`` shares the target's weights)."""
        if options.mode != "draft_model" or options.draft is None:
            return 0, ""
        n = draft_parameter_count(options.draft)
        if n is None:
            return 0, ""
        elem = next(model.model.parameters()).element_size()
        return n * elem, f"draft model {options.draft} ({n / 1e6:.1f} M params)"

    def prepare(self) -> None:
        opts = self.options
        target = self.model.model
        self._eos = eos_token_ids(target)
        if opts.mode == "draft_model":
            self.draft, self.draft_note = build_draft(opts.draft, target, seed=opts.seed)  # type: ignore[arg-type]
        elif opts.mode == "early_exit":
            k = int(SELF_RE.match(opts.draft).group(1))  # type: ignore[union-attr]
            check_early_exit(target, k)
            self.draft_note = f"HF assistant_early_exit={k}"
        self._prepared = True
        self.reset_stats()

    def use_draft(self, draft: torch.nn.Module, note: str = "a draft model given by the caller") -> None:
        """Replace the draft named by the options with a ready model (same vocab as the target)."""
        if self.options.mode != "draft_model":
            raise ValueError(f"a draft model applies to draft_model modes, not {self.options.mode}")
        if not self._prepared:
            self._eos = eos_token_ids(self.model.model)
            self._prepared = True
        check_same_vocab(self.model.model, draft)
        self.draft, self.draft_note = draft.eval(), note

    # -- statistics

    def reset_stats(self) -> None:
        self._counters = SpeculativeCounters()

    def stats(self) -> dict[str, EngineStat]:
        return speculative_stats(self._counters, self.options.proposer == "hf_assisted", self.draft_note)

    def profiled_modules(self) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
        return self.model.model, ({"draft": self.draft} if self.draft is not None else {})

    def roofline_hints(self) -> RooflineHints:
        """Decode passes verify gamma+1 tokens and keep accepted+1 of them (per verify pass)."""
        c = self._counters
        passes = c.verify_passes or max(0, c.target_passes - c.generations)  # HF: minus one prefill pass each
        if not passes:
            return RooflineHints()
        note = "decode cost counts the target's verify passes only"
        if self.options.mode != "prompt_lookup":
            note += "; the draft model's own passes are not in the analytic model (see draft_time_fraction)"
        return RooflineHints(
            tokens_per_pass=c.accepted / passes + 1.0,
            tokens_verified_per_pass=c.drafted / passes + 1.0,
            note=note,
        )

    # -- generation

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        if input_ids.shape[0] != 1:
            raise ValueError(f"engine 'speculative' supports batch size 1 only (got {input_ids.shape[0]})")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if not self._prepared:
            self.prepare()
        self._calls += 1
        opts = self.options
        if opts.proposer == "hf_assisted":
            return generate_assisted(
                opts,
                self.model.model,
                self.draft,
                input_ids,
                max_new_tokens,
                clock,
                self._counters,
                seed=opts.seed + self._calls,
            )
        return self._loop(input_ids.device).run(input_ids, max_new_tokens, clock)

    def _loop(self, device: torch.device) -> SpeculativeLoop:
        opts = self.options
        if opts.do_sample and self._sampling_rng is None:
            self._sampling_rng = torch.Generator(device=device).manual_seed(opts.seed)
        proposer: Proposer
        if opts.mode == "prompt_lookup":
            proposer = LookupProposer(opts.min_ngram, opts.max_ngram)
        else:
            proposer = DraftModelProposer(self.draft)  # type: ignore[arg-type]
        return SpeculativeLoop(
            self.model.model,
            proposer,
            TokenChooser(self._eos, opts.temperature, self._sampling_rng if opts.do_sample else None),
            self._counters,
            gamma=opts.gamma,
            gamma_max=opts.effective_gamma_max if opts.adaptive_gamma else None,
        )
