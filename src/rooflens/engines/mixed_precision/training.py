"""Offline tuning of PMPD's schedulers on corpus prompts, cached per model and settings.

For each step-down of the ladder (rung i -> i+1) and each training prompt: the reference is the original
model's greedy output; runs stay at rung i until a switch point s in {0, T/3, 2T/3, never} and continue at
rung i+1 (the prefix up to s is shared with the all-rung-i run: its KV cache is snapshotted at each s).
Scored by ROUGE-L against the reference (PMPD's metric):

* ``static``: the earliest switch point whose mean ROUGE-L over the prompts stays within ``quality_budget``
  of the all-rung-i run's (the largest saving within the budget);
* ``learned``: per prompt, label = the earliest switch point whose ROUGE-L >= the all-rung-i run's (class 3,
  never, if none); a :class:`KVCacheClassifier` per step-down learns it from the last layer's K/V after the
  prefill (cross-entropy; the last 25 % of the prompts are held out for the reported accuracy).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from rooflens.data.prompts import training_prompts
from rooflens.data.quality import rouge_l
from rooflens.engines.artifacts import ArtifactKind, Progress
from rooflens.engines.base import TokenClock
from rooflens.engines.decoding import decode_n_tokens, eos_token_ids, last_logits, mask_eos, new_cache, prefill
from rooflens.engines.mixed_precision.schedulers import SWITCH_FRACTIONS, KVCacheClassifier, last_layer_kv, switch_step
from rooflens.engines.options.mixed_precision import MixedPrecisionOptions
from rooflens.kernels.multiprecision import MultiPrecisionLinear, set_precision


@dataclass(frozen=True)
class TuneSettings:
    """What shapes a tuning and keys its cache file; derived from the engine's options (:meth:`from_options`),
    which hold the defaults."""

    ladder: tuple[int, ...]
    group_size: int
    symmetric: bool
    quantizer: str  # rtn or hqq: the rungs' codes differ, so their tunings must not share a cache file
    lm_head: bool
    prefill_bits: Optional[int]
    quality_budget: float
    prompts: int
    prompt_len: int
    gen_len: int
    classifier_epochs: int
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ladder", tuple(self.ladder))  # a cache file stores it as a list

    @classmethod
    def from_options(cls, options: MixedPrecisionOptions) -> TuneSettings:
        return cls(
            ladder=tuple(options.ladder),
            group_size=options.group_size,
            symmetric=options.symmetric,
            quantizer=options.quantizer,
            lm_head=options.lm_head,
            prefill_bits=options.resolved_prefill_bits,
            quality_budget=options.resolved_quality_budget,
            prompts=options.train_prompts,
            prompt_len=options.train_prompt_len,
            gen_len=options.train_gen_len,
            classifier_epochs=options.classifier_epochs,
            seed=options.seed,
        )


@dataclass
class SchedulerArtifacts:
    settings: TuneSettings
    static_steps: list[Optional[int]]  # per step-down, in decode steps of a gen_len run (None: never)
    static_fractions: list[Optional[float]]  # the same as fractions of the run (applied to any length)
    classifiers: list[KVCacheClassifier]
    report: dict[str, Any] = field(default_factory=dict)


ARTIFACTS = ArtifactKind("mixed-precision", version=1, settings_type=TuneSettings)


def scheduler_path(model: torch.nn.Module, label: str, s: TuneSettings) -> Path:
    return ARTIFACTS.path(model, label, s)


def save(art: SchedulerArtifacts, path: Path) -> str | None:
    payload = {
        "static_steps": art.static_steps,
        "static_fractions": art.static_fractions,
        "classifiers": [c.state_dict() for c in art.classifiers],
        "report": art.report,
    }
    return ARTIFACTS.save(path, art.settings, payload)


def cached(path: Path) -> bool:
    return ARTIFACTS.cached(path)


def load(path: Path, kv_heads: int, head_dim: int) -> SchedulerArtifacts:
    settings, blob = ARTIFACTS.load(path)
    classifiers = []
    for state in blob["classifiers"]:
        c = KVCacheClassifier(kv_heads, head_dim)
        c.load_state_dict(state)
        classifiers.append(c.eval())
    return SchedulerArtifacts(settings, blob["static_steps"], blob["static_fractions"], classifiers, blob["report"])


@torch.inference_mode()
def _two_rung_runs(module, layers, prompt, n, prefill_bits, high, low, eos) -> tuple[list[torch.Tensor], Any]:
    """Tokens of the runs switching high -> low at each switch point (SWITCH_FRACTIONS order), and the
    last layer's K/V after the prefill."""
    set_precision(layers, prefill_bits)
    cache = new_cache(module)
    token = prefill(module, prompt, cache, eos)
    kv = tuple(t.clone() for t in last_layer_kv(cache))
    points = {switch_step(f, n): i for i, f in enumerate(SWITCH_FRACTIONS)}
    runs: list[Optional[torch.Tensor]] = [None] * len(SWITCH_FRACTIONS)
    set_precision(layers, high)
    out = [token]
    clock = TokenClock(prompt.device)
    clock.start()
    for step in range(n - 1):
        if step in points:  # continue a copy at the low rung from here
            i = points[step]
            set_precision(layers, low)
            rest = decode_n_tokens(module, token, copy.deepcopy(cache), n - 1 - step, eos, clock)
            runs[i] = torch.cat(out + [rest], dim=1)
            set_precision(layers, high)
        token = mask_eos(last_logits(module, token, cache), eos).argmax(-1, keepdim=True)
        out.append(token)
    runs[-1] = torch.cat(out, dim=1)  # never switched
    for i, r in enumerate(runs):
        if r is None:  # a switch point at or after the end: the same as never
            runs[i] = runs[-1]
    return runs, kv  # type: ignore[return-value]


