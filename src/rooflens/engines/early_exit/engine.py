"""The ``early_exit`` engine: SpecEE's speculative early exit (Xu et al., ISCA 2025), batch 1, greedy, lossy.

Each decode step::

    candidates = k tokens from the draft (head / lookup / self:k / eagle)    -> "draft" time
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

Skipped layers' KV (``skipped_kv``): ``deferred`` (default) runs the layers an exit skipped for that token
later, batched with the next token's pass through them (:mod:`.deferred`), so the cache only ever holds the full
model's own K/V; ``fill`` writes, for every skipped layer, the K/V that layer's projections compute from the exit
layer's hidden state (CALM's state propagation); ``unwritten`` is SpecEE's policy: skipped layers get no entry and
later tokens attend to fewer positions there (needs an attention that takes a single query without a mask, e.g.
sdpa). ``fill`` and ``unwritten`` change what every later token attends to, and greedy output drifts from the full
model's even when every exit is right.

``compile: true`` (:mod:`.compiled`): the same steps with their tensor work (:class:`.ops.EagerOps`: prefill, layer,
heads, predictors, K/V fill, draft head) compiled on static caches, one decoder-layer graph serving every layer; the
control flow above stays Python. Its tokens, exits and predictor calls equal the eager engine's (tests: the tiny model;
SmolLM2 checked by hand), up to rounding: inductor's kernels sum in another order, so a near tie (a predictor logit at
the threshold, two top logits) could go the other way. Everything compiles in ``warm()``, before the timed
repetitions; ``threshold: auto``'s calibration (cached, shared) always decodes eagerly.

Exits are not re-verified by the remaining layers, so the output can differ from the ``hf`` baseline's:
the records' agreement says how much. ``stats()`` also audits the run outside the timed region (the
full-depth model teacher-forced on the engine's own output: was each exit the full model's token,
precision / recall of the predictor calls) and runs the exit oracle on the baseline's own decode.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import torch

from rooflens.engines.base import Engine, EngineStat, EngineUnavailable, Fidelity, RooflineHints, TokenClock
from rooflens.engines.compiled import compile_record
from rooflens.engines.decoding import LayerStack, eos_token_ids
from rooflens.engines.early_exit import fidelity as specee
from rooflens.engines.early_exit.audit import AuditCounts, audit_generations, oracle_generation
from rooflens.engines.early_exit.calibration import (
    CALIBRATIONS,
    Calibration,
    CalibrationSettings,
    Trial,
    choose_threshold,
    training_key,
)
from rooflens.engines.early_exit.compiled import CompiledOps
from rooflens.engines.early_exit.decode_state import (
    PHASES,
    Candidates,
    ExitAttempt,
    ExitCounters,
    GenerationState,
    KeptGeneration,
    PhaseLap,
)
from rooflens.engines.early_exit.deferred import MAX_PENDING
from rooflens.engines.early_exit.eagle import load_eagle
from rooflens.engines.early_exit.ops import EagerOps
from rooflens.engines.early_exit.oracle import oracle_exits
from rooflens.engines.early_exit.predictors import threshold_logit
from rooflens.engines.early_exit.proposers import lookup_candidates, mixed_candidates
from rooflens.engines.early_exit.training import ExitArtifacts, TrainSettings, held_out_prompts, load_or_train
from rooflens.engines.marks import engine_work
from rooflens.engines.options.early_exit import EarlyExitOptions, eagle_folder, parse_draft
from rooflens.engines.registry import register
from rooflens.engines.stat_table import StatSpec, stats_from_table

log = logging.getLogger(__name__)

_TRAINING = "from training (validation: held-out sequences)"
STATS: dict[str, StatSpec] = {
    "generations": StatSpec("", "generate() calls since reset_stats"),
    "decode_steps": StatSpec("", "decode steps (the prefill's first token excluded)"),
    "exit_rate": StatSpec("", "decode steps that exited before the last layer"),
    "layers_executed_per_token": StatSpec("layers", "mean decoder layers run per decode step (of {L})"),
    "mean_exit_layer": StatSpec(
        "layers", "mean layers run by the steps that exited (1-based: exit after layer i runs i + 1)"
    ),
    "layers_run_hist": StatSpec("", "[n] = decode steps that ran n layers"),
    "predictor_calls_per_token": StatSpec("", "predictor MLPs run per decode step"),
    "predictor_fired_per_token": StatSpec("", "predictor calls above the threshold per decode step"),
    "precheck_rejects_per_token": StatSpec(
        "", "firing predictors rejected by the trimmed-vocabulary pre-check (no full LM head) per decode step"
    ),
    "exit_head_calls_per_token": StatSpec("", "full-vocabulary LM heads run to verify an exit per decode step"),
    "verification_pass_rate": StatSpec(
        "", "firing predictors whose layer argmax was among the candidates (exits / fired)"
    ),
    "skipped_kv": StatSpec("", "KV policy for the layers after an exit"),
    "catch_up_layers_per_token": StatSpec(
        "layers",
        "skipped_kv deferred: layer passes per decode step run after its exit (to meet owed rows, or to complete "
        f"more than {MAX_PENDING}); not in layers_executed_per_token, added to the roofline's layers",
    ),
    "threshold": StatSpec("", "exit threshold in use (predictor probability above it fires)"),
    "threshold_choice": StatSpec("", "how the threshold was chosen (options.threshold: auto or a number)"),
    "threshold_warning": StatSpec("", "present when threshold auto found no threshold that keeps the quality"),
    "draft": StatSpec("", "candidate source"),
    "predictors_source": StatSpec("", "where the draft head and predictors came from"),
    "prefill_time_s": StatSpec("s", "full-depth prefill + draft head over the prompt"),
    "layer_time_per_layer_s": StatSpec("s", "decode layer time / layers run (incl. KV writes)"),
    **{
        key: spec
        for phase in PHASES
        for key, spec in (
            (
                f"time_{phase}_s",
                StatSpec("s", f"decode steps, {phase}: sum of time.perf_counter laps (device synchronised on CUDA)"),
            ),
            (f"time_{phase}_fraction", StatSpec("", f"time_{phase}_s / decode time")),
        )
    },
    # the training report (training.train)
    **{
        f"train_{key}": StatSpec("", _TRAINING)
        for key in (
            "training_sequences",
            "validation_sequences",
            "positions",
            "draft_vocab_coverage",
            "candidate_hit_rate_train",
            "candidate_hit_rate_validation",
            "oracle_mean_layers",
            "exitable_fraction",
            "predictor_precision_validation",
            "predictor_recall_validation",
            "seconds",
        )
    },
    "train_simulated_validation": StatSpec(
        "",
        "threshold -> per-token accuracy and mean layers of the exit rule on held-out training "
        "positions, every layer checked, teacher-forced (no divergence)",
    ),
    # the audit (options.audit)
    "audit_exit_precision": StatSpec(
        "", "exits whose token equals the full-depth model's on the same prefix (teacher-forced audit)"
    ),
    "audit_predictor_precision": StatSpec(
        "", "predictor calls that fired and whose layer argmax was the full-depth token"
    ),
    "audit_predictor_recall": StatSpec(
        "",
        "of the predictor calls at a layer whose argmax was already the full-depth token, those that fired",
    ),
    "audit_generations": StatSpec("", "generations audited (the last ones)"),
    "oracle_mean_layers_own_text": StatSpec(
        "layers",
        "earliest layer whose argmax is the full-depth token, on the engine's own output (teacher-forced)",
    ),
    "oracle_mean_layers": StatSpec(
        "layers",
        "exit oracle on the baseline's own full-depth decode of the first prompt (decode steps; of {L})",
    ),
    "oracle_layers_hist": StatSpec("", "[n] = oracle decode steps needing n layers"),
    "oracle_speedup_bound": StatSpec(
        "",
        "derived: analytic decode bytes at full depth / at the oracle's mean layers (memory-bound "
        "roofline; draft, predictors and exit checks free)",
    ),
    "oracle_speedup_bound_measured": StatSpec(
        "",
        "derived: (L x measured time per layer + measured LM-head time) / (oracle mean layers x time per "
        "layer + LM-head time): the oracle with this run's own layer and head times, draft and predictors free",
    ),
}
"""What the early_exit engine reports (``{L}``: the model's decoder layers)."""


@register
class EarlyExitEngine(Engine):
    name = "early_exit"
    summary = (
        "SpecEE speculative early exit, lossy: k candidates (trained draft head / prompt lookup / self:k / EAGLE-1), "
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
        self._c = ExitCounters()
        self._audit_cache: tuple[int, dict[str, object]] | None = None
        self.calibration: Calibration | None = None
        self.threshold = 0.0 if options.threshold == "auto" else float(options.threshold)
        self._ops: EagerOps | None = None  # the decode step's tensor work (prepare)
        self._compiled: CompiledOps | None = None  # compile: true, made after the calibration (which decodes eagerly)

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
        kind = parse_draft(options.draft)[0]
        if kind in ("head", "head+lookup", "eagle"):
            layer = sum(p.numel() for p in LayerStack.of(model.model).layers[-1].parameters())
            n += 2 * h * h + layer + (options.draft_vocab * h if kind != "eagle" else 0)
            what += (
                f" + draft head ({options.draft_vocab}-token vocabulary)"
                if kind != "eagle"
                else " + EAGLE-1 head (estimated as fc + one target layer; it reads the target's LM head)"
            )
        return 4 * n, what  # float32

    def prepare(self) -> None:
        target = self.model.model
        self.stack = LayerStack.of(target)
        self._eos = eos_token_ids(target)
        self._eos_set = set(self._eos)
        self._kind, self._self_k = self._check_draft()
        self.art = self._load_or_train()
        opts, L = self.options, len(self.stack.layers)
        n_off = opts.offline_layers or max(1, round(L / 4))
        first = self._self_k or 0
        self._offline = {i for i in self.art.offline_layers(n_off) if first <= i < L - 1}
        self._precheck_rows = self._precheck_ids = None
        if opts.precheck:
            ids = [t for t in self.art.ranked_vocab[: opts.draft_vocab].tolist() if t not in self._eos_set]
            self._precheck_ids = torch.tensor(ids, dtype=torch.long, device=self.art.ranked_vocab.device)
            self._precheck_rows = self.stack.lm_head.weight.detach()[self._precheck_ids].float()
        ops_args = (target, self.stack, self.art.predictors, self.art.draft, self._eos, self._precheck_rows)
        self._ops = EagerOps(*ops_args)
        self.reset_stats()
        if opts.threshold == "auto":  # cached and shared with the eager engine: always decoded eagerly
            self.calibration = self._load_or_calibrate()
            self.threshold = self.calibration.threshold
            self.reset_stats()
        self._threshold_logit = threshold_logit(self.threshold)
        if opts.compile:
            self._ops = self._compiled = CompiledOps(*ops_args, self.model.device, opts.compile_mode, opts.compile_gemv)

    @property
    def ops(self) -> EagerOps:
        """The decode step's tensor work: eager, or compiled under ``compile: true``."""
        if self._ops is None:
            raise RuntimeError("engine 'early_exit': prepare() first")
        return self._ops

    @torch.inference_mode()
    def warm(self, prompts: torch.Tensor, n_new: int) -> None:
        """``compile: true``: compile every graph a generation of this shape may call, before the timed ones."""
        if not self.options.compile or prompts.shape[0] != 1:  # other batch sizes are refused by generate()
            return
        if self.art is None:
            self.prepare()
        assert self._compiled is not None
        self._compiled.warm(prompts, n_new, self.options.k, self.options.skipped_kv, self._self_k is not None)

    def _check_draft(self) -> tuple[str, int | None]:
        """(draft kind, k of ``self:k``) after checking the options against the model."""
        opts, target = self.options, self.model.model
        L, V = len(self.stack.layers), int(target.config.vocab_size)
        kind, self_k = parse_draft(opts.draft)
        if self_k is not None and not 1 <= self_k < L:
            raise EngineUnavailable(f"options.draft: 'self:{self_k}' needs 1 <= k < {L} (the model's layers)")
        if kind in ("head", "head+lookup") and opts.draft_vocab > V:
            raise EngineUnavailable(f"options.draft_vocab: {opts.draft_vocab} exceeds the model's vocabulary ({V})")
        if opts.k > V:
            raise EngineUnavailable(f"options.k: {opts.k} exceeds the model's vocabulary ({V})")
        if kind == "eagle":
            try:  # the checkpoint fits the target, or one clear line says why not
                load_eagle(self.stack, eagle_folder(opts.draft))
            except (ValueError, OSError, RuntimeError) as err:
                raise EngineUnavailable(f"options.draft: {err}") from None
        if opts.skipped_kv == "unwritten" and target.config._attn_implementation == "eager":
            raise EngineUnavailable(
                "options.skipped_kv: 'unwritten' needs an attention without a full-length mask (sdpa, flash); "
                "this model uses eager attention - use skipped_kv: fill"
            )
        return kind, self_k

    def _load_or_train(self) -> ExitArtifacts:
        t0 = time.perf_counter()
        label = self.model.info.label
        settings = TrainSettings.from_options(self.options)
        art, path, trained = load_or_train(self.model.model, self.model.tokenizer, label, settings)
        self._train_path = path
        if trained:
            where = art.report.get("cache") or f"saved to {path}"  # not saved: why, and kept for this run
            self.source = f"trained now ({time.perf_counter() - t0:.1f} s; the cache was empty), {where}"
            log.warning("early_exit: no cached predictors for %s; %s", label, self.source)
        else:
            self.source = f"cache {path}"
        return art

    # -- threshold auto (calibration.py)

    def _load_or_calibrate(self) -> Calibration:
        """The cached calibration for these artifacts and decode options, or a new one (decodes, then saves)."""
        opts = self.options
        settings = CalibrationSettings(
            training=training_key(self._train_path),
            schedule=opts.schedule,
            offline_layers=opts.offline_layers,
            online_window=opts.online_window,
            online_radius=opts.online_radius,
            skipped_kv=opts.skipped_kv,
            target=opts.calibration_target,
        )
        path = CALIBRATIONS.path(self.model.model, self.model.info.label, settings)
        if CALIBRATIONS.cached(path):
            try:
                return Calibration.from_dict(CALIBRATIONS.load(path)[1]["calibration"])
            except Exception:  # noqa: BLE001 - a damaged or foreign file: calibrate again
                pass
        assert self.art is not None
        prompts, reference = held_out_prompts(self.model.model, self.model.tokenizer, self.art.settings)
        cal = choose_threshold(
            lambda t: self._trial(t, prompts, reference),
            opts.calibration_target,
            prompts.shape[0],
            reference.shape[1],
            settings.thresholds,
            settings.margin,
        )
        CALIBRATIONS.save(path, settings, {"calibration": cal.to_dict()})
        if not cal.reached:
            log.warning("early_exit: %s", cal.describe())
        return cal

    @torch.inference_mode()
    def _trial(self, threshold: float, prompts: torch.Tensor, reference: torch.Tensor) -> Trial:
        """Decode the calibration prompts at ``threshold``: per prompt, the fraction of its tokens equal to the full
        model's greedy ones. A prompt that has already missed too many for the target ends there, and so does the
        trial (the worst prompt decides): the fraction then given is an upper bound, already below the target."""
        self._threshold_logit = threshold_logit(threshold)
        self.reset_stats()
        agreements: list[float] = []
        n = reference.shape[1]
        budget = int((1.0 - self.options.calibration_target) * n + 1e-9)  # misses the target allows
        for prompt, ref in zip(prompts, reference):
            misses = 0

            def too_many(gen: GenerationState) -> bool:
                nonlocal misses
                misses += int(gen.tokens[0, gen.length - 1]) != int(ref[gen.length - 1 - gen.prompt_len])
                return misses > budget

            clock = TokenClock(prompt.device)
            clock.start()
            self._generate(prompt.view(1, -1), n, clock, stop=too_many)
            clock.stop()
            agreements.append(1.0 - misses / n)
            if misses > budget:
                break
        return Trial(threshold, agreements, self._c.exits / max(1, self._c.steps))

    def reset_stats(self) -> None:
        self._c = ExitCounters()
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

    def _generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        clock: TokenClock,
        stop: Callable[[GenerationState], bool] | None = None,
    ) -> torch.Tensor:
        """The generation; ``stop`` (the calibration's) may end it early, after any decode step."""
        gen = self._prefill(input_ids, max_new_tokens)
        clock.tokens(1)
        lap = PhaseLap(input_ids.device, self._c.phase_time)
        for _ in range(1, max_new_tokens):
            self._decode_step(gen, lap)
            clock.tokens(1)
            lap.restart()  # the clock's own sync is not engine time
            if stop is not None and stop(gen):
                break
        self._c.generations += 1
        out = gen.tokens[:, gen.prompt_len : gen.length].clone()
        self._c.kept.append(KeptGeneration(input_ids[0].cpu(), out[0].cpu(), gen.calls_log, gen.exits_log))
        return out

    def _prefill(self, input_ids: torch.Tensor, max_new_tokens: int) -> GenerationState:
        """The prompt at full depth (+ the draft head over it): the first token as plain decoding gives it."""
        assert self.art is not None
        stack, device, draft = self.stack, input_ids.device, self.art.draft
        P = input_ids.shape[1]
        tokens = torch.empty(1, P + max_new_tokens, dtype=input_ids.dtype, device=device)
        tokens[:, :P] = input_ids
        prefill_time: dict[str, float] = {}
        lap = PhaseLap(device, prefill_time)
        ops = self.ops
        cache = ops.start(P, max_new_tokens)
        normed, tokens[0, P] = ops.prefill(input_ids, cache)
        draft_cache = None
        if draft is not None:
            draft_cache = ops.draft_cache()
            if P >= 2:
                positions = torch.arange(P - 1, device=device).view(1, -1)
                with engine_work("draft_head"):
                    ops.draft_prefill(stack.embed_tokens(input_ids[:, 1:]), normed[:, :-1], positions, draft_cache)
        lap("prefill")
        self._c.prefill_time += prefill_time["prefill"]
        recent = deque(maxlen=self.options.online_window)
        return GenerationState(tokens, P, P + 1, cache, draft_cache, normed[:, -1:], recent)

    def _decode_step(self, gen: GenerationState, lap: PhaseLap) -> None:
        """One token: propose candidates, run the layers until a verified exit (or all of them), emit."""
        x = gen.last_token
        pos = torch.tensor([gen.length - 1], device=x.device)
        with engine_work("draft_head"):
            attempt = ExitAttempt(self._propose(gen, x))
        lap("draft")
        h = self._run_layers_until_exit(gen, x, pos, attempt, lap)
        layers_run = self._emit(gen, attempt, h, pos, lap)
        self._record_step(gen, attempt, layers_run)

    def _propose(self, gen: GenerationState, x: torch.Tensor) -> Candidates | None:
        """The draft's k candidates before the layers run (``self:k`` proposes after layer k-1: None here)."""
        opts, art = self.options, self.art
        assert art is not None
        ids: torch.Tensor | None = None
        if art.draft is not None:
            step_pos = torch.tensor([[gen.length - 2]], device=x.device)
            embeds = self.stack.embed_tokens(x)
            ids = self.ops.draft_candidates(embeds, gen.last_normed, step_pos, gen.draft_cache, opts.k)
            if self._kind == "head+lookup":
                ids = mixed_candidates(gen.tokens[0, : gen.length], ids.tolist(), opts.k, art.ranked_vocab)
        elif self._kind == "lookup":
            ids = lookup_candidates(gen.tokens[0, : gen.length], opts.k, art.ranked_vocab)
        return None if ids is None else Candidates.of(ids, self.stack.lm_head.weight, self._eos_set)

    def _run_layers_until_exit(
        self, gen: GenerationState, x: torch.Tensor, pos: torch.Tensor, attempt: ExitAttempt, lap: PhaseLap
    ) -> torch.Tensor:
        """The target's layers on the step's token, stopped by a verified exit; the last layer's hidden state
        (``deferred``: with the earlier exits' owed rows joining at their depth, see deferred.py)."""
        exit_test = self._exit_test(attempt, self._scheduled(gen.recent_exits), lap)
        ops = self.ops
        if self.options.skipped_kv == "deferred":
            walk = ops.deferred(gen.cache, int(pos))
            h, gen.pending, _, extra = walk.run(x, gen.pending, exit_test)
            self._c.catch_up_layers += extra
        else:
            h = ops.walk(x, pos, gen.cache, exit_test)
        lap("layers")
        return h

    def _exit_test(self, attempt: ExitAttempt, scheduled: set[int], lap: PhaseLap):
        """forward_layers' per-layer hook: True stops the layers there (a verified exit)."""

        def after_layer(i: int, hidden: torch.Tensor) -> bool:
            if self._self_k is not None and i == self._self_k - 1:
                attempt.candidates = self._self_candidates(hidden, lap)
                return False
            if i not in scheduled or attempt.candidates is None:
                return False
            return self._try_exit(i, hidden, attempt, lap)

        return after_layer

    def _self_candidates(self, hidden: torch.Tensor, lap: PhaseLap) -> Candidates:
        """``self:k``: the top-k of the full LM head after layer k-1."""
        lap("layers")
        with engine_work("draft_self_head"):
            ids = self.ops.self_topk(hidden, self.options.k)
            candidates = Candidates.of(ids, self.stack.lm_head.weight, self._eos_set)
        lap("draft")
        return candidates

    def _try_exit(self, i: int, hidden: torch.Tensor, attempt: ExitAttempt, lap: PhaseLap) -> bool:
        """Layer ``i``'s predictor, then (if it fires) the pre-check and the verification."""
        assert self.art is not None and attempt.candidates is not None
        lap("layers")
        with engine_work("exit_predictors"):
            normed, feat, attempt.prev_features, logit = self.ops.exit_logit(
                i, hidden, attempt.candidates.head_rows, attempt.prev_features
            )
            fired = logit > self._threshold_logit
        attempt.calls.append((i, fired))
        lap("predictors")
        if not fired:
            return False
        self._c.fired += 1
        with engine_work("exit_precheck"):
            rejected = self._precheck_rejects(feat, normed, attempt.candidates)
        if rejected:
            self._c.precheck_rejects += 1
            lap("exit_head")
            return False
        return self._verify(i, normed, attempt, lap)

    def _precheck_rejects(self, feat: torch.Tensor, normed: torch.Tensor, candidates: Candidates) -> bool:
        """Exact pre-check: no candidate can be the full argmax (a trimmed-vocabulary token beats them all)."""
        if self._precheck_rows is None:
            return False
        candidate_logits = feat[: self.options.k].clone()
        candidate_logits[candidates.eos_slots] = float("-inf")
        best, j = self.ops.trimmed_best(normed)
        return best > float(candidate_logits.max()) and (
            int(self._precheck_ids[j]) not in candidates.id_set  # type: ignore[index]
        )

    def _verify(self, i: int, normed: torch.Tensor, attempt: ExitAttempt, lap: PhaseLap) -> bool:
        """The full-vocabulary argmax at layer ``i``: an exit when it is one of the candidates."""
        with engine_work("exit_heads"):
            token = self.ops.head_token(normed)
        self._c.exit_heads += 1
        lap("exit_head")
        if token in attempt.candidates.id_set:
            attempt.exit_layer, attempt.exit_token, attempt.exit_normed = i, token, normed
            return True
        return False

    def _emit(
        self, gen: GenerationState, attempt: ExitAttempt, h: torch.Tensor, pos: torch.Tensor, lap: PhaseLap
    ) -> int:
        """Write the step's token (the exit's, or the final head's); returns the layers run."""
        L, e = len(self.stack.layers), attempt.exit_layer
        if e is not None:
            gen.tokens[0, gen.length] = attempt.exit_token
            gen.last_normed = attempt.exit_normed  # type: ignore[assignment]
            if self.options.skipped_kv == "fill" and e < L - 1:
                with engine_work("kv_fill"):
                    self._fill_skipped_kv(h, pos, gen.cache, e)
                lap("kv_fill")
            return e + 1
        gen.last_normed, gen.tokens[0, gen.length] = self.ops.final(h)
        lap("final_head")
        return L

    def _fill_skipped_kv(self, h: torch.Tensor, pos: torch.Tensor, cache, exit_layer: int) -> None:
        """KV for the layers after the exit, projected from the exit layer's hidden state (``skipped_kv: fill``)."""
        self.ops.fill(h, pos, cache, range(exit_layer + 1, len(self.stack.layers)))

    def _record_step(self, gen: GenerationState, attempt: ExitAttempt, layers_run: int) -> None:
        c = self._c
        gen.recent_exits.append(layers_run - 1)
        c.steps += 1
        c.exits += attempt.exit_layer is not None
        c.layers_run += layers_run
        c.layers_hist[layers_run] += 1
        c.predictor_calls += len(attempt.calls)
        gen.calls_log.append(attempt.calls)
        gen.exits_log.append(attempt.exit_layer)
        gen.length += 1

    # -- statistics

    def fidelity(self) -> Fidelity:
        return specee.fidelity(self.options, self.threshold, self.calibration)

    def stats(self) -> dict[str, EngineStat]:
        c = self._c
        if not c.generations:
            return {}
        values = {**self._run_values(), **self._phase_values(), **self._training_values()}
        if self.options.audit:
            values.update(self._audit())
        table = stats_from_table(STATS, values, L=len(self.stack.layers))
        return dict(sorted({**table, **self._compile_stats()}.items()))

    def _compile_stats(self) -> dict[str, EngineStat]:
        """How compiling went, as the other compiled engines report it (empty when this engine is not compiled)."""
        c = self._compiled
        if c is None:
            return {}
        run = "one call of each compiled graph (prefill, draft head, layer step, K/V fill, predictor, heads)"
        return compile_record(c.log, c.mode, self.options.compile_mode, c.cache_folder, c.gemv, run, c.step)

    def _run_values(self) -> dict[str, object]:
        c = self._c
        L, steps = len(self.stack.layers), max(1, c.steps)
        mean_exit = (sum(i * n for i, n in enumerate(c.layers_hist[:L])) / c.exits) if c.exits else "n/a"
        return {
            "generations": c.generations,
            "decode_steps": c.steps,
            "exit_rate": c.exits / steps,
            "layers_executed_per_token": c.layers_run / steps,
            "mean_exit_layer": mean_exit,
            "layers_run_hist": list(c.layers_hist),
            "predictor_calls_per_token": c.predictor_calls / steps,
            "predictor_fired_per_token": c.fired / steps,
            "precheck_rejects_per_token": c.precheck_rejects / steps,
            "exit_head_calls_per_token": c.exit_heads / steps,
            "catch_up_layers_per_token": c.catch_up_layers / steps,
            "verification_pass_rate": c.exits / c.fired if c.fired else "n/a",
            "skipped_kv": self.options.skipped_kv,
            "draft": self.options.draft,
            "predictors_source": self.source,
            **self._threshold_values(),
        }

    def _threshold_values(self) -> dict[str, object]:
        cal = self.calibration
        out: dict[str, object] = {
            "threshold": self.threshold,
            "threshold_choice": cal.describe()
            if cal is not None
            else "set in options (a number: quality traded for speed explicitly, not calibrated)",
        }
        if cal is not None and not cal.reached:
            out["threshold_warning"] = (
                f"threshold auto found no threshold safe enough (agreement >= {cal.target:g} on the held-out training "
                "prompts, with its margin): exits are DISABLED, this run is the full model (no speed-up)"
            )
        return out

    def _phase_values(self) -> dict[str, object]:
        c = self._c
        total = sum(c.phase_time.values())
        out: dict[str, object] = {
            "prefill_time_s": c.prefill_time,
            "layer_time_per_layer_s": c.phase_time["layers"] / max(1, c.layers_run),
        }
        for phase in PHASES:
            out[f"time_{phase}_s"] = c.phase_time[phase]
            out[f"time_{phase}_fraction"] = c.phase_time[phase] / total if total else 0.0
        return out

    def _training_values(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in (self.art.report if self.art else {}).items():
            if isinstance(value, (int, float, str)):
                out[f"train_{key}"] = value
            elif key == "simulated_validation":
                out["train_simulated_validation"] = "; ".join(
                    f"t{t}: token accuracy {v['token_accuracy']:.3f}, layers {v['mean_layers']:.2f}"
                    for t, v in value.items()
                )
        return out

    @torch.inference_mode()
    def _audit(self) -> dict[str, object]:
        """Exit precision, predictor precision / recall and the oracles; not timed (runs after the measurement)."""
        c = self._c
        if self._audit_cache is not None and self._audit_cache[0] == id(c.kept[-1]):
            return self._audit_cache[1]
        counts = audit_generations(self.model.model, c.kept)
        own = counts.oracle_own_layers
        out: dict[str, object] = {
            "audit_exit_precision": AuditCounts.ratio(counts.correct_exits, counts.exits),
            "audit_predictor_precision": AuditCounts.ratio(counts.fired_correct, counts.fired),
            "audit_predictor_recall": AuditCounts.ratio(counts.fired_correct, counts.correct_calls),
            "audit_generations": len(c.kept),
            "oracle_mean_layers_own_text": sum(own) / len(own) if own else None,
            **self._oracle_values(),
        }
        self._audit_cache = (id(c.kept[-1]), out)
        return out

    def _oracle_values(self) -> dict[str, object]:
        """The exit oracle on the baseline's own decode of the first prompt, and the speed-ups it bounds."""
        c, L = self._c, len(self.stack.layers)
        model = self.model.model
        first = oracle_generation(c.kept)
        device = next(model.parameters()).device
        orc = oracle_exits(model, first.prompt.to(device).view(1, -1), first.tokens.numel())
        mean = sum(orc.layers_needed[1:]) / max(1, len(orc.layers_needed) - 1)
        per_layer = c.phase_time["layers"] / max(1, c.layers_run)
        full_steps_all = c.steps - c.exits
        head = (
            c.phase_time["final_head"] / full_steps_all
            if full_steps_all
            else (c.phase_time["exit_head"] / c.exit_heads if c.exit_heads else 0.0)
        )
        measured = (L * per_layer + head) / (mean * per_layer + head) if per_layer > 0 else None
        return {
            "oracle_mean_layers": mean,
            "oracle_layers_hist": [orc.layers_needed[1:].count(n) for n in range(L + 1)],
            "oracle_speedup_bound": self._roofline_bound(mean, first.prompt.numel(), first.tokens.numel()),
            "oracle_speedup_bound_measured": measured,
        }

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
        if self._precheck_rows is not None and c.fired:
            n = (c.fired / steps) * self._precheck_rows.numel()
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
            layers_executed=(c.layers_run + c.catch_up_layers) / steps,
            extra_ops=tuple(ops),
            note="decode cost runs layers_executed layers per step plus the draft head, the predictor calls and the exit "
            "heads that failed verification (extra ops); KV fill projections and the draft's attention are left out",
        )
