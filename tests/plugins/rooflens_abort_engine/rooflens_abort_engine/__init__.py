"""An engine that dies the way native code does: ``generate`` aborts the whole process (SIGABRT)."""

from __future__ import annotations

import os

import torch

from rooflens.engines.base import Engine, TokenClock


class AbortEngine(Engine):
    name = "abort"
    summary = "test engine: generate() calls os.abort()"

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        os.abort()
