"""Engine options are validated once: one typed, frozen object per distinct engine entry."""

import pytest

from rooflens.config import EngineSpec
from rooflens.engines.options import EngineOptionsError
from rooflens.engines.options.quantized import QuantizedOptions, QuantSpec
from rooflens.engines.registry import engine_options, validate_engine_options


def test_the_same_entry_gives_the_same_options_object():
    first = engine_options(EngineSpec(name="quantized", options={"bits": 4, "group_size": 64}))
    again = engine_options(EngineSpec(name="quantized", label="other", options={"group_size": 64, "bits": 4}))
    assert isinstance(first, QuantizedOptions) and again is first
    assert engine_options(EngineSpec(name="quantized", options={"bits": 8})) is not first
    assert validate_engine_options(EngineSpec(name="quantized", options={"bits": 4, "group_size": 64})) == []


def test_invalid_options_list_every_problem():
    spec = EngineSpec(name="quantized", options={"cache": "cold", "colour": "red"})
    with pytest.raises(EngineOptionsError) as info:
        engine_options(spec)
    assert info.value.problems == validate_engine_options(spec)
    assert len(info.value.problems) == 2 and isinstance(info.value, ValueError)
    with pytest.raises(KeyError):
        engine_options(EngineSpec(name="no-such-engine"))


def test_the_quantization_spec_is_resolved_torch_free():
    spec = QuantizedOptions(bits=3).spec()
    assert spec == QuantSpec(
        "rooflens", "groupwise", 3, group_size=128, symmetric=True, kernel="auto", skip=("lm_head",)
    )
