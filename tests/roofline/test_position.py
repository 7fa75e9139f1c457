"""Roofline positions under engine hints (quantized bits, speculative passes, early exit)."""

import pytest

from rooflens.engines.base import RooflineHints
from rooflens.models.loader import shipped_config
from rooflens.roofline.analytic import ModelShape, Precision, decode_cost
from rooflens.roofline.hardware import get_profile
from rooflens.roofline.position import ceilings_for, roofline_position

CONFIG = shipped_config("llama-2-7b")[0]
SHAPE = ModelShape.from_config(CONFIG)


def position(hints, dtype="bfloat16"):
    return roofline_position(
        CONFIG,
        dtype,
        batch=1,
        prompt_len=100,
        gen_len=20,
        ttft_s=0.1,
        tpot_s=0.01,
        hints=hints,
        ceilings=ceilings_for(get_profile("h100-sxm"), dtype),
    )


def test_plain_decode_step():
    r = position(RooflineHints())
    d = decode_cost(SHAPE, batch=1, context_len=110, precision=Precision(16, 16, 16))
    assert r.decode.flops.value == pytest.approx(d.flops) and r.decode.bytes.value == pytest.approx(d.bytes)
    assert r.decode.achieved_bandwidth.value == pytest.approx(d.bytes / 0.01)
    assert [c.source for c in r.ceilings] == ["datasheet"] and r.decode.bound["datasheet"] == "memory"


def test_speculative_pass_verifies_more_than_it_keeps():
    r = position(RooflineHints(tokens_per_pass=2.5, tokens_verified_per_pass=5.0))
    d = decode_cost(SHAPE, batch=1, context_len=110, precision=Precision(16, 16, 16), new_tokens=5)
    assert r.decode.flops.value == pytest.approx(d.flops / 2.5)
    assert r.decode.weight_bytes.value == pytest.approx(d.weight_bytes / 2.5)  # weights read once per pass
    assert r.tokens_per_pass == 2.5


def test_quantized_bits_and_early_exit():
    q = position(RooflineHints(weight_bits=4.5))
    assert q.decode.weight_bytes.value == pytest.approx(
        decode_cost(SHAPE, batch=1, context_len=110, precision=Precision(4.5, 16, 16)).weight_bytes
    )
    e = position(RooflineHints(layers_executed=16))
    full = position(RooflineHints())
    assert e.decode.flops.value < 0.6 * full.decode.flops.value and e.layers_executed == 16


def test_unsupported_architecture_gives_a_reason():
    from transformers import BertConfig

    r = roofline_position(
        BertConfig(),
        "float32",
        batch=1,
        prompt_len=4,
        gen_len=2,
        ttft_s=1,
        tpot_s=1,
        hints=RooflineHints(),
        ceilings=[],
    )
    assert r.prefill is None and r.decode is None and "llama" in r.reason
