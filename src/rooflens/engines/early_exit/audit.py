"""The early_exit engine's audit, run after the measurement (not timed): its kept generations replayed
teacher-forced at full depth. Was each exit the full model's token, how precise and complete were the
predictor calls, and how early could each of its tokens have exited (the oracle on its own text)?"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from rooflens.engines.early_exit.decode_state import KeptGeneration
from rooflens.engines.early_exit.teacher_forcing import teacher_forced


@dataclass
class AuditCounts:
    exits: int = 0
    correct_exits: int = 0  # exits whose token is the full-depth model's
    fired: int = 0  # predictor calls that fired
    fired_correct: int = 0  # ... at a layer whose argmax was already the full-depth token
    correct_calls: int = 0  # predictor calls at such a layer, fired or not
    oracle_own_layers: list[int] = field(default_factory=list)  # per audited decode step: layers the oracle needs

    @staticmethod
    def ratio(num: int, den: int) -> float | str:
        return num / den if den else "n/a"


@torch.inference_mode()
def audit_generations(model: torch.nn.Module, kept: Iterable[KeptGeneration]) -> AuditCounts:
    """Teacher-force each generation's prompt + output at full depth and check its exits and predictor calls."""
    device = next(model.parameters()).device
    out = AuditCounts()
    for g in kept:
        P, N = g.prompt.numel(), g.tokens.numel()
        if N < 2:
            continue
        seq = torch.cat([g.prompt, g.tokens]).to(device).view(1, -1)
        tf = teacher_forced(model, seq, P - 1)  # positions P-1 .. P+N-2 predict the N tokens
        correct = tf.layer_argmax == tf.layer_argmax[-1]  # [L, N]
        out.oracle_own_layers += (correct.float().argmax(0) + 1)[1:].tolist()
        for s, (calls, e) in enumerate(zip(g.calls, g.exits), start=1):
            if e is not None:
                out.exits += 1
                out.correct_exits += int(g.tokens[s]) == int(tf.layer_argmax[-1, s])
            for i, f in calls:
                ok = bool(correct[i, s])
                out.fired += f
                out.fired_correct += f and ok
                out.correct_calls += ok
    return out


def oracle_generation(kept: Iterable[KeptGeneration]) -> KeptGeneration:
    """The generation whose prompt the exit oracle decodes: the latest one with the first kept prompt."""
    by_prompt = {tuple(g.prompt.tolist()): g for g in kept}
    return next(iter(by_prompt.values()))
