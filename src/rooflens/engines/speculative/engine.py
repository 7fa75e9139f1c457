"""The ``speculative`` engine: set-up (the draft), the choice of generation path, statistics, roofline hints."""

from __future__ import annotations

import copy
from typing import Any

import torch

from rooflens.engines.base import Engine, EngineStat, EngineUnavailable, Fidelity, RooflineHints, TokenClock
from rooflens.engines.compiled import compile_record
from rooflens.engines.decoding import eos_token_ids
from rooflens.engines.options.speculative import SELF_RE, SpeculativeOptions
from rooflens.engines.registry import register
from rooflens.engines.speculative.assisted import generate_assisted
from rooflens.engines.speculative.chooser import TokenChooser
from rooflens.engines.speculative.compiled import CompiledSpeculation, VerifyCount
from rooflens.engines.speculative.draft_cost import DraftForward, head_saving
from rooflens.engines.speculative.drafts import (
    build_draft,
    check_early_exit,
    check_same_vocab,
    draft_parameter_count,
    trimmed_head_elements,
)
from rooflens.engines.speculative.fidelity import fidelity as vocabtrim_fidelity
from rooflens.engines.speculative.loop import EagerTarget, SpeculativeLoop, Target
from rooflens.engines.speculative.proposers import DraftModelProposer, LookupProposer, Proposer
from rooflens.engines.speculative.stats import SpeculativeCounters, speculative_stats
from rooflens.engines.speculative.vocabtrim import DraftVocab, trim_draft
from rooflens.engines.vocabulary import RankSettings, target_ranking
from rooflens.roofline.analytic import OpCost


