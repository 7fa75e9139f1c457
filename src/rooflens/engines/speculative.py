"""Speculative decoding: a cheap proposer drafts tokens, the target verifies them in one forward pass.

Three proposers:

``draft_model``
    A draft causal LM with the target's vocabulary drafts ``gamma`` tokens greedily (or by
    sampling) with its own KV cache. ``draft`` is ``self:<k>`` (the target's first k layers,
    sharing its embeddings, final norm and LM head: no weight is copied), ``shape:<name>`` (a
    shipped config with random weights) or a Hugging Face id / local path.
``prompt_lookup``
    No draft model: the continuation of the latest earlier occurrence of the last n tokens
    (n from ``max_ngram`` down to ``min_ngram``) in prompt + generated text is the draft.
``hf_assisted``
    transformers' own assisted generation (``assistant_model=``, ``prompt_lookup_num_tokens=``
    or ``assistant_early_exit=``, chosen by ``hf_mode``): the reference implementation.

Our own loop (``draft_model``, ``prompt_lookup``), batch 1::

    prefill the target on the prompt -> first token (emitted: TTFT is comparable to the baseline)
    repeat until max_new_tokens:
        draft g = min(gamma, remaining - 1) tokens
        verify [last token, d_1..d_g] in ONE target forward over its KV cache
        greedy: accept the longest prefix of drafts equal to the target's argmax, plus the
        target's own next token (the correction / bonus token)
        sampling: accept d_i with probability min(1, p(d_i) / q(d_i)); on the first rejection
        sample from norm(max(0, p - q)); if all are accepted sample the bonus token from p
        crop both KV caches back to the accepted length, emit accepted + 1 tokens

so exactly ``max_new_tokens`` tokens come out and greedy output equals the target's greedy
output token for token (the target's EOS ids are masked, as ``min_new_tokens`` does for the
``hf`` baseline, so EOS never ends a run). Sampling is plain temperature sampling (no top-k /
top-p) and its output distribution is the target's, by the speculative-sampling theorem
(Leviathan et al. 2023, Chen et al. 2023); for prompt lookup, q is a point mass on the
looked-up token.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch

from rooflens.engines.base import (
    Engine,
    EngineStat,
    RooflineHints,
    TokenClock,
    register,
    synchronize,
)
from rooflens.engines.decoding import (
    ClockStreamer,
    crop_cache,
    decoder_layers,
    eos_token_ids,
    greedy_config,
    hooks,
    last_logits,
    mask_eos,
    new_cache,
    truncated_model,
)
from rooflens.engines.options.speculative import SELF_RE, SHAPE_PREFIX, SpeculativeOptions

# ---------------------------------------------------------------------------- options


# ---------------------------------------------------------------------------- drafts


def build_draft(spec: str, target: torch.nn.Module, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """The draft model named by ``spec`` on the target's device and dtype, and a description of it."""
    from transformers import AutoModelForCausalLM

    device = next(target.parameters()).device
    dtype = next(target.parameters()).dtype
    m = SELF_RE.match(spec)
    if m:
        k = int(m.group(1))
        return truncated_model(target, k), f"target's first {k} layers (shared weights)"
    if spec.startswith(SHAPE_PREFIX):
        from rooflens.models.loader import shipped_config

        name = spec[len(SHAPE_PREFIX) :]
        config, _ = shipped_config(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.device(device):
                draft = AutoModelForCausalLM.from_config(config, dtype=dtype)
        note = f"shipped config {name}, random weights (seed {seed})"
    else:
        try:
            draft = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype).to(device)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load draft model {spec!r}: {err}") from err
        note = f"from_pretrained({spec!r})"
    draft.eval()
    tv, dv = int(target.config.vocab_size), int(draft.config.vocab_size)
    if tv != dv:
        raise ValueError(
            f"draft {spec!r} has vocab size {dv}, the target has {tv}: a draft must share the target's tokenizer/vocab"
        )
    return draft, note


