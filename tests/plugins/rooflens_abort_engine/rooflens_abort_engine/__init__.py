"""Engines that fail the way native code does: ``abort`` kills its whole process (SIGABRT), ``hang`` never returns."""

from __future__ import annotations

import os
import time

import torch

from rooflens.engines.base import Engine, TokenClock


class AbortEngine(Engine):
    name = "abort"
    summary = "test engine: generate() calls os.abort()"

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        os.abort()


class HangEngine(Engine):
    """An engine stuck for good (a deadlock, a wait on a device that never answers)."""

    name = "hang"
    summary = "test engine: generate() never returns"

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        if mark := os.environ.get("ROOFLENS_TEST_HANGING"):  # tells a test the engine is now stuck
            open(mark, "w").close()
        while True:
            time.sleep(60)
