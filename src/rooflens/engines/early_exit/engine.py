"""The ``early_exit`` engine: SpecEE's speculative early exit (Xu et al., ISCA 2025), batch 1, greedy, lossy.

Each decode step::

    candidates = k tokens from the draft (head / lookup / self:k)            -> "draft" time
    for each layer i of the target:
        run layer i                                                          -> "layers" time
        if i is scheduled (offline layers ∪ ±radius around recent exits):
            p = predictor_i(features of the candidates at layer i)           -> "predictors" time
            if p > threshold:                                                 (SpecEE's exit test)
                pre-check: argmax over the trimmed vocabulary + the candidates; not a candidate
                    -> no candidate can be the full argmax: go on              -> "exit_head" time
                t = full-vocabulary argmax of layer i                        -> "exit_head" time
                if t in candidates: emit t, stop the step here                (verification)
    no exit: final norm + LM head as usual                                   -> "final_head" time
    layers after an exit get KV per ``skipped_kv``                           -> "kv_fill" time

Skipped layers' KV (``skipped_kv``): ``fill`` (default) writes, for every skipped layer, the K/V that
layer's projections compute from the exit layer's hidden state (CALM's state propagation: one K and
one V projection per skipped layer), so every layer keeps one cache entry per token; ``unwritten`` is
SpecEE's policy: skipped layers get no entry and later tokens attend to fewer positions there (needs
an attention that takes a single query without a mask, e.g. sdpa).

Exits are not re-verified by the remaining layers, so the output can differ from the ``hf`` baseline's:
the records' agreement says how much. ``stats()`` also audits the run outside the timed region (the
full-depth model teacher-forced on the engine's own output: was each exit the full model's token,
precision / recall of the predictor calls) and runs the exit oracle on the baseline's own decode.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from rooflens.engines.base import (
    Engine,
    EngineStat,
    EngineUnavailable,
    RooflineHints,
    TokenClock,
    register,
    synchronize,
)
from rooflens.engines.decoding import LayerStack, eos_token_ids, forward_layers, mask_eos, new_cache, write_kv
from rooflens.engines.early_exit.oracle import oracle_exits
from rooflens.engines.early_exit.predictors import exit_features, threshold_logit
from rooflens.engines.early_exit.proposers import lookup_candidates, mixed_candidates, parse_draft
from rooflens.engines.early_exit.training import (
    ExitArtifacts,
    load_or_train,
    teacher_forced,
)
from rooflens.engines.options.early_exit import EarlyExitOptions

log = logging.getLogger(__name__)

PHASES = ("draft", "layers", "predictors", "exit_head", "final_head", "kv_fill")
_AUDIT_GENERATIONS = 4


@dataclass
class _Generation:
    prompt: torch.Tensor
    tokens: torch.Tensor
    calls: list[list[tuple[int, bool]]]  # per decode step: (layer, predictor fired)
    exits: list[int | None]  # per decode step: exit layer or None (full depth)


@dataclass
class _Counters:
    generations: int = 0
    steps: int = 0  # decode steps (the prefill's token excluded)
    exits: int = 0
    layers_run: int = 0
    predictor_calls: int = 0
    fired: int = 0  # predictor calls above the threshold
    precheck_rejects: int = 0  # of those, rejected by the pre-check (no full LM head)
    exit_heads: int = 0  # full-vocabulary LM heads run to verify an exit
    layers_hist: list[int] = field(default_factory=list)
    time: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    prefill_time: float = 0.0
    kept: deque = field(default_factory=lambda: deque(maxlen=_AUDIT_GENERATIONS))


class _Lap:
    """Adds the time since the previous lap to a phase (device synchronised on CUDA)."""

    def __init__(self, device: torch.device, into: dict[str, float]):
        self.device, self.into = device, into
        synchronize(device)
        self.t = time.perf_counter()

    def __call__(self, phase: str) -> None:
        synchronize(self.device)
        t = time.perf_counter()
        self.into[phase] = self.into.get(phase, 0.0) + t - self.t
        self.t = t


@register
class EarlyExitEngine(Engine):
    name = "early_exit"
    summary = (
        "SpecEE speculative early exit, lossy: k candidates (trained draft head / prompt lookup / self:k), "
        "per-layer MLP predictors, two-level scheduling, exit verification; exit statistics, time split, oracle"
    )
    Options = EarlyExitOptions
    supports_batch = False
    lossless = False
    _tiny = {
        "train_prompts": 3,
        "train_prompt_len": 6,
        "train_gen_len": 4,
        "predictor_epochs": 5,
        "draft_vocab": 64,
        "predictor_hidden": 8,
        "draft_epochs": 1,
    }
    examples = (
        {"k": 3, "threshold": 0.0, **_tiny},  # threshold 0: every scheduled layer tries to exit
        {"draft": "lookup", "k": 2, "schedule": "all", "skipped_kv": "unwritten", **_tiny},
        {"draft": "self:1", "k": 2, "threshold": 0.0, **_tiny},
    )

    options: EarlyExitOptions

    def __init__(self, options: EarlyExitOptions, model):
        super().__init__(options, model)
        self.art: ExitArtifacts | None = None
        self.source = ""
        self._c = _Counters()
        self._audit_cache: tuple[int, dict[str, EngineStat]] | None = None

    # -- set-up

    @classmethod
    def unavailable_reason(cls, device: torch.device, model=None) -> str | None:
        reason = super().unavailable_reason(device, model)
        if reason is None and model is not None:
            try:
                LayerStack.of(model.model)
            except ValueError as err:
                return f"engine 'early_exit': {err}"
        return reason

    @classmethod
    def extra_weight_bytes(cls, options: EarlyExitOptions, model) -> tuple[int, str]:  # type: ignore[override]
        cfg = model.model.config
        h, L = int(cfg.hidden_size), int(cfg.num_hidden_layers)
        pred = L * (3 * options.k * options.predictor_hidden + 2 * options.predictor_hidden + 1)
        n, what = pred, f"{L} exit predictors"
        if parse_draft(options.draft)[0] in ("head", "head+lookup"):
            layer = sum(p.numel() for p in LayerStack.of(model.model).layers[-1].parameters())
            n += 2 * h * h + layer + options.draft_vocab * h
            what += f" + draft head ({options.draft_vocab}-token vocabulary)"
        return 4 * n, what  # float32

    def prepare(self) -> None:
        opts = self.options
        target = self.model.model
        self.stack = LayerStack.of(target)
        self._eos = eos_token_ids(target)
        L, V = len(self.stack.layers), int(target.config.vocab_size)
        kind, self_k = parse_draft(opts.draft)
        if self_k is not None and not 1 <= self_k < L:
            raise EngineUnavailable(f"options.draft: 'self:{self_k}' needs 1 <= k < {L} (the model's layers)")
        if kind in ("head", "head+lookup") and opts.draft_vocab > V:
            raise EngineUnavailable(f"options.draft_vocab: {opts.draft_vocab} exceeds the model's vocabulary ({V})")
        if opts.k > V:
            raise EngineUnavailable(f"options.k: {opts.k} exceeds the model's vocabulary ({V})")
        if opts.skipped_kv == "unwritten" and target.config._attn_implementation == "eager":
            raise EngineUnavailable(
                "options.skipped_kv: 'unwritten' needs an attention without a full-length mask (sdpa, flash); "
                "this model uses eager attention - use skipped_kv: fill"
            )
        self._kind, self._self_k = kind, self_k
        t0 = time.perf_counter()
        label = self.model.info.label
        self.art, path, trained = load_or_train(target, self.model.tokenizer, label, opts.settings)
        if trained:
            self.source = f"trained now ({time.perf_counter() - t0:.1f} s; the cache was empty), saved to {path}"
            log.warning("early_exit: no cached predictors for %s; %s", label, self.source)
        else:
            self.source = f"cache {path}"
        n_off = opts.offline_layers or max(1, round(L / 4))
        first = self_k or 0
        self._offline = {i for i in self.art.offline_layers(n_off) if first <= i < L - 1}
        self._thr = threshold_logit(opts.threshold)
        self._pre_rows = self._pre_ids = None
        if opts.precheck:
            eos = set(self._eos)
            ids = [t for t in self.art.ranked_vocab[: opts.draft_vocab].tolist() if t not in eos]
            self._pre_ids = torch.tensor(ids, dtype=torch.long, device=self.art.ranked_vocab.device)
            self._pre_rows = self.stack.lm_head.weight.detach()[self._pre_ids].float()
        self.reset_stats()

    def reset_stats(self) -> None:
        self._c = _Counters()
        self._c.layers_hist = [0] * (len(self.stack.layers) + 1) if hasattr(self, "stack") else []
        self._audit_cache = None

    def scoring_model(self) -> torch.nn.Module | None:
        return None  # the exit policy is not one module's distribution (teacher-forced exit perplexity: not built)

    # -- generation

    def _scheduled(self, recent: deque) -> set[int]:
        L = len(self.stack.layers)
        first = self._self_k or 0
        if self.options.schedule == "all":
            return set(range(first, L - 1))
        r = self.options.online_radius
        online = {j for e in recent for j in range(e - r, e + r + 1)}
        return self._offline | {j for j in online if first <= j < L - 1}

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        if input_ids.shape[0] != 1:
            raise ValueError(f"engine 'early_exit' supports batch size 1 only (got {input_ids.shape[0]})")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.art is None:
            self.prepare()
        return self._generate(input_ids, max_new_tokens, clock)

    def _generate(self, input_ids: torch.Tensor, N: int, clock: TokenClock) -> torch.Tensor:
        opts, art, stack, eos, c = self.options, self.art, self.stack, self._eos, self._c
        assert art is not None
        model = self.model.model
        device = input_ids.device
        L = len(stack.layers)
        head_w = stack.lm_head.weight
        draft, pred, thr = art.draft, art.predictors, self._thr
        pre_rows, pre_ids, eos_set = self._pre_rows, self._pre_ids, set(eos)
        P = input_ids.shape[1]
        seq = torch.empty(1, P + N, dtype=input_ids.dtype, device=device)
        seq[:, :P] = input_ids
        calls_log: list[list[tuple[int, bool]]] = []
        exits_log: list[int | None] = []
        split = c.time

        # prefill at full depth (+ the draft head over the prompt): the first token as plain decoding gives it
        prefill_times: dict[str, float] = {}
        lap = _Lap(device, prefill_times)
        cache = new_cache(model)
        _, h = forward_layers(stack, input_ids, cache, torch.arange(P, device=device))
        hn_all = stack.norm(h)
        hn = hn_all[:, -1:]
        seq[0, P] = mask_eos(stack.lm_head(hn)[:, -1], eos).argmax(-1)
        dcache = None
        if draft is not None:
            dcache = draft.new_cache()
            if P >= 2:
                draft(
                    stack.embed_tokens(input_ids[:, 1:]),
                    hn_all[:, :-1],
                    torch.arange(P - 1, device=device).view(1, -1),
                    dcache,
                )
        lap("prefill")
        c.prefill_time += prefill_times["prefill"]
        clock.tokens(1)

        recent: deque = deque(maxlen=opts.online_window)
        cur = P + 1  # tokens in seq; the cache holds cur - 1 of them (at layer 0)
        lap = _Lap(device, split)
        for _ in range(1, N):
            x = seq[:, cur - 1 : cur]
            pos = torch.tensor([cur - 1], device=device)
            cand: torch.Tensor | None = None
            if draft is not None:
                dl = draft(stack.embed_tokens(x), hn, torch.tensor([[cur - 2]], device=device), dcache)
                cand = draft.vocab_ids[dl[0, -1].topk(opts.k).indices]
                if self._kind == "head+lookup":
                    cand = mixed_candidates(seq[0, :cur], cand.tolist(), opts.k, art.ranked_vocab)
            elif self._kind == "lookup":
                cand = lookup_candidates(seq[0, :cur], opts.k, art.ranked_vocab)
            lap("draft")
            checked = self._scheduled(recent)
            st: dict[str, Any] = {
                "cand": cand,
                "rows": None if cand is None else head_w[cand],
                "last": None,
                "exit": None,
                "tok": None,
                "hn": None,
                "calls": [],
            }
            if cand is not None:
                cand_list = cand.tolist()
                st["set"] = set(cand_list)
                st["eos_pos"] = [j for j, t in enumerate(cand_list) if t in eos_set]

            def on_layer(i: int, hidden: torch.Tensor) -> bool:
                if self._self_k is not None and i == self._self_k - 1:  # self:k: candidates from layer k-1's head
                    lap("layers")
                    logits = mask_eos(stack.lm_head(stack.norm(hidden[0, -1])), eos)
                    st["cand"] = logits.topk(opts.k).indices
                    st["rows"], st["set"] = head_w[st["cand"]], set(st["cand"].tolist())
                    st["eos_pos"] = [j for j, t in enumerate(st["cand"].tolist()) if t in eos_set]
                    lap("draft")
                    return False
                if i not in checked or st["rows"] is None:
                    return False
                lap("layers")
                hn_i = stack.norm(hidden[:, -1:])
                feat, st["last"] = exit_features(hn_i[0, 0], st["rows"], st["last"])
                fired = float(pred.logit(i, feat)) > thr
                st["calls"].append((i, fired))
                lap("predictors")
                if not fired:
                    return False
                c.fired += 1
                if pre_rows is not None:  # exact pre-check: can a candidate be the full argmax at all?
                    cl = feat[: opts.k].clone()
                    cl[st["eos_pos"]] = float("-inf")
                    pl = pre_rows @ hn_i[0, 0].float()
                    j = int(pl.argmax())
                    if float(pl[j]) > float(cl.max()) and int(pre_ids[j]) not in st["set"]:
                        c.precheck_rejects += 1
                        lap("exit_head")
                        return False
                t = int(mask_eos(stack.lm_head(hn_i[0, 0]), eos).argmax())
                c.exit_heads += 1
                lap("exit_head")
                if t in st["set"]:
                    st["exit"], st["tok"], st["hn"] = i, t, hn_i
                    return True
                return False

            _, h = forward_layers(stack, x, cache, pos, on_layer)
            lap("layers")
            e = st["exit"]
            if e is not None:
                seq[0, cur] = st["tok"]
                hn = st["hn"]
                if opts.skipped_kv == "fill" and e < L - 1:
                    write_kv(stack, h, pos, cache, range(e + 1, L))
                    lap("kv_fill")
                run = e + 1
                c.exits += 1
            else:
                hn = stack.norm(h)
                seq[0, cur] = mask_eos(stack.lm_head(hn)[:, -1], eos).argmax(-1)
                lap("final_head")
                run = L
            recent.append(run - 1)
            c.steps += 1
            c.layers_run += run
            c.layers_hist[run] += 1
            c.predictor_calls += len(st["calls"])
            calls_log.append(st["calls"])
            exits_log.append(e)
            cur += 1
            clock.tokens(1)
            lap.t = time.perf_counter()  # the clock's own sync is not engine time
        c.generations += 1
        out = seq[:, P:].clone()
        c.kept.append(_Generation(input_ids[0].cpu(), out[0].cpu(), calls_log, exits_log))
        return out

    # -- statistics

    def stats(self) -> dict[str, EngineStat]:
        c = self._c
        if not c.generations:
            return {}
        L = len(self.stack.layers)
        steps = max(1, c.steps)
        layers_time = c.time["layers"]
        total = sum(c.time.values())
        s: dict[str, EngineStat] = {
            "generations": EngineStat(value=c.generations, description="generate() calls since reset_stats"),
            "decode_steps": EngineStat(value=c.steps, description="decode steps (the prefill's first token excluded)"),
            "exit_rate": EngineStat(
                value=c.exits / steps, description="decode steps that exited before the last layer"
            ),
            "layers_executed_per_token": EngineStat(
                value=c.layers_run / steps,
                unit="layers",
                description=f"mean decoder layers run per decode step (of {L})",
            ),
            "mean_exit_layer": EngineStat(
                value=(sum(i * n for i, n in enumerate(c.layers_hist[:L])) / c.exits) if c.exits else "n/a",
                unit="layers",
                description="mean layers run by the steps that exited (1-based: exit after layer i runs i + 1)",
            ),
            "layers_run_hist": EngineStat(
                value=list(c.layers_hist), description="[n] = decode steps that ran n layers"
            ),
            "predictor_calls_per_token": EngineStat(
                value=c.predictor_calls / steps, description="predictor MLPs run per decode step"
            ),
            "predictor_fired_per_token": EngineStat(
                value=c.fired / steps, description="predictor calls above the threshold per decode step"
            ),
            "precheck_rejects_per_token": EngineStat(
                value=c.precheck_rejects / steps,
                description="firing predictors rejected by the trimmed-vocabulary pre-check (no full LM head) per decode step",
            ),
            "exit_head_calls_per_token": EngineStat(
                value=c.exit_heads / steps, description="full-vocabulary LM heads run to verify an exit per decode step"
            ),
            "verification_pass_rate": EngineStat(
                value=c.exits / c.fired if c.fired else "n/a",
                description="firing predictors whose layer argmax was among the candidates (exits / fired)",
            ),
            "skipped_kv": EngineStat(
                value=self.options.skipped_kv, description="KV policy for the layers after an exit"
            ),
            "draft": EngineStat(value=self.options.draft, description="candidate source"),
            "predictors_source": EngineStat(
                value=self.source, description="where the draft head and predictors came from"
            ),
            "prefill_time_s": EngineStat(
                value=c.prefill_time, unit="s", description="full-depth prefill + draft head over the prompt"
            ),
            "layer_time_per_layer_s": EngineStat(
                value=layers_time / max(1, c.layers_run),
                unit="s",
                description="decode layer time / layers run (incl. KV writes)",
            ),
        }
        for phase in PHASES:
            s[f"time_{phase}_s"] = EngineStat(
                value=c.time[phase],
                unit="s",
                description=f"decode steps, {phase}: sum of time.perf_counter laps (device synchronised on CUDA)",
            )
            s[f"time_{phase}_fraction"] = EngineStat(
                value=c.time[phase] / total if total else 0.0, description=f"time_{phase}_s / decode time"
            )
        for key, value in (self.art.report if self.art else {}).items():
            if isinstance(value, (int, float, str)):
                s[f"train_{key}"] = EngineStat(
                    value=value, description="from training (validation: held-out sequences)"
                )
            elif key == "simulated_validation":
                s["train_simulated_validation"] = EngineStat(
                    value="; ".join(
                        f"t{t}: token accuracy {v['token_accuracy']:.3f}, layers {v['mean_layers']:.2f}"
                        for t, v in value.items()
                    ),
                    description="threshold -> per-token accuracy and mean layers of the exit rule on held-out training "
                    "positions, every layer checked, teacher-forced (no divergence)",
                )
        if self.options.audit:
            s.update(self._audit())
        return dict(sorted(s.items()))

    @torch.inference_mode()
    def _audit(self) -> dict[str, EngineStat]:
        """Exit precision, predictor precision / recall and the oracles; not timed (runs after the measurement)."""
        c = self._c
        if self._audit_cache is not None and self._audit_cache[0] == id(c.kept[-1]):
            return self._audit_cache[1]
        model = self.model.model
        device = next(model.parameters()).device
        L = len(self.stack.layers)
        exits_ok = exits = tp = fired = positives = 0
        oracle_own: list[int] = []
        for g in c.kept:
            P, N = g.prompt.numel(), g.tokens.numel()
            if N < 2:
                continue
            seq = torch.cat([g.prompt, g.tokens]).to(device).view(1, -1)
            tf = teacher_forced(model, seq, P - 1)  # positions P-1 .. P+N-2 predict the N tokens
            correct = tf.layer_argmax == tf.layer_argmax[-1]  # [L, N]
            oracle_own += (correct.float().argmax(0) + 1)[1:].tolist()
            for s, (calls, e) in enumerate(zip(g.calls, g.exits), start=1):
                if e is not None:
                    exits += 1
                    exits_ok += int(g.tokens[s]) == int(tf.layer_argmax[-1, s])
                for i, f in calls:
                    ok = bool(correct[i, s])
                    fired += f
                    tp += f and ok
                    positives += ok
        out = {
            "audit_exit_precision": EngineStat(
                value=exits_ok / exits if exits else "n/a",
                description="exits whose token equals the full-depth model's on the same prefix (teacher-forced audit)",
            ),
            "audit_predictor_precision": EngineStat(
                value=tp / fired if fired else "n/a",
                description="predictor calls that fired and whose layer argmax was the full-depth token",
            ),
            "audit_predictor_recall": EngineStat(
                value=tp / positives if positives else "n/a",
                description="of the predictor calls at a layer whose argmax was already the full-depth token, those that fired",
            ),
            "audit_generations": EngineStat(value=len(c.kept), description="generations audited (the last ones)"),
        }
        if oracle_own:
            out["oracle_mean_layers_own_text"] = EngineStat(
                value=sum(oracle_own) / len(oracle_own),
                unit="layers",
                description="earliest layer whose argmax is the full-depth token, on the engine's own output (teacher-forced)",
            )
        prompts = {tuple(g.prompt.tolist()): g for g in c.kept}
        first = next(iter(prompts.values()))
        orc = oracle_exits(model, first.prompt.to(device).view(1, -1), first.tokens.numel())
        mean = sum(orc.layers_needed[1:]) / max(1, len(orc.layers_needed) - 1)
        out["oracle_mean_layers"] = EngineStat(
            value=mean,
            unit="layers",
            description=f"exit oracle on the baseline's own full-depth decode of the first prompt (decode steps; of {L})",
        )
        out["oracle_layers_hist"] = EngineStat(
            value=[orc.layers_needed[1:].count(n) for n in range(L + 1)],
            description="[n] = oracle decode steps needing n layers",
        )
        bound = self._roofline_bound(mean, first.prompt.numel(), first.tokens.numel())
        if bound is not None:
            out["oracle_speedup_bound"] = EngineStat(
                value=bound,
                description="derived: analytic decode bytes at full depth / at the oracle's mean layers (memory-bound "
                "roofline; draft, predictors and exit checks free)",
            )
        per_layer = c.time["layers"] / max(1, c.layers_run)
        full_steps_all = c.steps - c.exits
        head = (
            c.time["final_head"] / full_steps_all
            if full_steps_all
            else (c.time["exit_head"] / c.exit_heads if c.exit_heads else 0.0)
        )
        if per_layer > 0:
            out["oracle_speedup_bound_measured"] = EngineStat(
                value=(L * per_layer + head) / (mean * per_layer + head),
                description="derived: (L x measured time per layer + measured LM-head time) / (oracle mean layers x time per "
                "layer + LM-head time): the oracle with this run's own layer and head times, draft and predictors free",
            )
        self._audit_cache = (id(c.kept[-1]), out)
        return out

    def _roofline_bound(self, layers: float, prompt_len: int, gen_len: int) -> float | None:
        from rooflens.roofline.analytic import ModelShape, Precision, decode_context, decode_cost

        try:
            shape = ModelShape.from_config(self.model.model.config)
        except ValueError:
            return None
        bits = next(self.model.model.parameters()).element_size() * 8.0
        p = Precision(weight_bits=bits, act_bits=bits, kv_bits=bits)
        ctx = decode_context(prompt_len, gen_len)
        full = decode_cost(shape, batch=1, context_len=ctx, precision=p)
        cut = decode_cost(shape, batch=1, context_len=ctx, precision=p, layers_executed=layers)
        return full.bytes / cut.bytes

    def roofline_hints(self) -> RooflineHints:
        """Layers run per decode step, plus the draft's, predictors' and failed exit heads' reads per step."""
        from rooflens.roofline.analytic import OpCost

        c = self._c
        if not c.steps or self.art is None:
            return RooflineHints()
        steps = c.steps
        model = self.model.model
        elem = next(model.parameters()).element_size()
        V, H = int(model.config.vocab_size), int(model.config.hidden_size)
        head = V * H
        ops = []
        if self.art.draft is not None:
            n = self.art.draft.weight_elements()
            ops.append(OpCost("draft_head", "model", 2.0 * n, 4.0 * n, 0.0, 0.0, 2.0 * n))
        elif self._self_k is not None:  # one more full LM head per step, at layer k - 1
            ops.append(OpCost("draft_self_head", "model", 2.0 * head, elem * head, 0.0, 0.0, 2.0 * head))
        calls = c.predictor_calls / steps
        per_call = self.art.predictors.weight_elements()
        k = self.options.k
        ops.append(
            OpCost(
                "exit_predictors",
                "model",
                calls * 2.0 * (per_call + k * H),
                calls * (4.0 * per_call + elem * k * H),
                0.0,
                0.0,
                calls * 2.0 * (per_call + k * H),
            )
        )
        if self._pre_rows is not None and c.fired:
            n = (c.fired / steps) * self._pre_rows.numel()
            ops.append(OpCost("exit_precheck", "model", 2.0 * n, 4.0 * n, 0.0, 0.0, 2.0 * n))
        failed = (c.exit_heads - c.exits) / steps  # a passing exit head replaces the final one
        if failed > 0:
            ops.append(
                OpCost(
                    "failed_exit_heads",
                    "model",
                    failed * 2.0 * head,
                    failed * elem * head,
                    0.0,
                    0.0,
                    failed * 2.0 * head,
                )
            )
        return RooflineHints(
            layers_executed=c.layers_run / steps,
            extra_ops=tuple(ops),
            note="decode cost runs layers_executed layers per step plus the draft head, the predictor calls and the exit "
            "heads that failed verification (extra ops); KV fill projections and the draft's attention are left out",
        )