def lookup_ngram(seq: torch.Tensor, g: int, min_n: int, max_n: int) -> torch.Tensor:
    """Prompt-lookup draft: up to ``g`` tokens that followed an earlier occurrence of the sequence's last n-gram.

    ``seq`` is 1-D. n goes from ``max_n`` down to ``min_n``; for the first n with a match the
    latest occurrence that still has ``g`` tokens after it is used, else the earliest (longest
    continuation). Returns an empty tensor when nothing matches.
    """
    L = int(seq.numel())
    if g <= 0:
        return seq[:0]
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        windows = seq[: L - 1].unfold(0, n, 1)  # starts 0..L-1-n: every n-gram except the suffix itself
        hits = (windows == seq[L - n :]).all(dim=1).nonzero().flatten()
        if hits.numel() == 0:
            continue
        starts = hits.tolist()
        full = [s for s in starts if s + n + g <= L]
        s = full[-1] if full else starts[0]
        return seq[s + n : s + n + g]
    return seq[:0]


# ---------------------------------------------------------------------------- statistics


class _Counters:
    def __init__(self) -> None:
        self.generations = 0
        self.generated = 0
        self.target_passes = 0
        self.verify_passes = 0
        self.draft_passes = 0
        self.drafted = 0
        self.accepted = 0
        self.draft_time = 0.0
        self.verify_time = 0.0
        self.prefill_time = 0.0
        self.hist: list[int] = []

    def accept(self, n: int) -> None:
        if n >= len(self.hist):
            self.hist.extend([0] * (n + 1 - len(self.hist)))
        self.hist[n] += 1


def _ratio(a: float, b: float) -> float | str:
    return a / b if b else "n/a"


def _stats(c: _Counters, hf: bool) -> dict[str, EngineStat]:
    if c.generations == 0:
        return {}
    pass_def = (
        "target forward passes (in HF assisted generation the first pass is the prefill and also verifies the first "
        "draft)"
        if hf
        else "target forward passes: 1 prefill per generation + 1 verify pass per draft/verify round"
    )
    time_how = (
        "sum of forward times measured by pre/post forward hooks (device synchronized on CUDA)"
        if hf
        else "sum of time.perf_counter intervals around the phase (device synchronized on CUDA)"
    )
    s = {
        "generations": EngineStat(value=c.generations, description="generate() calls since reset_stats"),
        "generated_tokens": EngineStat(value=c.generated, unit="tok", description="new tokens over those calls"),
        "target_passes": EngineStat(value=c.target_passes, description=pass_def),
        "draft_passes": EngineStat(
            value=c.draft_passes,
            description="draft-model forward passes incl. the draft's prefill (0 for prompt lookup)",
        ),
        "drafted_tokens": EngineStat(value=c.drafted, unit="tok", description="draft tokens sent to verification"),
        "accepted_tokens": EngineStat(
            value=c.accepted, unit="tok", description="draft tokens accepted (bonus/correction tokens not counted)"
        ),
        "acceptance_rate": EngineStat(
            value=_ratio(c.accepted, c.drafted), description="accepted_tokens / drafted_tokens"
        ),
        "mean_accepted_per_pass": EngineStat(
            value=_ratio(c.accepted, c.verify_passes),
            unit="tok",
            description="accepted draft tokens per verify pass"
            + (" (every target pass verifies)" if hf else " (prefill excluded)"),
        ),
        "tokens_per_target_pass": EngineStat(
            value=_ratio(c.generated, c.target_passes),
            unit="tok",
            description="generated_tokens / target_passes, prefill pass included (plain decoding: exactly 1); "
            "identity: generated_tokens = target_passes + accepted_tokens",
        ),
        "tokens_per_verify_pass": EngineStat(
            value=_ratio(c.generated - (0 if hf else c.generations), c.verify_passes),
            unit="tok",
            description="tokens emitted per verify pass = mean_accepted_per_pass + 1"
            + ("" if hf else " (the prefill's first token excluded)"),
        ),
        "gamma_mean": EngineStat(
            value=_ratio(c.drafted, c.verify_passes),
            unit="tok",
            description="draft tokens per verify pass (below gamma at the end of a run, on lookup misses, "
            "or when adaptive)",
        ),
        "draft_time_s": EngineStat(
            value=c.draft_time,
            unit="s",
            description="drafting: draft-model forwards incl. its prefill, or the n-gram lookup; " + time_how
            if not hf
            else "draft-model forwards (0 for prompt lookup, whose search is not separable); " + time_how,
        ),
        "verify_time_s": EngineStat(
            value=c.verify_time,
            unit="s",
            description="verify forwards + acceptance + cache roll-back, prefill excluded; " + time_how
            if not hf
            else "target forwards, the first (prefill + verify) included; " + time_how,
        ),
        "draft_time_fraction": EngineStat(
            value=_ratio(c.draft_time, c.draft_time + c.verify_time),
            description="draft_time_s / (draft_time_s + verify_time_s)",
        ),
        "accepted_length_hist": EngineStat(
            value=list(c.hist), description="[n] = verify passes that accepted exactly n draft tokens"
        ),
    }
    if not hf:
        s["verify_passes"] = EngineStat(value=c.verify_passes, description="draft/verify rounds")
        s["prefill_time_s"] = EngineStat(value=c.prefill_time, unit="s", description="target prefill; " + time_how)
    return dict(sorted(s.items()))


