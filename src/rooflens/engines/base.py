"""The engine interface.

An engine turns a batch of prompts into exactly N new tokens per sequence and tells the
runner's :class:`TokenClock` each time tokens become available. Everything else (timing,
repetitions, energy, memory, records) is the runner's job, so every engine is measured the
same way.

Engines register by name in :mod:`rooflens.engines.registry`.
"""

from __future__ import annotations

import importlib.util
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rooflens.engines.options import EngineOptions
from rooflens.results.stat import EngineStat, Fidelity
from rooflens.roofline.hints import RooflineHints

if TYPE_CHECKING:
    from rooflens.models.loader import LoadedModel

__all__ = [
    "Engine",
    "EngineOptions",
    "EngineStat",
    "EngineUnavailable",
    "Fidelity",
    "RooflineHints",
    "TokenClock",
]


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (device, missing library, unsupported model); the message says why."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TokenClock:
    """Timestamps of one generation: ``start()``, one ``tokens(n)`` per emission, ``stop()``.

    ``n`` is the number of new tokens per sequence that became available at that moment
    (1 for plain decoding, possibly more for speculative engines). The device is synchronised
    before every timestamp so that queued GPU work is not mistaken for finished work.
    """

    def __init__(self, device: torch.device, now: Callable[[], float] = time.perf_counter):
        self.device = device
        self._now = now
        self.t_start: float | None = None
        self.t_stop: float | None = None
        self.events: list[tuple[float, int]] = []

    def start(self) -> None:
        synchronize(self.device)
        self.events = []
        self.t_stop = None
        self.t_start = self._now()

    def tokens(self, n: int = 1) -> None:
        if self.t_start is None:
            raise RuntimeError("TokenClock.tokens() before start()")
        synchronize(self.device)
        self.events.append((self._now(), n))

    def stop(self) -> None:
        synchronize(self.device)
        self.t_stop = self._now()

    @property
    def n_tokens(self) -> int:
        return sum(n for _, n in self.events)


class Engine(ABC):
    """Base class of all engines.

    Subclasses set ``name``, ``summary``, ``Options`` and implement :meth:`generate`.
    ``prepare`` runs once per experiment before any cell (quantize, load a draft, train a
    predictor); it must not modify ``model.model`` in place if other engines share it —
    engines that transform weights work on their own copy.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type[EngineOptions]] = EngineOptions
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    requires_packages: ClassVar[tuple[str, ...]] = ()
    supports_batch: ClassVar[bool] = True
    needs_real_weights: ClassVar[bool] = False
    # greedy output token for token equal to the hf baseline's (checked by the engine contract test)
    lossless: ClassVar[bool] = False
    # option sets that run on a CPU with a tiny random-weight model: the engine contract test runs each
    examples: ClassVar[tuple[dict[str, Any], ...]] = ()

    def __init__(self, options: EngineOptions, model: LoadedModel):
        self.options = options
        self.model = model

    @classmethod
    def unavailable_reason(cls, device: torch.device, model: LoadedModel | None = None) -> str | None:
        """Why this engine cannot run on ``device`` (None when it can)."""
        if device.type not in cls.devices:
            return f"engine '{cls.name}' runs on {', '.join(cls.devices)}, not {device.type}"
        missing = [p for p in cls.requires_packages if importlib.util.find_spec(p) is None]
        if missing:
            return f"engine '{cls.name}' needs the Python package(s) {', '.join(missing)} (pip install {' '.join(missing)})"
        if model is not None and cls.needs_real_weights and model.info.weights != "real":
            return f"engine '{cls.name}' needs a model with real weights; {model.info.label} has random weights"
        return None

    @classmethod
    def extra_weight_bytes(cls, options: EngineOptions, model: LoadedModel) -> tuple[int, str]:
        """Bytes of weights ``prepare`` will allocate beside ``model`` (a draft, a quantized copy) and what they are.

        Called before ``prepare`` by the runner's memory pre-check; estimate from configs, load nothing.
        """
        return 0, ""

    def prepare(self) -> None:
        """One-time set-up before the first cell."""

    def warm(self, prompts: torch.Tensor, n_new: int) -> None:
        """One-time work a generation of this shape needs (compiling for it), run before a cell's first repetition,
        so that it never falls inside a timed one; an engine that does some reports its time in :meth:`stats`."""

    @abstractmethod
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        """Generate exactly ``max_new_tokens`` per row (EOS must not stop early).

        Calls ``clock.tokens(n)`` whenever n new tokens per sequence are available.
        Returns the new token ids, shape ``[batch, max_new_tokens]``.
        """

    def reset_stats(self) -> None:
        """Forget statistics gathered so far (called before the measured repetitions)."""

    def stats(self) -> dict[str, EngineStat]:
        """Statistics over the generations since :meth:`reset_stats`."""
        return {}

    def fidelity(self) -> Fidelity | None:
        """For an engine that implements a paper's technique: its reference setup and how this run departs from it
        (the record's ``fidelity``); None for engines that implement no paper."""
        return None

    def scoring_model(self) -> torch.nn.Module | None:
        """The module whose logits are this engine's next-token distribution (for perplexity).

        Engines that change the weights return their own module; None when no single module
        defines the output (the record then says perplexity is not applicable).
        """
        return self.model.model

    def roofline_hints(self) -> RooflineHints:
        """Adjustments to the analytic roofline cost (called after the measured repetitions)."""
        return RooflineHints()

    def why_not_attributed(self) -> str | None:
        """Why the per-operator attribution cannot see this engine's work (None when torch.profiler can: its work
        runs as torch operators of :meth:`profiled_modules`)."""
        return None

    def profiled_modules(self) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
        """The module whose operators are the model's (the target, as this engine runs it) and the engine's own
        modules by the class their time goes to (a draft model: ``{"draft": ...}``), for the per-operator
        attribution. Work that is not a module's forward is marked with :func:`rooflens.engines.marks.engine_work`."""
        return self.model.model, {}
