"""early_exit against the full model on held-out text: per prompt, the agreement of its greedy tokens with the hf
baseline's, and the exit figures from its stats (no timing: this is the quality check of the defaults).

    python benchmarks/early_exit_heldout.py                      # default options
    python benchmarks/early_exit_heldout.py '{"threshold": 0.5}' # any options, as JSON

Prompts: 96-token windows of the shipped ``heldout.txt`` at tokens 0, 300, 600 and 900 (the early-exit training
reads only ``corpus.txt``), 48 new tokens, SmolLM2-135M in float32 on the CPU, batch 1.
"""

from __future__ import annotations

import json
import sys

import torch

from rooflens.config import EngineSpec, ModelSpec
from rooflens.data.prompts import corpus_ids
from rooflens.data.quality import agreement
from rooflens.engines.base import TokenClock
from rooflens.engines.registry import build_engine
from rooflens.models.loader import load_model

PROMPT, GEN, OFFSETS = 96, 48, (0, 300, 600, 900)


def generate(engine, prompt: torch.Tensor) -> torch.Tensor:
    clock = TokenClock(torch.device("cpu"))
    clock.start()
    out = engine.generate(prompt, GEN, clock)
    clock.stop()
    return out


def main(options: dict) -> None:
    model = load_model(ModelSpec(source="builtin", id="smollm2-135m"), torch.device("cpu"), torch.float32)
    ids = corpus_ids(model.tokenizer, "heldout")
    hf = build_engine(EngineSpec(name="hf"), model)
    hf.prepare()
    engine = build_engine(EngineSpec(name="early_exit", options={"audit": False, **options}), model)
    engine.prepare()
    how = engine.calibration.describe() if engine.calibration else "set in the options"
    print(f"options {options}: threshold {engine.threshold} ({how})")
    for offset in OFFSETS:
        prompt = torch.tensor([ids[offset : offset + PROMPT]])
        reference = generate(hf, prompt)
        engine.reset_stats()
        a = agreement(generate(engine, prompt), reference)
        s = {k: v.value for k, v in engine.stats().items()}
        print(
            f"heldout@{offset}: agreement {a.fraction:.3f} (first divergence {a.first_divergence}), "
            f"exit rate {s['exit_rate']:.3f}, mean exit layer {s['mean_exit_layer']}, "
            f"layers/token {s['layers_executed_per_token']:.2f} (+{s['catch_up_layers_per_token']:.2f} catch-up)"
        )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