# ---------------------------------------------------------------------------- the engine


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
        self._c = _Counters()
        self._gen: torch.Generator | None = None
        self._calls = 0
        self._prepared = False

    # -- set-up

    @classmethod
    def extra_weight_bytes(cls, options: SpeculativeOptions, model) -> tuple[int, str]:  # type: ignore[override]
        """A separate draft model's parameters in the target's dtype (``self:k`` shares the target's weights)."""
        spec = options.draft
        if options.mode != "draft_model" or spec is None or SELF_RE.match(spec):
            return 0, ""
        from transformers import AutoConfig, AutoModelForCausalLM

        from rooflens.models.loader import shipped_config

        try:
            config = (
                shipped_config(spec[len(SHAPE_PREFIX) :])[0]
                if spec.startswith(SHAPE_PREFIX)
                else AutoConfig.from_pretrained(spec)
            )
            with torch.device("meta"):
                n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        except Exception:  # noqa: BLE001 - an unreadable draft is reported by prepare(), with its own reason
            return 0, ""
        elem = next(model.model.parameters()).element_size()
        return n * elem, f"draft model {spec} ({n / 1e6:.1f} M params)"

    def prepare(self) -> None:
        opts = self.options
        target = self.model.model
        self._eos = eos_token_ids(target)
        if opts.mode == "draft_model":
            self.draft, self.draft_note = build_draft(opts.draft, target, seed=opts.seed)  # type: ignore[arg-type]
        elif opts.mode == "early_exit":
            k = int(SELF_RE.match(opts.draft).group(1))  # type: ignore[union-attr]
            base, attr, layers = decoder_layers(target)
            if not 1 <= k < len(layers):
                raise ValueError(
                    f"draft 'self:{k}': the target has {len(layers)} layers; k must be in 1..{len(layers) - 1}"
                )
            src = inspect.getsource(type(base).forward)
            if f"self.{attr}[: self.config.num_hidden_layers]" not in src:
                raise ValueError(
                    f"HF early exit truncates via config.num_hidden_layers, which {type(base).__name__}.forward ignores"
                )
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
        tv, dv = int(self.model.model.config.vocab_size), int(draft.config.vocab_size)
        if tv != dv:
            raise ValueError(
                f"the draft has vocab size {dv}, the target has {tv}: a draft must share the target's vocab"
            )
        self.draft, self.draft_note = draft.eval(), note

    def _ensure_prepared(self) -> None:
        if not self._prepared:
            self.prepare()

    def reset_stats(self) -> None:
        self._c = _Counters()

    def stats(self) -> dict[str, EngineStat]:
        out = _stats(self._c, hf=self.options.proposer == "hf_assisted")
        if out and self.draft_note:
            out["draft"] = EngineStat(value=self.draft_note, description="the proposer's draft")
        return out

    def roofline_hints(self) -> RooflineHints:
        """Decode passes verify gamma+1 tokens and keep accepted+1 of them (per verify pass)."""
        c = self._c
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
        self._ensure_prepared()
        self._calls += 1
        if self.options.proposer == "hf_assisted":
            return self._generate_hf(input_ids, max_new_tokens, clock)
        return self._generate_loop(input_ids, max_new_tokens, clock)

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(mask_eos(logits, self._eos) / self.options.temperature, dim=-1)

    def _generate_loop(self, input_ids: torch.Tensor, N: int, clock: TokenClock) -> torch.Tensor:
        opts = self.options
        target, draft = self.model.model, self.draft
        device = input_ids.device
        sample = opts.do_sample
        lookup = opts.mode == "prompt_lookup"
        if sample and self._gen is None:
            self._gen = torch.Generator(device=device).manual_seed(opts.seed)
        gen = self._gen
        c = self._c
        L = input_ids.shape[1]
        seq = torch.empty(1, L + N, dtype=input_ids.dtype, device=device)
        seq[:, :L] = input_ids
        cur = L  # tokens in seq; the target cache always holds cur - 1 of them

        # prefill: the first token, exactly as plain decoding gives it
        synchronize(device)
        t0 = time.perf_counter()
        tcache = new_cache(target)
        logits = last_logits(target, input_ids, tcache)[0]
        if sample:
            first = torch.multinomial(self._probs(logits), 1, generator=gen)
        else:
            first = mask_eos(logits, self._eos).argmax(-1, keepdim=True)
        seq[0, cur] = first[0]
        cur += 1
        synchronize(device)
        c.prefill_time += time.perf_counter() - t0
        c.target_passes += 1
        clock.tokens(1)

        dcache = new_cache(draft) if draft is not None else None
        gamma = opts.gamma
        gmax = opts.effective_gamma_max
        while cur - L < N:
            g = min(gamma, N - (cur - L) - 1)
            # ---- draft
            synchronize(device)
            t0 = time.perf_counter()
            q = None
            if lookup:
                drafts = lookup_ngram(seq[0, :cur], g, opts.min_ngram, opts.max_ngram)
            elif g > 0:
                toks, qs = [], []
                feed = seq[:, dcache.get_seq_length() : cur]
                for _ in range(g):
                    dl = last_logits(draft, feed, dcache)[0]
                    c.draft_passes += 1
                    if sample:
                        qi = self._probs(dl)
                        x = torch.multinomial(qi, 1, generator=gen)
                        qs.append(qi)
                    else:
                        x = mask_eos(dl, self._eos).argmax(-1, keepdim=True)
                    toks.append(x)
                    feed = x.view(1, 1)
                drafts = torch.cat(toks)
                q = torch.stack(qs) if sample else None
            else:
                drafts = seq[0, :0]
            g = int(drafts.numel())
            synchronize(device)
            t1 = time.perf_counter()
            c.draft_time += t1 - t0
            # ---- verify: one target forward over [last token, drafts]
            block = torch.cat([seq[0, cur - 1 : cur], drafts]).view(1, -1)
            tl = target(input_ids=block, past_key_values=tcache, use_cache=True).logits[0]  # [g + 1, V]
            if sample:
                p = self._probs(tl)
                if g:
                    idx = torch.arange(g, device=device)
                    px = p[idx, drafts]
                    qx = q[idx, drafts] if q is not None else torch.ones_like(px)
                    u = torch.rand(g, device=device, generator=gen)
                    ok = (u * qx < px).tolist()  # u < p/q without dividing by a tiny q
                    n = ok.index(False) if False in ok else g
                else:
                    n = 0
                if n < g:  # rejected at position n: sample from norm(max(0, p - q))
                    if q is not None:
                        resid = (p[n] - q[n]).clamp_min(0)
                    else:
                        resid = p[n].clone()
                        resid[drafts[n]] = 0.0
                    if float(resid.sum()) <= 0.0:  # p == q numerically; a rejection then has probability ~0
                        resid = p[n]
                    nxt = torch.multinomial(resid, 1, generator=gen)
                else:
                    nxt = torch.multinomial(p[g], 1, generator=gen)
            else:
                choice = mask_eos(tl, self._eos).argmax(-1)  # [g + 1]
                if g:
                    ok = (choice[:g] == drafts).tolist()
                    n = ok.index(False) if False in ok else g
                else:
                    n = 0
                nxt = choice[n : n + 1]
            seq[0, cur : cur + n] = drafts[:n]
            seq[0, cur + n] = nxt[0]
            cur += n + 1
            crop_cache(tcache, cur - 1)
            if dcache is not None:
                crop_cache(dcache, min(dcache.get_seq_length(), cur - 1))
            synchronize(device)
            c.verify_time += time.perf_counter() - t1
            c.target_passes += 1
            c.verify_passes += 1
            c.drafted += g
            c.accepted += n
            c.accept(n)
            if opts.adaptive_gamma and g > 0:
                gamma = min(gamma + 1, gmax) if n == g else max(gamma - 1, 1)
            clock.tokens(n + 1)
        c.generations += 1
        c.generated += N
        return seq[:, L:].clone()

    # -- HF assisted generation (the reference implementation)

    def _generate_hf(self, input_ids: torch.Tensor, N: int, clock: TokenClock) -> torch.Tensor:
        opts = self.options
        target = self.model.model
        device = input_ids.device
        gc = greedy_config(target, N)
        if opts.do_sample:
            gc.do_sample = True
            gc.temperature = opts.temperature
            gc.top_k = 0  # plain temperature sampling, like our loop (HF's default would be top_k=50)
            gc.top_p = 1.0
        kwargs: dict[str, Any] = {}
        restore: list[tuple[Any, str, Any]] = []

        def set_attr(obj: Any, name: str, value: Any) -> None:
            restore.append((obj, name, getattr(obj, name, None)))
            setattr(obj, name, value)

        schedule = "heuristic" if opts.adaptive_gamma else "constant"
        if opts.mode == "prompt_lookup":
            gc.prompt_lookup_num_tokens = opts.gamma
            gc.max_matching_ngram_size = opts.max_ngram
        else:
            # AssistedCandidateGenerator reads these from the ASSISTANT's generation_config, not from kwargs
            if opts.mode == "draft_model":
                kwargs["assistant_model"] = self.draft
                agc = self.draft.generation_config  # the draft's own copy
            else:
                gc.assistant_early_exit = int(SELF_RE.match(opts.draft).group(1))  # type: ignore[union-attr]
                agc = target.generation_config  # the target is its own assistant: restored below
            set_attr(agc, "num_assistant_tokens", opts.gamma)
            set_attr(agc, "num_assistant_tokens_schedule", schedule)
            set_attr(agc, "assistant_confidence_threshold", opts.confidence_threshold)

        # statistics through hooks: the last decoder layer runs only in full-depth (target) passes
        c = self._c
        base, _, layers = decoder_layers(target)
        full_depth = base.config.num_hidden_layers
        passes: list[int] = []
        times = {"target": 0.0, "draft": 0.0}
        draft_calls = [0]
        state: dict[str, Any] = {}

        def last_layer_pre(_mod, args, kw):
            h = args[0] if args else kw["hidden_states"]
            passes.append(int(h.shape[1]))

        def top_pre(role):
            def hook(_mod, _args):
                r = role
                if r == "auto":  # early exit: the target module drafts with fewer layers
                    r = "draft" if base.config.num_hidden_layers < full_depth else "target"
                if r == "draft":
                    draft_calls[0] += 1
                synchronize(device)
                state[id(_mod)] = (r, time.perf_counter())

            return hook

        def top_post(_mod, _args, _out):
            r, t0 = state.pop(id(_mod))
            synchronize(device)
            times[r] += time.perf_counter() - t0

        streamer = ClockStreamer(clock)
        try:
            with hooks() as handles, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                handles.append(layers[-1].register_forward_pre_hook(last_layer_pre, with_kwargs=True))
                if opts.mode == "early_exit":
                    handles.append(target.register_forward_pre_hook(top_pre("auto")))
                    handles.append(target.register_forward_hook(top_post))
                else:
                    handles.append(target.register_forward_pre_hook(top_pre("target")))
                    handles.append(target.register_forward_hook(top_post))
                    if self.draft is not None:
                        handles.append(self.draft.register_forward_pre_hook(top_pre("draft")))
                        handles.append(self.draft.register_forward_hook(top_post))
                torch.manual_seed(opts.seed + self._calls)
                out = target.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=gc,
                    streamer=streamer,
                    **kwargs,
                )
        finally:
            for obj, name, old in reversed(restore):
                setattr(obj, name, old)
        new = out[:, input_ids.shape[1] :]
        L = input_ids.shape[1]
        drafted = (passes[0] - L if passes else 0) + sum(x - 1 for x in passes[1:])
        c.generations += 1
        c.generated += int(new.shape[1])
        c.target_passes += len(passes)
        c.verify_passes += len(passes)
        c.draft_passes += draft_calls[0]
        c.drafted += drafted
        c.accepted += streamer.tokens - streamer.puts
        for n in streamer.sizes:
            c.accept(n - 1)
        c.draft_time += times["draft"]
        c.verify_time += times["target"]
        return new
