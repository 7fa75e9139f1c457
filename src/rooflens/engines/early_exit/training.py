"""Train what the early-exit engine needs for one model, and cache it.

Data (SpecEE §1.4, on the model's *own* outputs):

1. prompts cut evenly from the shipped corpus (random ids for a model without a tokenizer), continued
   greedily at full depth with EOS masked - the text the engine will see at decode time;
2. one teacher-forced pass over each prompt + continuation, walking the layer stack: after every layer
   the final norm of the hidden state, that layer's full-vocabulary argmax (EOS masked) and, at the
   last layer, the model's own token;
3. the trimmed vocabulary (VocabTrim): the model's output tokens ranked by frequency, then the corpus's
   input tokens, then the rest by id (:func:`rooflens.engines.vocabulary.ranked_vocabulary`, shared with
   the ``speculative`` engine's ``draft_vocab``).

Trained from it: the draft head (draft ``head``: cross-entropy against the model's own token, on the
greedy sequences and on teacher-forced corpus windows; only ``fc`` and its decoder layer learn) and the
per-layer predictors (label: this layer's argmax equals the model's token; binary cross-entropy; the
last 20 % of the sequences are held out for the validation figures in ``report``).

Artifacts are cached under ``$ROOFLENS_CACHE/early-exit/`` (default ``~/.cache/rooflens``), keyed by a
fingerprint of the model's weights and config, its dtype and every training setting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rooflens.data.prompts import corpus_windows, training_prompts
from rooflens.engines.artifacts import ArtifactKind, Progress
from rooflens.engines.decoding import LayerStack
from rooflens.engines.early_exit.draft_head import DraftHead
from rooflens.engines.early_exit.eagle import EagleHead, checkpoint_stamp, load_eagle
from rooflens.engines.early_exit.predictors import ExitPredictors, exit_features, threshold_logit
from rooflens.engines.early_exit.proposers import lookup_candidates, mixed_candidates
from rooflens.engines.early_exit.teacher_forcing import TeacherForced, teacher_forced
from rooflens.engines.options.early_exit import EarlyExitOptions, eagle_folder, parse_draft
from rooflens.engines.vocabulary import greedy_sequences, ranked_vocabulary

SIM_THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # the draft head's (inputs, previous hidden, targets)


@dataclass(frozen=True)
class TrainSettings:
    """What shapes a training and keys its cache file; derived from the engine's options (:meth:`from_options`),
    which hold the defaults."""

    draft: str
    k: int
    draft_vocab: int
    prompts: int
    prompt_len: int
    gen_len: int
    draft_epochs: int
    predictor_epochs: int
    predictor_hidden: int
    seed: int
    draft_checkpoint: str = ""  # eagle:<folder>: the weight file's path, size and time (a changed file retrains)

    @classmethod
    def from_options(cls, options: EarlyExitOptions) -> TrainSettings:
        eagle = parse_draft(options.draft)[0] == "eagle"
        return cls(
            draft=options.draft,
            k=options.k,
            draft_vocab=options.draft_vocab,
            prompts=options.train_prompts,
            prompt_len=options.train_prompt_len,
            gen_len=options.train_gen_len,
            draft_epochs=options.draft_epochs,
            predictor_epochs=options.predictor_epochs,
            predictor_hidden=options.predictor_hidden,
            seed=options.seed,
            draft_checkpoint=checkpoint_stamp(eagle_folder(options.draft)) if eagle else "",
        )


@dataclass
class ExitArtifacts:
    settings: TrainSettings
    predictors: ExitPredictors
    draft: DraftHead | EagleHead | None
    ranked_vocab: torch.Tensor  # every token id, most frequent model output first
    exit_histogram: list[int]  # training positions per earliest layer that exits correctly (last layer excluded)
    report: dict[str, Any] = field(default_factory=dict)

    def offline_layers(self, n: int) -> list[int]:
        """The ``n`` layers where correct exits concentrate in the training data (SpecEE's skewed distribution)."""
        ranked = sorted(range(len(self.exit_histogram)), key=lambda i: (-self.exit_histogram[i], i))
        return sorted(i for i in ranked[:n] if self.exit_histogram[i] > 0)


# ---------------------------------------------------------------------------- cache

ARTIFACTS = ArtifactKind("early-exit", version=1, settings_type=TrainSettings)


def artifact_path(model: torch.nn.Module, label: str, settings: TrainSettings) -> Path:
    return ARTIFACTS.path(model, label, settings)


def save_artifacts(art: ExitArtifacts, path: Path) -> str | None:
    payload = {
        "predictors": art.predictors.state_dict(),
        "draft": art.draft.state_dict() if isinstance(art.draft, DraftHead) else None,  # EAGLE: its own folder
        "ranked_vocab": art.ranked_vocab.cpu(),
        "exit_histogram": list(art.exit_histogram),
        "report": art.report,
    }
    return ARTIFACTS.save(path, art.settings, payload)


def load_artifacts(model: torch.nn.Module, path: Path) -> ExitArtifacts:
    settings, blob = ARTIFACTS.load(path)
    stack = LayerStack.of(model)
    device = next(model.parameters()).device
    pred = ExitPredictors(len(stack.layers), settings.k, settings.predictor_hidden)
    pred.load_state_dict(blob["predictors"])
    draft: DraftHead | EagleHead | None = None
    if blob["draft"] is not None:
        draft = DraftHead(stack, blob["draft"]["vocab_ids"])
        draft.load_state_dict(blob["draft"])
        draft.bind(stack).eval()
    elif parse_draft(settings.draft)[0] == "eagle":
        draft = load_eagle(stack, eagle_folder(settings.draft))
    return ExitArtifacts(
        settings, pred.to(device).eval(), draft, blob["ranked_vocab"].to(device), blob["exit_histogram"], blob["report"]
    )


def load_or_train(
    model: torch.nn.Module, tokenizer: Any, label: str, settings: TrainSettings, progress: Progress | None = None
) -> tuple[ExitArtifacts, Path, bool]:
    """(artifacts, cache file, trained now?): the cached artifacts, or new ones trained and saved."""
    path = artifact_path(model, label, settings)
    if ARTIFACTS.cached(path):
        try:
            return load_artifacts(model, path), path, False
        except Exception:  # noqa: BLE001 - a damaged or foreign file is replaced by a fresh training
            pass
    art = train(model, tokenizer, settings, progress)
    if (why := save_artifacts(art, path)) is not None:
        art.report["cache"] = why
    return art, path, True


# ---------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """The model's own text and what every layer predicts on it: what the draft head and predictors learn from.

    Positions are ``prompt_len - 1 .. T - 2`` of each greedy sequence (``generated`` per sequence), flattened
    sequence-major into the ``N`` columns of the teacher-forced views."""

    sequences: torch.Tensor  # [n, T] training prompts + their greedy continuations
    prompt_len: int
    forced: TeacherForced  # of ``sequences`` from position prompt_len - 1
    windows: torch.Tensor  # [w, T] corpus windows (none for a lookup draft or a model without a tokenizer)
    windows_forced: TeacherForced | None  # of ``windows`` at their last position
    validation_sequences: int  # the last ones, held out

    @property
    def generated(self) -> int:
        return self.sequences.shape[1] - self.prompt_len

    @property
    def model_tokens(self) -> torch.Tensor:
        """[N] the full-depth model's token at every position."""
        return self.forced.layer_argmax[-1]

    @property
    def labels(self) -> torch.Tensor:
        """[L, N] this layer's argmax is the model's token (a correct exit)."""
        return self.forced.layer_argmax == self.model_tokens

    @property
    def validation(self) -> torch.Tensor:
        """[N] the position belongs to a held-out sequence."""
        n = self.sequences.shape[0]
        val = torch.zeros(n, self.generated, dtype=torch.bool, device=self.sequences.device)
        val[n - self.validation_sequences :] = True
        return val.reshape(-1)

    def vocabulary_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, the model's output ids) over sequences and windows: what the vocabulary ranking counts."""
        inputs = torch.cat([self.sequences.reshape(-1), self.windows.reshape(-1)])
        wtf = self.windows_forced
        outputs = [self.forced.final_tokens[:, self.prompt_len - 1 :].reshape(-1)]
        return inputs, torch.cat(outputs + ([wtf.final_tokens.reshape(-1)] if wtf else []))


def collect_training_data(
    model: torch.nn.Module, tokenizer: Any, settings: TrainSettings, progress: Progress | None = None
) -> TrainingData:
    """Greedy sequences on the training prompts, their teacher-forced pass and (not for a lookup draft) the
    corpus windows' pass."""
    kind, self_k = parse_draft(settings.draft)
    if progress:
        progress("greedy decoding of training prompts", 0, 1)
    prompts = training_prompts(model, tokenizer, settings.prompts, settings.prompt_len, settings.seed)
    seqs = greedy_sequences(model, prompts, settings.gen_len)
    if progress:
        progress("greedy decoding of training prompts", 1, 1)
    P, T = settings.prompt_len, seqs.shape[1]
    topk_layer = (self_k - 1) if self_k else None
    tf = teacher_forced(model, seqs, P - 1, topk_layer=topk_layer, k=settings.k, progress=progress)
    n = seqs.shape[0]
    # The corpus pass gives a draft head more training pairs and the vocabulary ranking more text. The other drafts
    # use the ranking only to pad short candidate lists and for the pre-check, which the training sequences rank
    # well enough: skipping the pass (a full forward over the corpus, ~15 s on 2 CPU cores) keeps training short.
    head = kind in ("head", "head+lookup")
    windows = corpus_windows(model, tokenizer, T) if head else seqs.new_empty(0, T)
    wtf = teacher_forced(model, windows, T - 2) if windows.shape[0] else None
    return TrainingData(seqs, P, tf, windows, wtf, held_out_count(n))


def held_out_count(n: int) -> int:
    """Training sequences held out from the predictors (the last ones): 20 %, at least one of two or more."""
    return max(1, n // 5) if n >= 2 else 0


def held_out_prompts(
    model: torch.nn.Module, tokenizer: Any, settings: TrainSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompts [v, P], the full model's greedy tokens after them [v, gen_len]) of the held-out training sequences:
    the text ``threshold: auto`` is calibrated on (the predictors never trained on it)."""
    prompts = training_prompts(model, tokenizer, settings.prompts, settings.prompt_len, settings.seed)
    held = prompts[prompts.shape[0] - max(1, held_out_count(prompts.shape[0])) :]
    return held, greedy_sequences(model, held, settings.gen_len)[:, settings.prompt_len :]


# ---------------------------------------------------------------------------- the draft head


def _draft_pairs(
    model: torch.nn.Module,
    final_normed: torch.Tensor,
    final_tokens: torch.Tensor,
    seqs: torch.Tensor,
    trim_index: torch.Tensor,
) -> Pairs:
    """(embeddings of x_1..x_{T-1}, normed hidden of 0..T-2, trimmed index of the model's token at 1..T-1)."""
    stack = LayerStack.of(model)
    with torch.no_grad():
        emb = stack.embed_tokens(seqs[:, 1:]).float()
    return emb, final_normed[:, :-1], trim_index[final_tokens[:, 1:]]


def train_draft(
    model: torch.nn.Module,
    vocab_ids: torch.Tensor,
    pairs: Pairs,
    epochs: int,
    seed: int,
    progress: Progress | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    train_layer: bool = True,
) -> DraftHead:
    emb, prev, target = pairs
    torch.manual_seed(seed)
    draft = DraftHead(LayerStack.of(model), vocab_ids)
    draft.train()
    draft.layer.requires_grad_(train_layer)
    opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    n, T = target.shape
    pos = torch.arange(T, device=emb.device).view(1, -1)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * -(-n // 8)
    done = 0
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=g).split(8):
                logits = draft(emb[idx], prev[idx], pos)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target[idx].reshape(-1), ignore_index=-100
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                if progress:
                    progress("draft head", done, steps)
    return draft.eval()


@torch.no_grad()
def draft_candidates(draft: DraftHead | EagleHead, pairs: Pairs, k: int) -> torch.Tensor:
    """[n, T-1, k] the draft's top-k ids (full-vocabulary ids) for every pair."""
    emb, prev, _ = pairs
    pos = torch.arange(emb.shape[1], device=emb.device).view(1, -1)
    out = [draft(e, p, pos).topk(k, dim=-1).indices for e, p in zip(emb.split(8), prev.split(8))]
    return draft.vocab_ids[torch.cat(out)]


def _train_draft_head(
    model: torch.nn.Module,
    data: TrainingData,
    settings: TrainSettings,
    ranked: torch.Tensor,
    report: dict[str, Any],
    progress: Progress | None,
) -> tuple[DraftHead, torch.Tensor]:
    """The draft head over the ``draft_vocab`` top-ranked tokens, trained on the training sequences (held-out
    ones excluded) and the corpus windows; and its top-k at every training position [N, k]."""
    V = int(model.config.vocab_size)
    seqs, tf, wtf = data.sequences, data.forced, data.windows_forced
    vocab_ids = ranked[: settings.draft_vocab].clone()
    trim_index = torch.full((V,), -100, dtype=torch.long, device=seqs.device)
    trim_index[vocab_ids] = torch.arange(vocab_ids.numel(), device=seqs.device)
    train_rows = torch.arange(seqs.shape[0] - data.validation_sequences, device=seqs.device)
    sequence_pairs = _draft_pairs(model, tf.final_normed, tf.final_tokens, seqs, trim_index)
    parts = [tuple(t[train_rows] for t in sequence_pairs)]
    if wtf is not None:
        parts.append(_draft_pairs(model, wtf.final_normed, wtf.final_tokens, data.windows, trim_index))
    pairs: Pairs = tuple(torch.cat([p[j] for p in parts]) for j in range(3))  # type: ignore[assignment]
    outputs = data.vocabulary_text()[1]
    report["draft_vocab_coverage"] = float((trim_index[outputs] >= 0).float().mean())
    draft = train_draft(model, vocab_ids, pairs, settings.draft_epochs, settings.seed, progress)
    P, T = data.prompt_len, seqs.shape[1]
    candidates = draft_candidates(draft, sequence_pairs, settings.k)[:, P - 2 : T - 2]  # pair p-1 -> position p
    return draft, candidates.reshape(-1, settings.k)


def training_candidates(
    model: torch.nn.Module,
    data: TrainingData,
    settings: TrainSettings,
    ranked: torch.Tensor,
    report: dict[str, Any],
    progress: Progress | None = None,
) -> tuple[DraftHead | None, torch.Tensor]:
    """(the draft head, trained for a head draft; the draft's k candidates at every training position [N, k])."""
    kind, _ = parse_draft(settings.draft)
    seqs, P, k = data.sequences, data.prompt_len, settings.k
    n, T, G = seqs.shape[0], seqs.shape[1], data.generated
    if kind in ("head", "head+lookup"):
        draft, cands = _train_draft_head(model, data, settings, ranked, report, progress)
        if kind == "head+lookup":
            best = cands.view(n, G, -1).tolist()
            cands = torch.stack(
                [mixed_candidates(seqs[i, : P + j], best[i][j], k, ranked) for i in range(n) for j in range(G)]
            )
        return draft, cands
    if kind == "lookup":
        return None, torch.stack(
            [lookup_candidates(seqs[i, : p + 1], k, ranked) for i in range(n) for p in range(P - 1, T - 1)]
        )
    if kind == "eagle":
        return _eagle_candidates(model, data, settings)
    assert data.forced.layer_topk is not None  # self:k: the teacher-forced pass kept layer k-1's top-k
    return None, data.forced.layer_topk


def _eagle_candidates(
    model: torch.nn.Module, data: TrainingData, settings: TrainSettings
) -> tuple[EagleHead, torch.Tensor]:
    """The pretrained EAGLE-1 head (not trained here) and its top-k at every training position [N, k]."""
    stack = LayerStack.of(model)
    head = load_eagle(stack, eagle_folder(settings.draft))
    V = int(model.config.vocab_size)
    identity = torch.arange(V, device=data.sequences.device)
    pairs = _draft_pairs(model, data.forced.final_normed, data.forced.final_tokens, data.sequences, identity)
    P, T = data.prompt_len, data.sequences.shape[1]
    return head, draft_candidates(head, pairs, settings.k)[:, P - 2 : T - 2].reshape(-1, settings.k)


# ---------------------------------------------------------------------------- the predictors


def candidate_features(model: torch.nn.Module, forced: TeacherForced, candidates: torch.Tensor) -> torch.Tensor:
    """[L, N, 3k] every layer's exit features at every position, as the engine computes them walking the layers."""
    rows = LayerStack.of(model).lm_head.weight.detach()[candidates].float()  # [N, k, H]
    feats, last = [], None
    for normed in forced.normed:
        f, last = exit_features(normed, rows, last)
        feats.append(f)
    return torch.stack(feats)


def train_predictors(
    features: torch.Tensor, labels: torch.Tensor, settings: TrainSettings, progress: Progress | None = None
) -> ExitPredictors:
    L = features.shape[0]
    torch.manual_seed(settings.seed)
    pred = ExitPredictors(L, settings.k, settings.predictor_hidden).to(features.device)
    opt = torch.optim.Adam(pred.parameters(), lr=1e-3)
    y = labels.float()
    with torch.enable_grad():
        for e in range(settings.predictor_epochs):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(pred.logits_all(features), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress and (e + 1) % 10 == 0:
                progress("predictors", e + 1, settings.predictor_epochs)
    return pred.eval()


def simulate_exits(
    logits: torch.Tensor, labels: torch.Tensor, verified: torch.Tensor, threshold: float, first_layer: int = 0
) -> tuple[float, float]:
    """(token accuracy, mean layers run) of exiting at the first layer whose predictor fires and passes
    verification, every layer checked; tensors are [L, N]."""
    L, N = labels.shape
    fire = (logits > threshold_logit(threshold)) & verified
    fire[:first_layer] = False
    fire[L - 1] = True  # the last layer always "exits": it is full depth
    first = fire.float().argmax(0)  # earliest firing layer per position
    correct = labels[first, torch.arange(N, device=labels.device)] | (first == L - 1)
    return float(correct.float().mean()), float((first + 1).float().mean())


def exit_histogram(labels: torch.Tensor, verified: torch.Tensor) -> tuple[list[int], float]:
    """(training positions per earliest layer with a correct, verified exit (last layer excluded); the fraction
    of positions that have one)."""
    L = labels.shape[0]
    first_ok = (labels & verified).clone()
    first_ok[L - 1] = False
    exitable = first_ok.any(0)
    first = first_ok.float().argmax(0)
    return torch.bincount(first[exitable], minlength=L).tolist(), float(exitable.float().mean())


def validation_figures(
    pred: ExitPredictors,
    features: torch.Tensor,
    labels: torch.Tensor,
    verified: torch.Tensor,
    validation: torch.Tensor,
    first_layer: int,
) -> dict[str, Any]:
    """The predictors' precision and recall on held-out positions (all positions when none is held out), and
    the exit rule simulated there at each of :data:`SIM_THRESHOLDS`."""
    with torch.no_grad():
        logits = pred.logits_all(features)
    vmask = validation if validation.any() else torch.ones_like(validation)
    fire = logits[:, vmask] > 0
    tp = (fire & labels[:, vmask]).sum()
    simulated = {
        str(t): dict(
            zip(
                ("token_accuracy", "mean_layers"),
                simulate_exits(logits[:, vmask], labels[:, vmask], verified[:, vmask], t, first_layer),
            )
        )
        for t in SIM_THRESHOLDS
    }
    return {
        "predictor_precision_validation": float(tp / fire.sum().clamp_min(1)),
        "predictor_recall_validation": float(tp / labels[:, vmask].sum().clamp_min(1)),
        "simulated_validation": simulated,
    }


# ---------------------------------------------------------------------------- training


def _check_settings(model: torch.nn.Module, settings: TrainSettings) -> None:
    _, self_k = parse_draft(settings.draft)
    L, V = len(LayerStack.of(model).layers), int(model.config.vocab_size)
    if settings.draft_vocab > V:
        raise ValueError(f"draft_vocab {settings.draft_vocab} exceeds the model's vocabulary ({V})")
    if self_k is not None and not 1 <= self_k < L:
        raise ValueError(f"draft 'self:{self_k}': the model has {L} layers; k must be in 1..{L - 1}")


def train(
    model: torch.nn.Module, tokenizer: Any, settings: TrainSettings, progress: Progress | None = None
) -> ExitArtifacts:
    """Collect the training data, rank the vocabulary, train the draft head (head drafts) and the predictors on
    the draft's candidates, and report how well they do on held-out sequences."""
    t0 = time.perf_counter()
    _check_settings(model, settings)
    data = collect_training_data(model, tokenizer, settings, progress)
    labels, val = data.labels, data.validation
    report: dict[str, Any] = {
        "training_sequences": data.sequences.shape[0],
        "validation_sequences": data.validation_sequences,
        "positions": int(data.model_tokens.numel()),
    }
    inputs, outputs = data.vocabulary_text()
    ranked = ranked_vocabulary(int(model.config.vocab_size), outputs, inputs)
    draft, cands = training_candidates(model, data, settings, ranked, report, progress)
    hit = (cands == data.model_tokens.unsqueeze(1)).any(1)
    report["candidate_hit_rate_train"] = float(hit[~val].float().mean()) if (~val).any() else float("nan")
    report["candidate_hit_rate_validation"] = float(hit[val].float().mean()) if val.any() else float("nan")

    features = candidate_features(model, data.forced, cands)  # [L, N, 3k]
    pred = train_predictors(features[:, ~val], labels[:, ~val], settings, progress)

    verified = (data.forced.layer_argmax.unsqueeze(-1) == cands.unsqueeze(0)).any(-1)  # [L, N]
    hist, exitable_fraction = exit_histogram(labels, verified)
    report["oracle_mean_layers"] = float((labels.float().argmax(0) + 1).float().mean())  # earliest correct layer
    report["exitable_fraction"] = exitable_fraction
    first_layer = parse_draft(settings.draft)[1] or 0
    report.update(validation_figures(pred, features, labels, verified, val, first_layer))
    report["seconds"] = time.perf_counter() - t0
    return ExitArtifacts(settings, pred, draft, ranked, hist, report)
