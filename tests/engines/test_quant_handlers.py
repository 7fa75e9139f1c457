"""The quantization handlers on their own: formats, availability, quantizing from a plain QuantSpec."""

import copy

import pytest
import torch

from rooflens.engines.options.quantized import QuantizedOptions, QuantSpec
from rooflens.engines.quant import HANDLERS, get_handler, model_weight_bytes
from rooflens.engines.quantized import QuantizedEngine
from rooflens.kernels import LowBitLinear

CPU = torch.device("cpu")


def _logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits.float()


def test_every_handler_reports_its_formats():
    assert list(HANDLERS) == ["torchao", "bitsandbytes", "rooflens"]
    for name in HANDLERS:
        handler = get_handler(name)
        assert handler.name == name and handler.formats
        for spec in handler.formats.values():
            assert spec.bits
            assert spec.default_group in spec.group_sizes if spec.group_sizes else spec.default_group is None
    with pytest.raises(KeyError, match="unknown quantization backend 'gptq'"):
        get_handler("gptq")


def test_unavailable_says_why_or_returns_none():
    int4 = QuantSpec(backend="torchao", format="int4_weight_only", bits=4, group_size=128)
    assert "needs" in get_handler("torchao").unavailable(int4, CPU, "float32")  # CUDA, or the package itself
    groupwise = QuantSpec(backend="rooflens", format="groupwise", bits=4, group_size=32, symmetric=True, kernel="torch")
    assert get_handler("rooflens").unavailable(groupwise, CPU, "float32") is None
    for kernel in ("native", "int4pack"):
        on_cpu = QuantSpec(backend="rooflens", format="groupwise", bits=4, group_size=32, symmetric=True, kernel=kernel)
        why = get_handler("rooflens").unavailable(on_cpu, torch.device("cuda"), "float32")
        assert why == f"kernel: {kernel} runs on the CPU, not cuda; use kernel: auto"


@torch.no_grad()
def test_rooflens_handler_quantizes_from_a_spec_alone(tiny_llama):
    model = copy.deepcopy(tiny_llama.model)
    spec = QuantSpec(
        backend="rooflens", format="groupwise", bits=8, group_size=32, symmetric=True, kernel="auto", skip=("lm_head",)
    )
    handler = get_handler("rooflens")
    layers = handler.quantize(model, spec, CPU)
    assert len(layers) == 28 and all(isinstance(model.get_submodule(n), LowBitLinear) for n in layers)
    assert handler.report.replaced_names == list(layers) and "lm_head" in handler.report.skipped
    assert isinstance(model.lm_head, torch.nn.Linear)
    ids = torch.arange(1, 17).unsqueeze(0)
    ref, out = _logits(tiny_llama.model, ids), _logits(model, ids)
    assert float((out - ref).norm() / ref.norm()) < 0.05  # 8-bit: see test_quantized.REL_ERR_8BIT


def test_engine_and_handler_agree_on_storage(tiny_llama):
    engine = QuantizedEngine(QuantizedOptions(bits=4, group_size=32), tiny_llama)
    engine.prepare()
    model = copy.deepcopy(tiny_llama.model)
    handler = get_handler("rooflens")
    with torch.no_grad():
        layers = handler.quantize(model, engine.spec, CPU)
    total, quantized = model_weight_bytes(model, layers)
    assert (total, quantized) == (engine.measured.total_bytes, engine.measured.quantized_bytes)
    assert quantized == handler.report.total_storage_bytes
