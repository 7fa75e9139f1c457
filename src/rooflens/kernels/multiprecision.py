"""One linear layer served at several precisions: the weight store of progressive mixed-precision decoding.

:class:`MultiPrecisionLinear` holds one :class:`LowBitLinear` per rung of a ladder (e.g. 8 -> 4 bits),
each quantized from the same original weight, and optionally the original layer itself; ``bits`` picks
the one that runs (``None``: the original). Switching is an attribute set between steps, never a
re-quantization. Each rung runs through the fast kernel of its own format (on the CPU: rooflens's AVX2
kernel, which reads each rung as stored; on CUDA: the Triton kernel), so every precision runs at its
own speed.

Storage: one packed copy per precision (what the kernels read: the format as stored; torch's int4 kernel,
where it is the CPU path, adds its own layout per rung). Nested codes (Any-Precision's bit-planes) would
save memory but no kernel here reads them; :attr:`MultiPrecisionLinear.storage_bytes` says what the
copies cost, and a record carries it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional

import torch
from torch import nn

from rooflens.kernels.linear import LowBitLinear, _is_skipped
from rooflens.kernels.lowbit import Quantizer
from rooflens.lowbit_rules import check_group_size, check_ladder


class MultiPrecisionLinear(nn.Module):
    """``y = x W_b^T + bias`` with ``W_b`` the rung ``bits`` (or the original weight when ``bits`` is None)."""

    def __init__(
        self,
        linear: nn.Linear,
        ladder: Sequence[int],
        group_size: int,
        symmetric: bool = True,
        kernel: str = "auto",
        keep_original: bool = False,
        quantizer: Optional[Quantizer] = None,
    ) -> None:
        super().__init__()
        self.ladder = check_ladder(ladder)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rungs = nn.ModuleDict(
            {
                str(b): LowBitLinear.from_linear(linear, b, group_size, symmetric, kernel=kernel, quantizer=quantizer)
                for b in self.ladder
            }
        )
        self.original = linear if keep_original else None
        self.bits: Optional[int] = self.ladder[0]

    def set_bits(self, bits: Optional[int]) -> None:
        if bits is None and self.original is None:
            raise ValueError("this layer keeps no original weight (built with keep_original=False)")
        if bits is not None and bits not in self.ladder:
            raise ValueError(f"{bits} bits is not a rung of this layer's ladder {list(self.ladder)}")
        self.bits = bits

    def active(self) -> nn.Module:
        return self.original if self.bits is None else self.rungs[str(self.bits)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.active()(x)

    def storage_bytes(self) -> dict[Optional[int], int]:
        """Bytes held per precision (None: the original weight, when kept)."""
        out: dict[Optional[int], int] = {b: self.rungs[str(b)].storage_bytes for b in self.ladder}
        if self.original is not None:
            out[None] = self.original.weight.numel() * self.original.weight.element_size()
        return out

    def read_bytes(self, device: torch.device, act_dtype: torch.dtype, rows: int = 1) -> int:
        """Weight bytes one forward reads at the active precision (bias excluded)."""
        if self.bits is None:
            return self.original.weight.numel() * self.original.weight.element_size()
        return self.rungs[str(self.bits)].read_bytes(device, act_dtype, rows)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, ladder={list(self.ladder)}, bits={self.bits}"


@torch.no_grad()
def quantize_multiprecision(
    model: nn.Module,
    ladder: Sequence[int],
    group_size: int,
    symmetric: bool = True,
    skip: Iterable[str] = ("lm_head",),
    kernel: str = "auto",
    keep_original: bool = False,
    quantizer: Optional[Quantizer] = None,
) -> tuple[dict[str, MultiPrecisionLinear], dict[str, str]]:
    """Replace every ``nn.Linear`` of ``model`` in place by a :class:`MultiPrecisionLinear`.

    Returns (the new layers by name, the layers left alone with the reason): a name matching ``skip``, or
    an ``in_features`` that ``group_size`` does not divide. ``quantizer`` picks the codes (default:
    round-to-nearest).
    """
    check_group_size(group_size)
    rungs = check_ladder(ladder)
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    layers: dict[str, MultiPrecisionLinear] = {}
    skipped: dict[str, str] = {}
    for name, lin in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        hit = _is_skipped(name, skip)
        if hit is not None:
            skipped[name] = f"matches skip entry {hit!r}"
            continue
        if lin.in_features % group_size:
            skipped[name] = f"in_features={lin.in_features} is not a multiple of group_size={group_size}"
            continue
        new = MultiPrecisionLinear(
            lin, rungs, group_size, symmetric, kernel=kernel, keep_original=keep_original, quantizer=quantizer
        )
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        layers[name] = new
    return layers, skipped


def set_precision(layers: Iterable[MultiPrecisionLinear], bits: Optional[int]) -> None:
    """Switch every layer to ``bits`` (None: the original weights)."""
    for layer in layers:
        layer.set_bits(bits)
