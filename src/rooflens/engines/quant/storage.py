"""Storage accounting of quantized models: the bytes every backend's layers really hold, and what a decode step reads.

Tensor subclasses (torchao) count their inner tensors, bitsandbytes its side data (row scales, quant state),
rooflens layers their buffers; tensors that share memory count once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def _plain_bytes(t: torch.Tensor | None, seen: set) -> int:
    """Bytes held by a tensor; tensor subclasses (torchao) are summed over their inner tensors.

    ``seen`` deduplicates tensors that share memory (tied weights, bitsandbytes' CB == data).
    """
    if t is None or not isinstance(t, torch.Tensor):
        return 0
    if hasattr(type(t), "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_plain_bytes(getattr(t, n, None), seen) for n in names)
    if t.numel() == 0:
        return 0
    key = (str(t.device), t.data_ptr(), t.numel(), t.dtype)
    if key in seen:
        return 0
    seen.add(key)
    return t.numel() * t.element_size()


def _quant_state_bytes(qs: Any, seen: set) -> int:
    """bitsandbytes ``QuantState``: absmax, code, offset and the nested state of double quantization."""
    if qs is None:
        return 0
    total = sum(_plain_bytes(getattr(qs, a, None), seen) for a in ("absmax", "code", "offset"))
    return total + _quant_state_bytes(getattr(qs, "state2", None), seen)


def _tensor_bytes(t: torch.Tensor | None, seen: set, module: nn.Module | None = None) -> int:
    """All bytes a weight holds: the tensor (or its subclass' inner tensors) + bitsandbytes side data."""
    total = _plain_bytes(t, seen)
    if t is not None:
        total += _plain_bytes(getattr(t, "SCB", None), seen) + _plain_bytes(getattr(t, "CB", None), seen)
        total += _quant_state_bytes(getattr(t, "quant_state", None), seen)
    if module is not None:  # bitsandbytes moves CB/SCB to module.state at the first forward
        state = getattr(module, "state", None)
        total += _plain_bytes(getattr(state, "CB", None), seen) + _plain_bytes(getattr(state, "SCB", None), seen)
        total += _quant_state_bytes(getattr(module, "quant_state", None), seen)
    return total


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a module's own parameters and persistent buffers (not its children's)."""
    for name, p in module._parameters.items():
        if p is not None:
            yield name, p
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            yield name, b


def layer_weight_bytes(module: nn.Module, seen: set | None = None) -> int:
    """Storage of a quantized layer's weight incl. scales / zero points / quant state (bias excluded)."""
    seen = set() if seen is None else seen
    total = 0
    for name, t in _own_tensors(module):
        if name != "bias":
            total += _tensor_bytes(t, seen)
    return total + _tensor_bytes(None, seen, module)


def model_weight_bytes(model: nn.Module, quantized: dict[str, nn.Module]) -> tuple[int, int]:
    """(bytes of all weights, bytes of the quantized layers' weights).

    Quantized layers: their parameters and persistent buffers (rooflens keeps codes and scales in
    buffers) and bitsandbytes side data; everywhere else: parameters (as ``ModelInfo.param_bytes``).
    """
    seen: set = set()
    q_ids = {id(m) for m in quantized.values()}
    q_total = sum(layer_weight_bytes(m, seen) for m in quantized.values())
    rest = 0
    for mod in model.modules():
        if id(mod) in q_ids:
            rest += _tensor_bytes(mod._parameters.get("bias"), seen)  # the rest of the layer is counted above
            continue
        for t in mod._parameters.values():  # elsewhere parameters only: other buffers are not weights
            rest += _tensor_bytes(t, seen)
    return q_total + rest, q_total


def decode_read_bytes(
    model: nn.Module, quantized: dict[str, nn.Module], device: torch.device, act_dtype: torch.dtype, rows: int = 1
) -> int:
    """Weight bytes one forward pass of ``rows`` activation rows reads (default: a decode step at batch 1), by
    the analytic model's convention: every weight once, but one row of the input embedding. A rooflens layer
    counts what its kernel reads for that many rows (:meth:`LowBitLinear.read_bytes`: on the CPU a prefill
    takes the native kernel's dense path, which also writes and reads the dequantized weight), any other
    quantized layer its storage."""
    seen: set = set()
    emb = model.get_input_embeddings()
    total = emb.weight.shape[1] * emb.weight.element_size()
    q_ids = {id(m) for m in quantized.values()}
    inside = {id(sub) for m in quantized.values() for sub in m.modules() if sub is not m}  # counted by their layer
    for mod in model.modules():
        if mod is emb or id(mod) in inside:
            continue
        if id(mod) in q_ids:
            # rooflens layers (LowBitLinear, MultiPrecisionLinear at its active precision) know what their kernel reads
            own = (
                mod.read_bytes(device, act_dtype, rows) if hasattr(mod, "read_bytes") else layer_weight_bytes(mod, seen)
            )
            total += own + _tensor_bytes(mod._parameters.get("bias"), seen)
            continue
        for t in mod._parameters.values():
            total += _tensor_bytes(t, seen)
    return total
