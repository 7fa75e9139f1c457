"""``threshold: auto``: the exit threshold chosen once per trained model, so that default options keep the output.

Why the decode itself is measured, not the predictors' teacher-forced precision: one wrong exit changes every
later token of a greedy generation, and exits also change the later tokens' attention (the skipped layers'
KV), so the per-position precision seen in training over-states agreement by far (measured on SmolLM2:
teacher-forced accuracy 0.94 at threshold 0.5, decode agreement 0.06-0.42). The calibration therefore decodes
the held-out training prompts (the last ones of the training prompts, which the predictors never saw; never
the workload's) with the engine itself at each candidate threshold, strictest first, and keeps the lowest
threshold whose *worst* prompt still agrees with the full model's greedy output on at least ``target`` of its
tokens (the worst prompt, not the mean: one early divergence ruins a whole prompt, which a mean hides). The
walk stops at the first threshold that fails (lower ones exit more, so they are not tried), and a trial stops at
the first prompt that has missed more tokens than the target allows (decoding is the cost here). The
threshold kept is then :data:`MARGIN_STEPS` stricter than the lowest that passed (few calibration prompts; see
there). When even the strictest fails, the threshold is 1.0: the predictors never fire and the engine is the full model - said in
its stats and fidelity, never silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rooflens.engines.artifacts import ArtifactKind

CALIBRATION_THRESHOLDS = (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
"""The thresholds ``auto`` tries, strictest first."""
MARGIN_STEPS = 1
"""Steps ``auto`` backs off from the lowest passing threshold towards the strict end: the calibration prompts are
few. Measured (SmolLM2-135M, 3 calibration prompts x 64 tokens): 0.9 was the lowest passing one and kept >= 0.94 on
3 of 4 held-out prompts but diverged at the first token on the fourth."""
NEVER_EXIT = 1.0  # a predictor probability is never above 1: no exit, the full model


@dataclass(frozen=True)
class Trial:
    """One threshold decoded on the calibration prompts."""

    threshold: float
    agreement: list[float]  # per prompt: fraction of tokens equal to the full model's greedy output
    exit_rate: float  # decode steps that exited

    @property
    def worst(self) -> float:
        return min(self.agreement) if self.agreement else 0.0


@dataclass(frozen=True)
class Calibration:
    threshold: float  # the chosen one; NEVER_EXIT when none reached the target
    target: float
    prompts: int
    tokens: int  # generated tokens per prompt
    trials: list[Trial] = field(default_factory=list)
    lowest_passing: float = NEVER_EXIT  # before the margin
    margin: int = 0

    @property
    def reached(self) -> bool:
        """Some threshold below 1 kept the target (False: exits are off, the engine is the full model)."""
        return self.threshold < NEVER_EXIT

    def describe(self) -> str:
        """How the threshold was chosen, in one line (the stats' and the fidelity section's)."""
        tried = ", ".join(f"{t.threshold:g} -> worst {t.worst:.2f} (exit rate {t.exit_rate:.2f})" for t in self.trials)
        how = (
            f"the lowest threshold whose worst prompt keeps agreement >= {self.target:g} with the full model's greedy "
            f"output on {self.prompts} held-out training prompts x {self.tokens} tokens, then {self.margin} step(s) "
            f"stricter for unseen text; tried strictest first: {tried}"
        )
        if self.lowest_passing >= NEVER_EXIT:
            return f"NO threshold reached agreement {self.target:g}: exits DISABLED (threshold 1.0 = full model); {how}"
        if not self.reached:
            return (
                f"exits DISABLED (threshold 1.0 = full model): only {self.lowest_passing:g} reached agreement "
                f"{self.target:g}, and the margin steps past it; {how}"
            )
        return f"auto {self.threshold:g} (lowest passing {self.lowest_passing:g}): {how}"

    def to_dict(self) -> dict[str, object]:
        return {
            "threshold": self.threshold,
            "target": self.target,
            "prompts": self.prompts,
            "tokens": self.tokens,
            "trials": [[t.threshold, list(t.agreement), t.exit_rate] for t in self.trials],
            "lowest_passing": self.lowest_passing,
            "margin": self.margin,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        trials = [Trial(float(t), [float(a) for a in agr], float(r)) for t, agr, r in d["trials"]]
        return cls(
            float(d["threshold"]),
            float(d["target"]),
            int(d["prompts"]),
            int(d["tokens"]),
            trials,
            float(d["lowest_passing"]),
            int(d["margin"]),
        )


def choose_threshold(
    decode_at: Callable[[float], Trial],
    target: float,
    prompts: int,
    tokens: int,
    thresholds: Sequence[float] = CALIBRATION_THRESHOLDS,
    margin: int = MARGIN_STEPS,
) -> Calibration:
    """Walk ``thresholds`` from the strictest down while the worst prompt's agreement stays >= ``target``; the
    last one that held, ``margin`` steps back towards the strictest (past it: :data:`NEVER_EXIT`), or
    :data:`NEVER_EXIT` when the strictest already fails."""
    ladder = sorted(thresholds, reverse=True)
    passed, trials = -1, []
    for i, t in enumerate(ladder):
        trial = decode_at(t)
        trials.append(trial)
        if trial.worst < target:
            break
        passed = i
    lowest = ladder[passed] if passed >= 0 else NEVER_EXIT
    chosen = ladder[passed - margin] if passed - margin >= 0 else NEVER_EXIT
    return Calibration(chosen, target, prompts, tokens, trials, lowest, margin)


@dataclass(frozen=True)
class CalibrationSettings:
    """What a calibration depends on, and keys its cache file: the trained artifacts (their file's key) and the
    options that change the decode it measures."""

    training: str  # training_key: the artifacts' file name (model, dtype, training settings) and content
    schedule: str
    offline_layers: int | None
    online_window: int
    online_radius: int
    skipped_kv: str
    target: float
    thresholds: tuple[float, ...] = CALIBRATION_THRESHOLDS
    margin: int = MARGIN_STEPS


CALIBRATIONS = ArtifactKind("early-exit-calibration", version=1, settings_type=CalibrationSettings)


def training_key(path: Path) -> str:
    """The trained artifacts a calibration measured: their file's name and a digest of its bytes (a forced
    retraining writes new predictors under the same name); the name alone for artifacts kept in memory."""
    try:
        return f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    except OSError:
        return path.name
