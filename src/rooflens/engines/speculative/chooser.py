"""How a token is chosen from logits: greedy argmax or plain temperature sampling, EOS masked."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rooflens.engines.decoding import mask_eos


@dataclass
class TokenChooser:
    """Greedy (``generator`` None) or temperature sampling (no top-k / top-p) with ``generator``; the
    target's EOS ids are masked, as ``min_new_tokens`` does for the ``hf`` baseline."""

    eos: list[int]
    temperature: float = 1.0
    generator: torch.Generator | None = None

    @property
    def sampling(self) -> bool:
        return self.generator is not None

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampling distribution over the last dimension of ``logits``."""
        return torch.softmax(mask_eos(logits, self.eos) / self.temperature, dim=-1)

    def argmax(self, logits: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
        return mask_eos(logits, self.eos).argmax(-1, keepdim=keepdim)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One token id (shape ``[1]``) drawn from the distribution ``probs`` with this chooser's generator."""
        return torch.multinomial(probs, 1, generator=self.generator)

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The token after 1-D ``logits`` (shape ``[1]``) and, when sampling, the distribution it came from."""
        if self.sampling:
            probs = self.probs(logits)
            return self.sample(probs), probs
        return self.argmax(logits, keepdim=True), None