@torch.inference_mode()
def reference_outputs(model: torch.nn.Module, prompts: torch.Tensor, n: int, eos: list[int]) -> list[torch.Tensor]:
    """The original model's ``n`` greedy tokens after each prompt: what the runs are scored against."""
    refs = []
    clock = TokenClock(prompts.device)
    clock.start()
    for p in prompts:
        cache = new_cache(model)
        first = prefill(model, p.view(1, -1), cache, eos)
        refs.append(torch.cat([first, decode_n_tokens(model, first, cache, n - 1, eos, clock)], dim=1)[0])
    return refs


@dataclass
class StepDownTuning:
    """One step-down's tuning: the static switch point and the learned classifier, with its report figures."""

    static_fraction: Optional[float]
    classifier: KVCacheClassifier
    report: dict[str, Any]


def tune_step_down(
    module: torch.nn.Module,
    layers: list[MultiPrecisionLinear],
    prompts: torch.Tensor,
    refs: list[torch.Tensor],
    high: int,
    low: int,
    eos: list[int],
    s: TuneSettings,
    progress: Callable[[int], None] | None = None,
) -> StepDownTuning:
    """Run every prompt switching ``high -> low`` at each switch point, score the runs, pick the static switch
    point and train the classifier; ``progress(prompts done)``."""
    n = s.gen_len
    scores, feats = [], []
    for j, p in enumerate(prompts):
        runs, kv = _two_rung_runs(module, layers, p.view(1, -1), n, s.prefill_bits, high, low, eos)
        scores.append([rouge_l(r[0].tolist(), refs[j].tolist()) for r in runs])
        feats.append(tuple(t.clone() for t in kv))  # ordinary tensors: the classifier trains on them
        if progress:
            progress(j + 1)
    mean = torch.tensor(scores).mean(0)  # [4]: per switch point, over the prompts
    best = next(i for i in range(len(SWITCH_FRACTIONS)) if mean[i] >= mean[-1] - s.quality_budget)
    labels = torch.tensor([next(i for i in range(len(SWITCH_FRACTIONS)) if row[i] >= row[-1]) for row in scores])
    n_val = max(1, s.prompts // 4) if s.prompts >= 4 else 0
    clf, acc = _train_classifier(feats, labels, n_val, s)
    tag = f"{high}->{low}"
    fraction = SWITCH_FRACTIONS[best]
    report = {
        f"rouge_l_by_switch_{tag}": ", ".join(
            f"{'never' if f is None else f'{f:.2f}T'}: {float(m):.3f}" for f, m in zip(SWITCH_FRACTIONS, mean)
        ),
        f"static_switch_{tag}": "never" if fraction is None else f"{fraction:.3f} T",
        f"label_counts_{tag}": ", ".join(str(int((labels == c).sum())) for c in range(len(SWITCH_FRACTIONS))),
        f"classifier_accuracy_train_{tag}": acc[0],
        f"classifier_accuracy_validation_{tag}": acc[1],
    }
    return StepDownTuning(fraction, clf, report)


def tune(
    module: torch.nn.Module,
    layers: list[MultiPrecisionLinear],
    reference_model: torch.nn.Module,
    tokenizer: Any,
    s: TuneSettings,
    progress: Progress | None = None,
) -> SchedulerArtifacts:
    """Tune every step-down of the ladder on the corpus prompts against the original model's outputs."""
    t0 = time.perf_counter()
    eos = eos_token_ids(reference_model)
    prompts = training_prompts(reference_model, tokenizer, s.prompts, s.prompt_len, s.seed + 1)  # not early exit's
    refs = reference_outputs(reference_model, prompts, s.gen_len, eos)
    report: dict[str, Any] = {"prompts": s.prompts, "gen_len": s.gen_len}
    static_steps, static_fractions, classifiers = [], [], []
    total = (len(s.ladder) - 1) * s.prompts
    for pair, (high, low) in enumerate(zip(s.ladder, s.ladder[1:])):

        def prompts_done(done: int, pair: int = pair, high: int = high, low: int = low) -> None:
            if progress:
                progress(f"switch {high}->{low} bits: runs", pair * s.prompts + done, total)

        tuned = tune_step_down(module, layers, prompts, refs, high, low, eos, s, prompts_done)
        static_fractions.append(tuned.static_fraction)
        static_steps.append(switch_step(tuned.static_fraction, s.gen_len))
        classifiers.append(tuned.classifier)
        report.update(tuned.report)
    report["seconds"] = time.perf_counter() - t0
    return SchedulerArtifacts(s, static_steps, static_fractions, classifiers, report)


def _train_classifier(
    feats: list[tuple[torch.Tensor, torch.Tensor]], labels: torch.Tensor, n_val: int, s: TuneSettings
) -> tuple[KVCacheClassifier, tuple[float, float]]:
    keys0 = feats[0][0]
    torch.manual_seed(s.seed)
    clf = KVCacheClassifier(keys0.shape[1], keys0.shape[-1])
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    n_train = len(feats) - n_val
    with torch.enable_grad():
        for _ in range(s.classifier_epochs):
            loss = sum(
                torch.nn.functional.cross_entropy(clf(k, v), labels[i : i + 1])
                for i, (k, v) in enumerate(feats[:n_train])
            ) / max(1, n_train)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
    clf.eval()
    with torch.no_grad():
        pred = torch.tensor([int(clf(k, v).argmax(-1)[0]) for k, v in feats])
    acc_train = float((pred[:n_train] == labels[:n_train]).float().mean()) if n_train else float("nan")
    acc_val = float((pred[n_train:] == labels[n_train:]).float().mean()) if n_val else float("nan")
    return clf, (acc_train, acc_val)
