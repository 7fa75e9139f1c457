"""Train what the early-exit engine needs for one model, and cache it.

Data (SpecEE §1.4, on the model's *own* outputs):

1. prompts cut evenly from the shipped corpus (random ids for a model without a tokenizer), continued
   greedily at full depth with EOS masked - the text the engine will see at decode time;
2. one teacher-forced pass over each prompt + continuation, walking the layer stack: after every layer
   the final norm of the hidden state, that layer's full-vocabulary argmax (EOS masked) and, at the
   last layer, the model's own token;
3. the trimmed vocabulary (VocabTrim): the model's output tokens ranked by frequency, then the corpus's
   input tokens, then the rest by id.

Trained from it: the draft head (draft ``head``: cross-entropy against the model's own token, on the
greedy sequences and on teacher-forced corpus windows; only ``fc`` and its decoder layer learn) and the
per-layer predictors (label: this layer's argmax equals the model's token; binary cross-entropy; the
last 20 % of the sequences are held out for the validation figures in ``report``).

Artifacts are cached under ``$ROOFLENS_CACHE/early-exit/`` (default ``~/.cache/rooflens``), keyed by a
fingerprint of the model's weights and config, its dtype and every training setting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rooflens.bench.prompts import corpus_text
from rooflens.engines.artifacts import artifact_path as _artifact_path
from rooflens.engines.artifacts import save_atomic
from rooflens.engines.decoding import LayerStack, eos_token_ids, forward_layers, greedy_config, mask_eos, new_cache
from rooflens.engines.early_exit.draft_head import DraftHead
from rooflens.engines.early_exit.predictors import ExitPredictors, exit_features, threshold_logit
from rooflens.engines.early_exit.proposers import lookup_candidates, mixed_candidates, parse_draft
from rooflens.fsutil import cache_dir

ARTIFACT_VERSION = 1
Progress = Callable[[str, int, int], None]  # (stage, done, total)
SIM_THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class TrainSettings:
    draft: str = "head+lookup"
    k: int = 4
    draft_vocab: int = 2048
    prompts: int = 16
    prompt_len: int = 64
    gen_len: int = 64
    draft_epochs: int = 20
    predictor_epochs: int = 300
    predictor_hidden: int = 128
    seed: int = 0


@dataclass
class ExitArtifacts:
    settings: TrainSettings
    predictors: ExitPredictors
    draft: DraftHead | None
    ranked_vocab: torch.Tensor  # every token id, most frequent model output first
    exit_histogram: list[int]  # training positions per earliest layer that exits correctly (last layer excluded)
    report: dict[str, Any] = field(default_factory=dict)

    def offline_layers(self, n: int) -> list[int]:
        """The ``n`` layers where correct exits concentrate in the training data (SpecEE's skewed distribution)."""
        ranked = sorted(range(len(self.exit_histogram)), key=lambda i: (-self.exit_histogram[i], i))
        return sorted(i for i in ranked[:n] if self.exit_histogram[i] > 0)


# ---------------------------------------------------------------------------- cache


def artifact_dir() -> Path:
    return cache_dir("early-exit")


def artifact_path(model: torch.nn.Module, label: str, settings: TrainSettings) -> Path:
    return _artifact_path("early-exit", model, label, {"v": ARTIFACT_VERSION, **asdict(settings)})


def save_artifacts(art: ExitArtifacts, path: Path) -> None:
    blob = {
        "version": ARTIFACT_VERSION,
        "settings": asdict(art.settings),
        "predictors": art.predictors.state_dict(),
        "draft": art.draft.state_dict() if art.draft is not None else None,
        "ranked_vocab": art.ranked_vocab.cpu(),
        "exit_histogram": list(art.exit_histogram),
        "report": art.report,
    }
    save_atomic(blob, path)


def load_artifacts(model: torch.nn.Module, path: Path) -> ExitArtifacts:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("version") != ARTIFACT_VERSION:
        raise ValueError(f"{path}: artifact version {blob.get('version')}, expected {ARTIFACT_VERSION}")
    settings = TrainSettings(**blob["settings"])
    stack = LayerStack.of(model)
    device = next(model.parameters()).device
    pred = ExitPredictors(len(stack.layers), settings.k, settings.predictor_hidden)
    pred.load_state_dict(blob["predictors"])
    draft = None
    if blob["draft"] is not None:
        draft = DraftHead(stack, blob["draft"]["vocab_ids"])
        draft.load_state_dict(blob["draft"])
        draft.bind(stack).eval()
    return ExitArtifacts(
        settings, pred.to(device).eval(), draft, blob["ranked_vocab"].to(device), blob["exit_histogram"], blob["report"]
    )


def load_or_train(
    model: torch.nn.Module, tokenizer: Any, label: str, settings: TrainSettings, progress: Progress | None = None
) -> tuple[ExitArtifacts, Path, bool]:
    """(artifacts, cache file, trained now?): the cached artifacts, or new ones trained and saved."""
    path = artifact_path(model, label, settings)
    if path.is_file():
        try:
            return load_artifacts(model, path), path, False
        except Exception:  # noqa: BLE001 - a damaged or foreign file is replaced by a fresh training
            pass
    art = train(model, tokenizer, settings, progress)
    save_artifacts(art, path)
    return art, path, True


# ---------------------------------------------------------------------------- data


def _corpus_ids(tokenizer: Any) -> list[int]:
    return tokenizer(corpus_text(), add_special_tokens=False)["input_ids"]


def training_prompts(model: torch.nn.Module, tokenizer: Any, n: int, length: int, seed: int) -> torch.Tensor:
    """``n`` windows of ``length`` tokens starting evenly over the corpus (wrapping); random ids without a tokenizer."""
    device = next(model.parameters()).device
    if tokenizer is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, int(model.config.vocab_size), (n, length), generator=g).to(device)
    ids = _corpus_ids(tokenizer)
    rows = [[ids[(i * len(ids) // n + j) % len(ids)] for j in range(length)] for i in range(n)]
    return torch.tensor(rows, dtype=torch.long, device=device)


def corpus_windows(model: torch.nn.Module, tokenizer: Any, length: int) -> torch.Tensor:
    """The corpus cut into consecutive windows of ``length`` tokens (empty without a tokenizer)."""
    device = next(model.parameters()).device
    if tokenizer is None:
        return torch.empty(0, length, dtype=torch.long, device=device)
    ids = _corpus_ids(tokenizer)
    n = len(ids) // length
    return torch.tensor(ids[: n * length], dtype=torch.long, device=device).view(n, length)


@torch.no_grad()
def greedy_sequences(model: torch.nn.Module, prompts: torch.Tensor, gen_len: int, batch: int = 8) -> torch.Tensor:
    """Each prompt followed by ``gen_len`` full-depth greedy tokens (EOS masked, as the hf baseline)."""
    gc = greedy_config(model, gen_len)
    out = [model.generate(c, attention_mask=torch.ones_like(c), generation_config=gc) for c in prompts.split(batch)]
    return torch.cat(out)


@dataclass
class TeacherForced:
    """Per-layer views of sequences [n, T] at the positions ``start .. T-2`` (the tokens they predict: start+1 ..)."""

    normed: torch.Tensor  # [L, N, H] final norm of each layer's hidden state
    layer_argmax: torch.Tensor  # [L, N] full-vocabulary argmax per layer (EOS masked)
    layer_topk: torch.Tensor | None  # [N, k] top-k after layer ``topk_layer`` (self:k candidates)
    final_normed: torch.Tensor  # [n, T, H] last layer, every position
    final_tokens: torch.Tensor  # [n, T] the model's own token after every position


@torch.no_grad()
def teacher_forced(
    model: torch.nn.Module,
    seqs: torch.Tensor,
    start: int,
    topk_layer: int | None = None,
    k: int = 4,
    batch: int = 4,
    progress: Progress | None = None,
) -> TeacherForced:
    stack = LayerStack.of(model)
    eos = eos_token_ids(model)
    n, T = seqs.shape
    L = len(stack.layers)
    normed, argmax, topk, f_normed, f_tokens = [], [], [], [], []
    for b, chunk in enumerate(seqs.split(batch)):
        per_layer_n: list[torch.Tensor] = []
        per_layer_a: list[torch.Tensor] = []

        def collect(i: int, hidden: torch.Tensor) -> bool:
            hn = stack.norm(hidden)
            logits = mask_eos(stack.lm_head(hn[:, start : T - 1]), eos)
            per_layer_n.append(hn[:, start : T - 1].float().reshape(-1, hn.shape[-1]))
            per_layer_a.append(logits.argmax(-1).reshape(-1))
            if i == topk_layer:
                topk.append(logits.topk(k, dim=-1).indices.reshape(-1, k))
            if i == L - 1:
                f_normed.append(hn.float())
                f_tokens.append(mask_eos(stack.lm_head(hn), eos).argmax(-1))
            return False

        forward_layers(stack, chunk, new_cache(model), torch.arange(T, device=seqs.device), on_layer=collect)
        normed.append(torch.stack(per_layer_n))
        argmax.append(torch.stack(per_layer_a))
        if progress:
            progress("teacher-forced pass", b + 1, -(-n // batch))
    return TeacherForced(
        torch.cat(normed, 1),
        torch.cat(argmax, 1),
        torch.cat(topk) if topk else None,
        torch.cat(f_normed),
        torch.cat(f_tokens),
    )


def ranked_vocabulary(vocab_size: int, outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Every id: by frequency among ``outputs``, then among ``inputs``, then by id (VocabTrim's ranking)."""
    out_counts = torch.bincount(outputs.reshape(-1).cpu(), minlength=vocab_size).double()
    in_counts = torch.bincount(inputs.reshape(-1).cpu(), minlength=vocab_size).double()
    score = out_counts * (in_counts.max() + 1) + in_counts  # outputs first, inputs break ties
    return torch.sort(score, descending=True, stable=True).indices.to(outputs.device)


# ---------------------------------------------------------------------------- training


def _draft_pairs(
    model: torch.nn.Module,
    final_normed: torch.Tensor,
    final_tokens: torch.Tensor,
    seqs: torch.Tensor,
    trim_index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(embeddings of x_1..x_{T-1}, normed hidden of 0..T-2, trimmed index of the model's token at 1..T-1)."""
    stack = LayerStack.of(model)
    with torch.no_grad():
        emb = stack.embed_tokens(seqs[:, 1:]).float()
    return emb, final_normed[:, :-1], trim_index[final_tokens[:, 1:]]


def train_draft(
    model: torch.nn.Module,
    vocab_ids: torch.Tensor,
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
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
def draft_candidates(draft: DraftHead, pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], k: int) -> torch.Tensor:
    """[n, T-1, k] the draft's top-k ids (full-vocabulary ids) for every pair."""
    emb, prev, _ = pairs
    pos = torch.arange(emb.shape[1], device=emb.device).view(1, -1)
    out = [draft(e, p, pos).topk(k, dim=-1).indices for e, p in zip(emb.split(8), prev.split(8))]
    return draft.vocab_ids[torch.cat(out)]


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


def train(
    model: torch.nn.Module, tokenizer: Any, settings: TrainSettings, progress: Progress | None = None
) -> ExitArtifacts:
    t0 = time.perf_counter()
    kind, self_k = parse_draft(settings.draft)
    stack = LayerStack.of(model)
    L, V = len(stack.layers), int(model.config.vocab_size)
    if settings.draft_vocab > V:
        raise ValueError(f"draft_vocab {settings.draft_vocab} exceeds the model's vocabulary ({V})")
    if self_k is not None and not 1 <= self_k < L:
        raise ValueError(f"draft 'self:{self_k}': the model has {L} layers; k must be in 1..{L - 1}")

    if progress:
        progress("greedy decoding of training prompts", 0, 1)
    prompts = training_prompts(model, tokenizer, settings.prompts, settings.prompt_len, settings.seed)
    seqs = greedy_sequences(model, prompts, settings.gen_len)
    if progress:
        progress("greedy decoding of training prompts", 1, 1)
    P, T = settings.prompt_len, seqs.shape[1]
    tf = teacher_forced(
        model, seqs, P - 1, topk_layer=(self_k - 1) if self_k else None, k=settings.k, progress=progress
    )
    n, G = seqs.shape[0], T - P  # positions P-1 .. T-2 of each sequence: G per sequence
    final = tf.layer_argmax[-1]
    labels = tf.layer_argmax == final  # [L, N]
    n_val = max(1, n // 5) if n >= 2 else 0
    val = torch.zeros(n, G, dtype=torch.bool, device=seqs.device)
    val[n - n_val :] = True
    val = val.reshape(-1)
    report: dict[str, Any] = {"training_sequences": n, "validation_sequences": n_val, "positions": int(final.numel())}

    # The corpus pass gives a draft head more training pairs and the vocabulary ranking more text. A lookup draft
    # uses the ranking only to pad short candidate lists, which the training sequences rank well enough: skipping
    # the pass (a full forward over the corpus, ~15 s on 2 CPU cores) keeps its training short.
    windows = corpus_windows(model, tokenizer, T) if kind != "lookup" else seqs.new_empty(0, T)
    wtf = teacher_forced(model, windows, T - 2) if windows.shape[0] else None
    inputs = torch.cat([seqs.reshape(-1), windows.reshape(-1)])
    outputs = torch.cat([tf.final_tokens[:, P - 1 :].reshape(-1)] + ([wtf.final_tokens.reshape(-1)] if wtf else []))
    ranked = ranked_vocabulary(V, outputs, inputs)

    draft = None
    if kind in ("head", "head+lookup"):
        vocab_ids = ranked[: settings.draft_vocab].clone()
        trim_index = torch.full((V,), -100, dtype=torch.long, device=seqs.device)
        trim_index[vocab_ids] = torch.arange(vocab_ids.numel(), device=seqs.device)
        train_rows = torch.arange(n - n_val, device=seqs.device)
        gp = _draft_pairs(model, tf.final_normed, tf.final_tokens, seqs, trim_index)
        parts = [tuple(t[train_rows] for t in gp)]
        if wtf is not None:
            parts.append(_draft_pairs(model, wtf.final_normed, wtf.final_tokens, windows, trim_index))
        pairs = tuple(torch.cat([p[j] for p in parts]) for j in range(3))
        report["draft_vocab_coverage"] = float((trim_index[outputs] >= 0).float().mean())
        draft = train_draft(model, vocab_ids, pairs, settings.draft_epochs, settings.seed, progress)
        cands = draft_candidates(draft, gp, settings.k)[:, P - 2 : T - 2].reshape(
            -1, settings.k
        )  # pair p-1 -> position p
        if kind == "head+lookup":
            best = cands.view(n, G, -1).tolist()
            cands = torch.stack(
                [mixed_candidates(seqs[i, : P + j], best[i][j], settings.k, ranked) for i in range(n) for j in range(G)]
            )
    elif kind == "lookup":
        cands = torch.stack(
            [lookup_candidates(seqs[i, : p + 1], settings.k, ranked) for i in range(n) for p in range(P - 1, T - 1)]
        )
    else:
        cands = tf.layer_topk
    hit = (cands == final.unsqueeze(1)).any(1)
    report["candidate_hit_rate_train"] = float(hit[~val].float().mean()) if (~val).any() else float("nan")
    report["candidate_hit_rate_validation"] = float(hit[val].float().mean()) if val.any() else float("nan")

    rows = stack.lm_head.weight.detach()[cands].float()  # [N, k, H]
    feats, last = [], None
    for i in range(L):
        f, last = exit_features(tf.normed[i], rows, last)
        feats.append(f)
    features = torch.stack(feats)  # [L, N, 3k]
    pred = train_predictors(features[:, ~val], labels[:, ~val], settings, progress)

    verified = (tf.layer_argmax.unsqueeze(-1) == cands.unsqueeze(0)).any(-1)  # [L, N]
    first_ok = (labels & verified).clone()
    first_ok[L - 1] = False
    exitable = first_ok.any(0)
    first = first_ok.float().argmax(0)
    hist = torch.bincount(first[exitable], minlength=L).tolist()
    report["oracle_mean_layers"] = float((labels.float().argmax(0) + 1).float().mean())  # earliest correct layer
    report["exitable_fraction"] = float(exitable.float().mean())
    with torch.no_grad():
        logits = pred.logits_all(features)
    vmask = val if val.any() else torch.ones_like(val)
    fire = logits[:, vmask] > 0
    tp = (fire & labels[:, vmask]).sum()
    report["predictor_precision_validation"] = float(tp / fire.sum().clamp_min(1))
    report["predictor_recall_validation"] = float(tp / labels[:, vmask].sum().clamp_min(1))
    first_layer = self_k or 0
    report["simulated_validation"] = {
        str(t): dict(
            zip(
                ("token_accuracy", "mean_layers"),
                simulate_exits(logits[:, vmask], labels[:, vmask], verified[:, vmask], t, first_layer),
            )
        )
        for t in SIM_THRESHOLDS
    }
    report["seconds"] = time.perf_counter() - t0
    return ExitArtifacts(settings, pred, draft, ranked, hist, report)
