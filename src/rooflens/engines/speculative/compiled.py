"""``compile: true`` for our own loop (issue 26): the target, and a draft model, on static caches, compiled.

The target's prefill is compiled with its length dynamic, its verify pass with static shapes at one fixed width
W = gamma + 1 (gamma_max + 1 under adaptive gamma): a round that drafts g < W - 1 tokens (the run's last rounds, a
prompt-lookup miss, a smaller adaptive gamma) pads its block with token 0 and ignores the padded rows' logits.
Padding rather than one graph per g: one graph to compile and warm, where adaptive gamma would need up to
gamma_max + 1 of them (17 by default: minutes of compiling on a CPU, a CUDA graph's memory each); and a decode-sized
pass is bound by reading the weights, so on the devices where compiling pays W rows cost about what g + 1 rows do.
The price, W - g - 1 rows of wasted FLOPs, is in the roofline hints (the pass processes W tokens). The padded
rows' keys and values land after the committed tokens; the roll-back rewinds the cache's write position before
them (a static cache is never cropped) and the causal mask, built from that position, hides them until later
writes overwrite them.

A draft model runs on its own static cache: a feed of several tokens (its first: prompt + first token; after a
fully accepted draft: the last draft token + the bonus token) goes through its compiled prefill, whose dynamic
length makes one graph for both, and every single token through a one-token step with static shapes. Prompt
lookup runs no model. Everything compiles in :meth:`CompiledSpeculation.warm`, before a cell's timed repetitions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rooflens.engines.compiled import CompiledForward, CompileLog, cache_length
from rooflens.engines.speculative.proposers import DraftModelProposer
from rooflens.engines.speculative.vocabtrim import DraftVocab

PAD_TOKEN = 0  # what fills a short draft's block up to the verify width (its rows' logits are never read)


def capacity(prompt_len: int, n_new: int, width: int) -> int:
    """A static cache's length for a generation whose verify blocks are ``width`` wide (bucketed: see
    :func:`rooflens.engines.compiled.cache_length`); the draft's cache never holds more than the target's."""
    return cache_length(prompt_len, n_new + width)


@dataclass
class VerifyCount:
    """Verify passes of the compiled target and the tokens they processed, padding included (the roofline's)."""

    passes: int = 0
    tokens: int = 0


class CompiledTarget:
    """The loop's :class:`~rooflens.engines.speculative.loop.Target` on a :class:`CompiledForward`: a verify block of
    one token (nothing drafted: a prompt-lookup miss) through a one-token graph, any other padded to ``width`` (a
    second static graph; padding an empty draft to ``width`` made prompt lookup on text without repeats 8 % slower
    compiled than eager on a 2-core CPU, 5 rows costing more than 1 there); a roll-back that rewinds the write
    position."""

    def __init__(self, forward: CompiledForward, width: int, count: VerifyCount):
        self.forward = forward
        self.width = width
        self.count = count

    def start(self, prompt_len: int, max_new_tokens: int) -> None:
        self.forward.start(1, capacity(prompt_len, max_new_tokens, self.width))

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward.last_logits(tokens)[0]

    def verify(self, block: torch.Tensor) -> torch.Tensor:
        n = int(block.numel())
        if n > self.width:
            raise ValueError(f"a verify block of {n} tokens is wider than the compiled width {self.width}")
        width = 1 if n == 1 else self.width
        padded = block.new_full((1, width), PAD_TOKEN)
        padded[0, :n] = block
        self.count.passes += 1
        self.count.tokens += width
        return self.forward.block_logits(padded)[0, :n]

    def rollback(self, length: int) -> None:
        self.forward.rewind(length)


class CompiledDraftProposer(DraftModelProposer):
    """:class:`DraftModelProposer` whose draft runs on a :class:`CompiledForward` (its cache ``capacity`` tokens)."""

    def __init__(self, forward: CompiledForward, vocab: DraftVocab | None, capacity: int):
        super().__init__(forward.model, vocab)
        self.compiled = forward
        self.capacity = capacity

    def start(self) -> None:
        self.compiled.start(1, self.capacity)

    def seen(self) -> int:
        return self.compiled.length

    def logits(self, feed: torch.Tensor) -> torch.Tensor:
        return self.compiled.last_logits(feed)[0]

    def rollback(self, length: int) -> None:
        self.compiled.rewind(min(self.seen(), length))


class CompiledSpeculation:
    """The compiled parts of one engine: the target's forward, a draft model's (None for prompt lookup), the
    verify width, and what compiling them cost."""

    def __init__(
        self,
        target: torch.nn.Module,
        draft: torch.nn.Module | None,
        device: torch.device,
        mode: str,
        width: int,
        gemv: bool = True,
    ):
        self.target = CompiledForward(target, device, mode, gemv)
        self.draft = CompiledForward(draft, device, mode, gemv) if draft is not None else None
        self.width = width
        self.log = CompileLog()
        self.count = VerifyCount()
        self._warm: set[tuple[int, int]] = set()

    def target_side(self) -> CompiledTarget:
        return CompiledTarget(self.target, self.width, self.count)

    def proposer(self, vocab: DraftVocab | None, prompt_len: int, n_new: int) -> CompiledDraftProposer:
        if self.draft is None:
            raise ValueError("no draft model was compiled (prompt lookup runs none)")
        return CompiledDraftProposer(self.draft, vocab, capacity(prompt_len, n_new, self.width))

    def warm(self, prompt: torch.Tensor, n_new: int) -> float:
        """Compile every graph a generation of this shape calls (one call each); seconds spent, 0 when warm."""
        L = prompt.shape[1]
        key = (L, capacity(L, n_new, self.width))
        if key in self._warm:
            return 0.0
        t0 = time.perf_counter()
        self._call_graphs(prompt, key[1])
        seconds = time.perf_counter() - t0
        self._warm.add(key)
        self.log.seconds += seconds
        self.log.shapes.append(f"prompt {L}, cache {key[1]}, verify width {self.width}: {seconds:.1f} s")
        return seconds

    def _call_graphs(self, prompt: torch.Tensor, length: int) -> None:
        """The target's prefill and verify block; the draft's feeds of the prompt + 1, of 2 tokens and of 1."""
        self.target.start(1, length)
        self.target.last_logits(prompt)
        for width in (self.width, 1):
            self.target.block_logits(prompt.new_full((1, width), PAD_TOKEN))
        if self.draft is None:
            return
        self.draft.start(1, length)
        self.draft.last_logits(torch.cat([prompt, prompt[:, -1:]], dim=1))
        for n in (2, 1):
            self.draft.rewind(0)
            self.draft.last_logits(prompt.new_full((1, n), PAD_TOKEN))