@register
class SpeculativeEngine(Engine):
    name = "speculative"
    summary = (
        "speculative decoding, lossless: draft model (self:k / shape / HF id), prompt lookup, or HF assisted "
        "generation; greedy or speculative sampling; VocabTrim for draft models (draft_vocab); acceptance statistics"
    )
    Options = SpeculativeOptions
    supports_batch = False
    lossless = True  # greedy: the target's argmax decides every kept token
    examples = (
        {"draft": "self:2", "gamma": 3},
        {"proposer": "prompt_lookup", "gamma": 2},
        {"draft": "self:2", "gamma": 3, "draft_vocab": 64},
    )

    options: SpeculativeOptions

    def __init__(self, options: SpeculativeOptions, model):
        super().__init__(options, model)
        self.draft: torch.nn.Module | None = None
        self.draft_note = ""
        self.vocab: DraftVocab | None = None  # draft_vocab: the draft's trimmed vocabulary (VocabTrim)
        self._outputs: list[torch.Tensor] = []  # new tokens since reset_stats (the trimmed vocabulary's coverage)
        self._eos: list[int] = []
        self._counters = SpeculativeCounters()
        self._sampling_rng: torch.Generator | None = None  # our loop's, made on first use, kept across calls
        self._calls = 0  # generate() calls: hf_assisted seeds each with seed + calls
        self._prepared = False
        self._compiled: CompiledSpeculation | None = None  # compile: true, made at first use (after the draft)

    # -- set-up

    @classmethod
    def extra_weight_bytes(cls, options: SpeculativeOptions, model) -> tuple[int, str]:  # type: ignore[override]
        """A separate draft model's parameters in the target's dtype (``self:k`` shares the target's weights), and
        under ``draft_vocab`` the trimmed LM head's copy."""
        if options.mode != "draft_model" or options.draft is None:
            return 0, ""
        elem = next(model.model.parameters()).element_size()
        total, what = 0, []
        n = draft_parameter_count(options.draft)
        if n is not None:
            total, what = n * elem, [f"draft model {options.draft} ({n / 1e6:.1f} M params)"]
        head = trimmed_head_elements(options.draft, model.model.config, options.draft_vocab or 0)
        if options.draft_vocab is not None and head:
            total += head * elem
            what.append(f"trimmed draft LM head ({head / 1e6:.1f} M params)")
        return total, " + ".join(what)

    def prepare(self) -> None:
        opts = self.options
        target = self.model.model
        self._eos = eos_token_ids(target)
        if opts.mode == "draft_model":
            self.draft, self.draft_note = build_draft(opts.draft, target, seed=opts.seed)  # type: ignore[arg-type]
            self._trim_draft()
        elif opts.mode == "early_exit":
            k = int(SELF_RE.match(opts.draft).group(1))  # type: ignore[union-attr]
            check_early_exit(target, k)
            self.draft_note = f"HF assistant_early_exit={k}"
        self._prepared = True
        self._compiled = None
        self.reset_stats()

    def use_draft(self, draft: torch.nn.Module, note: str = "a draft model given by the caller") -> None:
        """Replace the draft named by the options with a ready model (same vocab as the target), its LM head
        trimmed under ``draft_vocab``."""
        if self.options.mode != "draft_model":
            raise ValueError(f"a draft model applies to draft_model modes, not {self.options.mode}")
        if not self._prepared:
            self._eos = eos_token_ids(self.model.model)
            self._prepared = True
        check_same_vocab(self.model.model, draft)
        self.draft, self.draft_note = draft.eval(), note
        self._trim_draft()
        self._compiled = None

    def _trim_draft(self) -> None:
        """``draft_vocab``: the draft's LM head trimmed to the target's top-ranked tokens (VocabTrim)."""
        n = self.options.draft_vocab
        if n is None or self.draft is None:
            return
        target = self.model.model
        V = int(target.config.vocab_size)
        if n > V:
            raise EngineUnavailable(f"options.draft_vocab: {n} exceeds the model's vocabulary ({V})")
        ranked = target_ranking(target, self.model.tokenizer, self.model.info.label)
        self.vocab = DraftVocab.top(ranked, n, self._eos)
        self.draft = trim_draft(self.draft, self.vocab.ids)
        self.draft_note += (
            f"; VocabTrim: LM head trimmed to the {n} of {V} tokens ranked first by {self._calibration_text()}"
        )

    # -- statistics

    def reset_stats(self) -> None:
        self._counters = SpeculativeCounters()
        self._outputs = []
        if self._compiled is not None:
            self._compiled.count = VerifyCount()

    def stats(self) -> dict[str, EngineStat]:
        hf = self.options.proposer == "hf_assisted"
        return {**speculative_stats(self._counters, hf, self.draft_note, self._vocab_values()), **self.compile_stats()}

    def compile_stats(self) -> dict[str, EngineStat]:
        """How compiling went, as the ``hf`` engine reports it (empty when this engine is not compiled)."""
        c = self._compiled
        if c is None:
            return {}
        run = "one call of each compiled graph (the target's prefill and verify block; the draft's feeds)"
        mode, asked, folder = c.target.mode, self.options.compile_mode, c.target.cache_folder
        return compile_record(c.log, mode, asked, folder, c.target.gemv, run, c.target.step)

    def _vocab_values(self) -> dict[str, Any]:
        """The trimmed vocabulary's size, its coverage of the output, and the share of a draft forward it saves."""
        if self.vocab is None:
            return {}
        generated = sum(int(t.numel()) for t in self._outputs)
        covered = sum(self.vocab.covered(t) for t in self._outputs)
        values: dict[str, Any] = {
            "draft_vocab": self.vocab.size,
            "draft_vocab_coverage": covered / generated if generated else None,
        }
        try:
            saved = head_saving(self._draft_config(), self._draft_bits(), self.vocab.size)
        except ValueError:  # an architecture the analytic model does not know
            return values
        values["draft_weight_bytes_saved_fraction"], values["draft_flops_saved_fraction"] = saved
        return values

    def fidelity(self) -> Fidelity | None:
        """VocabTrim's reference setup and this run's departures from it; None without ``draft_vocab``."""
        return vocabtrim_fidelity(self.options, self._calibration_text())

    def _calibration_text(self) -> str:
        return RankSettings().describe(corpus=self.model.tokenizer is not None)

    def profiled_modules(self) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
        return self.model.model, ({"draft": self.draft} if self.draft is not None else {})

    def roofline_hints(self) -> RooflineHints:
        """Decode passes verify gamma+1 tokens and keep accepted+1 of them (per verify pass); the draft's forwards
        per verify pass are added to the pass as extra ops, with its trimmed LM head under ``draft_vocab``."""
        c = self._counters
        passes = c.verify_passes or max(0, c.target_passes - c.generations)  # HF: minus one prefill pass each
        if not passes:
            return RooflineHints()
        ops, note = self._draft_ops(c.draft_passes / passes)
        verified = c.drafted / passes + 1.0
        count = self._compiled.count if self._compiled is not None else None
        if count is not None and count.passes:  # compiled: a block is one token or padded to the compiled width
            verified = count.tokens / count.passes
            note += (
                f"; compiled: a verify pass processes 1 token (nothing drafted) or {self.verify_width} (short drafts "
                f"padded): {verified:.2f} on average"
            )
        return RooflineHints(
            tokens_per_pass=c.accepted / passes + 1.0, tokens_verified_per_pass=verified, extra_ops=ops, note=note
        )

    def _draft_ops(self, per_pass: float) -> tuple[tuple[OpCost, ...], str]:
        """(the draft's forwards in one verify pass as extra ops, the note on what the decode cost counts)."""
        if self.options.mode == "prompt_lookup":
            return (), "decode cost counts the target's verify passes only (prompt lookup runs no model)"
        n = self.vocab.size if self.vocab is not None else None
        try:
            forward = DraftForward.of(self._draft_config(), self._draft_bits(), n)
        except ValueError as err:
            return (), f"decode cost counts the target's verify passes only; the draft is not modelled ({err})"
        head = f"its {n}-token LM head (VocabTrim)" if n is not None else "its full LM head"
        return forward.ops(per_pass), (
            f"decode cost = the target's verify pass + the draft's {per_pass:.2f} forwards per verify pass (extra ops "
            f"draft_forward and draft_lm_head: one token each with {head}; the draft's attention over its KV cache and "
            "its prefill's extra tokens are left out)"
        )

    def _draft_config(self) -> Any:
        """The draft's config: the draft model's, or for HF early exit the target's cut to its first k layers."""
        if self.draft is not None:
            return self.draft.config
        config = copy.deepcopy(self.model.model.config)
        config.num_hidden_layers = int(SELF_RE.match(self.options.draft or "").group(1))  # type: ignore[union-attr]
        return config

    def _draft_bits(self) -> float:
        module = self.draft if self.draft is not None else self.model.model
        return next(module.parameters()).element_size() * 8.0

    # -- generation

    @property
    def verify_width(self) -> int:
        """The most tokens one verify pass takes: gamma + 1, or gamma_max + 1 under adaptive gamma."""
        opts = self.options
        return (opts.effective_gamma_max if opts.adaptive_gamma else opts.gamma) + 1

    def compiled(self) -> CompiledSpeculation:
        """``compile: true``: the compiled target and draft (made at first use, after ``prepare``)."""
        if not self._prepared:
            self.prepare()
        if self._compiled is None:
            draft = self.draft if self.options.mode == "draft_model" else None
            device, mode = self.model.device, self.options.compile_mode
            width, gemv = self.verify_width, self.options.compile_gemv
            self._compiled = CompiledSpeculation(self.model.model, draft, device, mode, width, gemv)
        return self._compiled

    def warm(self, prompts: torch.Tensor, n_new: int) -> None:
        if self.options.compile and prompts.shape[0] == 1:  # other batch sizes are refused by generate()
            self.compiled().warm(prompts, n_new)

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
        new = self._loop(input_ids, max_new_tokens).run(input_ids, max_new_tokens, clock)
        if self.vocab is not None:
            self._outputs.append(new)
        return new

    def _loop(self, input_ids: torch.Tensor, max_new_tokens: int) -> SpeculativeLoop:
        opts = self.options
        if opts.do_sample and self._sampling_rng is None:
            self._sampling_rng = torch.Generator(device=input_ids.device).manual_seed(opts.seed)
        target, proposer = self._target_and_proposer(input_ids.shape[1], max_new_tokens)
        return SpeculativeLoop(
            target,
            proposer,
            TokenChooser(self._eos, opts.temperature, self._sampling_rng if opts.do_sample else None),
            self._counters,
            gamma=opts.gamma,
            gamma_max=opts.effective_gamma_max if opts.adaptive_gamma else None,
        )

    def _target_and_proposer(self, prompt_len: int, max_new_tokens: int) -> tuple[Target, Proposer]:
        """Eager, or under ``compile: true`` on the compiled forwards (:mod:`.compiled`)."""
        opts = self.options
        compiled = self.compiled() if opts.compile else None
        target: Target = compiled.target_side() if compiled is not None else EagerTarget(self.model.model)
        proposer: Proposer
        if opts.mode == "prompt_lookup":
            proposer = LookupProposer(opts.min_ngram, opts.max_ngram)
        elif compiled is not None:
            proposer = compiled.proposer(self.vocab, prompt_len, max_new_tokens)
        else:
            proposer = DraftModelProposer(self.draft, self.vocab)  # type: ignore[arg-type]
        return target, proposer
