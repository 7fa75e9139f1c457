"""torchao: ``torchao.quantization.quantize_(model, Config)`` on the selected ``nn.Linear`` layers.

* ``int8_weight_only`` — ``Int8WeightOnlyConfig()``: int8 per-output-channel weights.
* ``int8_dynamic`` — ``Int8DynamicActivationInt8WeightConfig()``: int8 weights, activations quantized to int8
  per token at run time (W8A8).
* ``int4_weight_only`` — ``Int4WeightOnlyConfig(group_size, int4_packing_format="tile_packed_to_4d")``: the
  tinygemm int4 kernel. **CUDA and bfloat16 only**: torchao 0.18 has no CPU int4 packing (the ``opaque`` CPU
  format is gone, ``plain`` needs the ``mslk`` package), so on CPU the cell is unavailable with that reason.
* ``intx_weight_only`` — ``IntxWeightOnlyConfig(weight_dtype=torch.int<bits>, PerGroup(group_size))``:
  **accuracy emulation**: the low-bit codes are stored unpacked, one per int8, so memory and bytes moved are
  those of int8 (+ scales and zero points).

``set_inductor_config=False`` everywhere: torchao's default would change global inductor settings and
``torch.set_float32_matmul_precision`` for every later engine of the sweep.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rooflens.engines.options.quantized import FORMATS, QuantSpec
from rooflens.engines.quant.base import (
    QuantHandler,
    lib_version,
    linear_targets,
    missing_package,
)


def torchao_config(spec: QuantSpec) -> Any:
    """The torchao config object of ``spec``."""
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType

    if spec.format == "int8_weight_only":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if spec.format == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    if spec.format == "int4_weight_only":
        return Int4WeightOnlyConfig(
            group_size=spec.group_size, int4_packing_format="tile_packed_to_4d", set_inductor_config=False
        )
    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{spec.bits}"),
        granularity=PerGroup(spec.group_size),
        mapping_type=MappingType.SYMMETRIC if spec.symmetric else MappingType.ASYMMETRIC,
    )


def _is_torchao_weight(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and hasattr(type(t), "__tensor_flatten__")


class TorchaoHandler(QuantHandler):
    name = "torchao"
    formats = FORMATS["torchao"]

    def unavailable(self, spec: QuantSpec, device: torch.device, dtype: str | None = None) -> str | None:
        missing = missing_package("torchao", "backend 'torchao'")
        if missing is not None:
            return missing
        if spec.format == "int4_weight_only":
            if device.type != "cuda":
                return (
                    f"torchao int4_weight_only needs CUDA (tinygemm kernel, int4_packing_format "
                    f"'tile_packed_to_4d'); torchao {lib_version('torchao')} has no CPU int4 packing ('opaque' "
                    f"was removed, 'plain' needs the mslk package), not {device.type}"
                )
            if dtype is not None and dtype != "bfloat16":
                return f"torchao int4_weight_only (tinygemm) needs dtype bfloat16, the model is {dtype}"
        try:
            import torchao.quantization  # noqa: F401
        except Exception as err:  # noqa: BLE001
            return f"torchao {lib_version('torchao')} does not import with torch {torch.__version__}: {err}"
        return None

    def quantize(self, model: nn.Module, spec: QuantSpec, device: torch.device) -> dict[str, nn.Module]:
        from torchao.quantization import quantize_

        targets = {name for name, _ in linear_targets(model, spec.skip)}
        quantize_(model, torchao_config(spec), filter_fn=lambda mod, fqn: isinstance(mod, nn.Linear) and fqn in targets)
        return {
            name: mod
            for name, mod in model.named_modules()
            if name in targets and _is_torchao_weight(getattr(mod, "weight", None))
        }

    def storage_note(self, spec: QuantSpec) -> str:
        return (
            "exact: bytes of the inner tensors of torchao's tensor subclasses (__tensor_flatten__: qdata, "
            "scale, zero_point, ...)"
        )

    def notes(
        self, spec: QuantSpec, model: nn.Module, device: torch.device, dtype: str, compiled: bool = False
    ) -> list[str]:
        if device.type != "cpu" or compiled:
            return []
        if spec.format == "int8_dynamic":
            return ["activations are quantized per token at every call, then aten::_int_mm (int8 GEMM)"]
        return [
            "eager torchao weight-only on CPU dequantizes the weight on every call, then runs a dense matmul "
            "(torch.profiler: the dequantization takes most of each call)"
        ]
