"""The progressive mixed-precision decode loop (PMPD's ``generate``), on the decoding toolkit.

Prefill at ``prefill_bits`` (None: the original weights), then decode from the ladder's top rung; before
every decode step the scheduler names the rung, and a switch is one attribute set on every layer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from rooflens.engines.base import TokenClock, synchronize
from rooflens.engines.decoding import EagerSession, mask_eos
from rooflens.engines.marks import engine_work
from rooflens.engines.mixed_precision.schedulers import Scheduler
from rooflens.kernels.multiprecision import MultiPrecisionLinear, set_precision


@dataclass
class MixedRun:
    tokens: torch.Tensor  # [1, N]
    bits: list[Optional[int]]  # per output token, the precision that produced it (token 0: the prefill's)
    switches: list[int] = field(default_factory=list)  # decode steps at which the rung went down
    time_per_bits: dict[int, float] = field(default_factory=dict)  # decode seconds per rung
    prefill_time: float = 0.0


@torch.inference_mode()
def mixed_decode(
    module: torch.nn.Module,
    layers: Iterable[MultiPrecisionLinear],
    input_ids: torch.Tensor,
    max_new_tokens: int,
    prefill_bits: Optional[int],
    scheduler: Scheduler,
    eos: list[int],
    clock: TokenClock | None = None,
    session: Any = None,
) -> MixedRun:
    """``session``: how the model is stepped (:class:`EagerSession` by default; a compiled engine's
    :class:`rooflens.engines.compiled.StaticSession`); a rung's switch is the same either way."""
    layers = list(layers)
    session = session if session is not None else EagerSession(module)
    device = input_ids.device
    times: dict[int, float] = {}
    synchronize(device)
    t0 = time.perf_counter()
    with engine_work("precision_switch"):
        set_precision(layers, prefill_bits)
    cache = session.cache
    logits = session.prefill(input_ids)[0]
    token = mask_eos(logits, eos).argmax(-1).view(1, 1)
    synchronize(device)
    t1 = t1_prefill = time.perf_counter()
    if clock is not None:
        clock.tokens(1)
    out, bits_log, switches = [token], [prefill_bits], []
    bits = scheduler.ladder[0]
    with engine_work("scheduler"):
        scheduler.start(cache, max_new_tokens)
    with engine_work("precision_switch"):
        set_precision(layers, bits)
    for step in range(max_new_tokens - 1):
        with engine_work("scheduler"):
            new = scheduler.schedule(step, cache, logits, bits)
        if new != bits:
            bits = new
            with engine_work("precision_switch"):
                set_precision(layers, bits)
            switches.append(step)
        logits = session.step(token)[0]
        token = mask_eos(logits, eos).argmax(-1).view(1, 1)
        synchronize(device)
        t2 = time.perf_counter()
        times[bits] = times.get(bits, 0.0) + t2 - t1
        out.append(token)
        bits_log.append(bits)
        if clock is not None:
            clock.tokens(1)
        t1 = time.perf_counter()
    return MixedRun(torch.cat(out, dim=1), bits_log, switches, times, t1_prefill - t0)
