"""bitsandbytes: ``Linear8bitLt`` / ``Linear4bit`` swapped in for the selected ``nn.Linear`` layers.

* ``int8`` — LLM.int8() (outlier threshold 6.0, as transformers' ``BitsAndBytesConfig`` default).
* ``nf4`` — 4-bit NormalFloat, blocks of ``group_size`` (64), fp32 absmax per block, no double quant.

On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for its CPU kernel at the first forward (absmax
becomes bf16, activations run in bf16 for single-row matmuls); the engine measures storage after one forward
pass so that the figure is what the generations actually use.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from rooflens.engines.base import EngineUnavailable
from rooflens.engines.options.quantized import FORMATS, QuantSpec, join
from rooflens.engines.quant.base import (
    QuantHandler,
    lib_version,
    linear_targets,
    missing_package,
    set_child,
)


def _bnb_layer(lin: nn.Linear, fmt: str, group_size: int | None, device: torch.device) -> nn.Module:
    import bitsandbytes as bnb

    # the weight is quantized by .to(device) from a CPU copy (Int8Params only quantizes when moving off the CPU)
    w = lin.weight.detach().to("cpu", copy=True)
    has_bias = lin.bias is not None
    if fmt == "int8":
        new = bnb.nn.Linear8bitLt(
            lin.in_features, lin.out_features, bias=has_bias, has_fp16_weights=False, threshold=6.0, device="meta"
        )
        new.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=has_bias,
            compute_dtype=lin.weight.dtype,
            compress_statistics=False,
            quant_type="nf4",
            device="meta",
        )
        new.weight = bnb.nn.Params4bit(
            w, requires_grad=False, blocksize=group_size, compress_statistics=False, quant_type="nf4", module=new
        )
    if has_bias:
        new.bias = nn.Parameter(lin.bias.detach().to("cpu", copy=True), requires_grad=False)
    return new.to(device)


class _DropRepeatedCastWarning(logging.Filter):
    """bitsandbytes logs 'MatMul8bitLt: inputs will be cast ... to float16' on *every* int8 matmul call; the
    engine states it once in its statistics instead of flooding the benchmark's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _quiet_bnb_cast_warning() -> None:
    lg = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropRepeatedCastWarning) for f in lg.filters):
        lg.addFilter(_DropRepeatedCastWarning())


_BNB_PROBE: dict[tuple[str, str, torch.dtype], str | None] = {}


class BitsandbytesHandler(QuantHandler):
    name = "bitsandbytes"
    formats = FORMATS["bitsandbytes"]

    def unavailable(self, spec: QuantSpec, device: torch.device, dtype: str | None = None) -> str | None:
        return missing_package("bitsandbytes", "backend 'bitsandbytes'") or self.probe(
            spec.format, device, getattr(torch, dtype or "float32", torch.float32)
        )

    def probe(self, fmt: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str | None:
        """Quantize and run one small layer of ``fmt`` on ``device`` in ``dtype``; None when it works, else why not."""
        key = (fmt, device.type, dtype)
        if key not in _BNB_PROBE:
            try:
                import bitsandbytes  # noqa: F401

                lin = nn.Linear(128, 64, bias=True, dtype=dtype)
                layer = _bnb_layer(lin, fmt, self.formats[fmt].default_group, device)
                with torch.no_grad():
                    y = layer(torch.randn(2, 128, device=device, dtype=dtype))
                if tuple(y.shape) != (2, 64) or not bool(torch.isfinite(y).all()):
                    raise RuntimeError(f"probe layer returned {tuple(y.shape)} / non-finite values")
                _BNB_PROBE[key] = None
            except Exception as err:  # noqa: BLE001 - any failure means: not usable here, with the reason
                _BNB_PROBE[key] = (
                    f"bitsandbytes {lib_version('bitsandbytes')} cannot run '{fmt}' on {device.type} "
                    f"({str(dtype).removeprefix('torch.')}): "
                    f"{type(err).__name__}: {err}"
                )
        return _BNB_PROBE[key]

    def quantize(self, model: nn.Module, spec: QuantSpec, device: torch.device) -> dict[str, nn.Module]:
        _quiet_bnb_cast_warning()
        targets = linear_targets(model, spec.skip)
        if spec.format == "nf4" and device.type == "cpu":
            # bitsandbytes' CPU NF4 kernel splits every row into blocks: a ragged row fails deep inside it
            g = spec.group_size
            ragged = [(name, lin.in_features) for name, lin in targets if lin.in_features % g]
            if ragged:
                allowed = self.formats["nf4"].group_sizes
                fits = [x for x in allowed if all(lin.in_features % x == 0 for _, lin in targets)]
                raise EngineUnavailable(
                    f"group_size {g}: bitsandbytes nf4 on CPU needs a group size that divides every quantized "
                    f"layer's in_features ({ragged[0][0]} has {ragged[0][1]}); allowed for this model: "
                    f"{join(fits) or 'none'}"
                )
        out = {}
        for name, lin in targets:
            new = _bnb_layer(lin, spec.format, spec.group_size, device)
            set_child(model, name, new)
            out[name] = new
        return out

    def storage_note(self, spec: QuantSpec) -> str:
        return (
            "bitsandbytes: int8 data + fp32 row scales (SCB) for int8; packed uint8 data + quant_state "
            "(absmax, code, nested state) for nf4; measured after one forward, since bitsandbytes "
            "repacks 4-bit weights for its CPU kernel at the first call (absmax becomes bf16)"
        )

    def notes(
        self, spec: QuantSpec, model: nn.Module, device: torch.device, dtype: str, compiled: bool = False
    ) -> list[str]:
        notes = []
        if spec.format == "int8" and dtype != "float16":
            notes.append(f"LLM.int8 casts {dtype} weights (before quantizing) and activations to float16")
        if spec.format == "nf4" and device.type == "cpu":
            layer = next((m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")), None)
            if layer is not None and layer.support_avx512bf16_for_cpu:
                notes.append(
                    "this CPU has AVX512-BF16: bitsandbytes repacks NF4 weights for its CPU kernel (absmax in "
                    "bf16) and runs single-row matmuls with bf16 activations"
                )
        return notes
