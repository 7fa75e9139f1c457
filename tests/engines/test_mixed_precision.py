"""PMPD mixed precision: multi-precision layers, schedulers, the engine against independent references."""

import pytest
import torch
from torch import nn

from factories import clocked_generate
from rooflens.config import EngineSpec
from rooflens.data.prompts import make_prompts
from rooflens.data.quality import rouge_l
from rooflens.engines.base import EngineUnavailable
from rooflens.engines.mixed_precision.schedulers import (
    ConfidenceScheduler,
    KVCacheClassifier,
    LearnedScheduler,
    StaticScheduler,
)
from rooflens.engines.mixed_precision.training import TuneSettings
from rooflens.engines.options.mixed_precision import QUALITY_BUDGET_DEFAULT, MixedPrecisionOptions
from rooflens.engines.registry import build_engine, validate_engine_options
from rooflens.kernels.linear import LowBitLinear
from rooflens.kernels.multiprecision import MultiPrecisionLinear, check_ladder

TINY = {"train_prompts": 4, "train_prompt_len": 6, "train_gen_len": 6, "classifier_epochs": 3, "group_size": 32}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "cache"))


def _generate(engine, prompts, n=8):
    return clocked_generate(engine, prompts, n)


# ---------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_is_the_lcs_f1():
    assert rouge_l([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert rouge_l([1, 2, 3], [4, 5, 6]) == 0.0
    assert rouge_l([], [1]) == 0.0
    # LCS of [1, 2, 3, 4, 5] and [1, 3, 5, 7] is [1, 3, 5]: P = 3/5, R = 3/4
    assert rouge_l([1, 2, 3, 4, 5], [1, 3, 5, 7]) == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert rouge_l([9, 1, 2, 3], [1, 2, 3, 8]) == pytest.approx(0.75)  # a shift keeps most of the credit


# ---------------------------------------------------------------------------- multi-precision layers


def test_ladder_must_decrease_through_supported_bits():
    assert check_ladder([8, 4, 2]) == (8, 4, 2)
    for bad, says in (
        ([4, 8], "strictly decrease"),
        ([8, 8], "strictly decrease"),
        ([5], "bits"),
        ([], "at least one"),
    ):
        with pytest.raises(ValueError, match=says):
            check_ladder(bad)


@torch.no_grad()
def test_each_rung_is_its_own_quantization_and_switching_is_an_attribute():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    layer = MultiPrecisionLinear(lin, [8, 4, 2], group_size=32, kernel="torch", keep_original=True)
    x = torch.randn(3, 64)
    for b in (8, 4, 2):
        layer.set_bits(b)
        ref = LowBitLinear.from_linear(lin, bits=b, group_size=32, kernel="torch")
        torch.testing.assert_close(layer(x), ref(x))
        assert layer.storage_bytes()[b] == ref.storage_bytes
    layer.set_bits(None)
    torch.testing.assert_close(layer(x), lin(x))
    errors = []
    for b in (8, 4, 2):
        layer.set_bits(b)
        errors.append(float((layer(x) - lin(x)).abs().mean()))
    assert errors[0] < errors[1] < errors[2]  # fewer bits, larger error
    with pytest.raises(ValueError, match="not a rung"):
        layer.set_bits(3)


# ---------------------------------------------------------------------------- schedulers


def test_static_scheduler_steps_down_at_its_steps_and_never_back():
    s = StaticScheduler([8, 4, 2], [2, 5])
    logits = torch.zeros(10)
    seq, b = [], 8
    for step in range(8):
        b = s.schedule(step, None, logits, b)
        seq.append(b)
    assert seq == [8, 8, 4, 4, 4, 2, 2, 2]
    assert StaticScheduler([8, 4], [None]).schedule(100, None, logits, 8) == 8


def test_confidence_scheduler_waits_for_a_confident_step():
    s = ConfidenceScheduler([8, 4], k=1.0, warmup=3, window=1)
    s.start(None, 10)
    flat, peaked = torch.zeros(5), torch.tensor([10.0, 0, 0, 0, 0])
    varied = [torch.tensor([float(i), 0, 0, 0, 0]) for i in (0, 1, 0.5)]
    b = 8
    for lg in varied:
        b = s.schedule(0, None, lg, b)
    assert b == 8  # warm-up
    assert s.schedule(3, None, flat, b) == 8  # not above mean + std
    assert s.schedule(4, None, peaked, 8) == 4


def test_learned_scheduler_maps_classes_to_switch_points(tiny_llama):
    clf = KVCacheClassifier(kv_heads=2, head_dim=4)
    with torch.no_grad():
        clf.mlp[-1].bias.copy_(torch.tensor([0.0, 10.0, 0.0, 0.0]))  # always class 1: switch at T/3
        clf.mlp[-1].weight.zero_()

    class Layer:
        keys, values = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)

        def get_seq_length(self) -> int:
            return 5

    class Cache:
        layers = [Layer()]

    s = LearnedScheduler([8, 4], [clf])
    s.start(Cache(), 30)
    assert s.choices == [1] and s.switch_steps == [10]


# ---------------------------------------------------------------------------- the engine


def test_one_rung_equals_the_quantized_engine_token_for_token(tiny_llama):
    """Our loop over MultiPrecisionLinear at one rung = HF generate over the quantized engine's LowBitLinear."""
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=3)
    quant = build_engine(
        EngineSpec(name="quantized", options={"backend": "rooflens", "bits": 4, "group_size": 32, "lm_head": True}),
        tiny_llama,
    )
    quant.prepare()
    mixed = build_engine(EngineSpec(name="mixed_precision", options={**TINY, "ladder": [4]}), tiny_llama)
    mixed.prepare()
    assert torch.equal(_generate(mixed, prompts), _generate(quant, prompts))
    assert mixed.stats()["mean_decode_bits"].value == 4


def test_switch_at_step_zero_is_uniform_low_bit_decode(tiny_llama):
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=1)
    a = build_engine(
        EngineSpec(name="mixed_precision", options={**TINY, "ladder": [8, 2], "switch_steps": [0]}), tiny_llama
    )
    b = build_engine(EngineSpec(name="mixed_precision", options={**TINY, "ladder": [2], "prefill_bits": 8}), tiny_llama)
    for e in (a, b):
        e.prepare()
    assert torch.equal(_generate(a, prompts), _generate(b, prompts))
    s = {k: v.value for k, v in a.stats().items()}
    assert s["mean_decode_bits"] == 2 and s["switch_steps"] == [0]


def test_stats_count_tokens_per_rung(tiny_llama):
    e = build_engine(
        EngineSpec(name="mixed_precision", options={**TINY, "ladder": [8, 4, 2], "switch_steps": [2, 5]}), tiny_llama
    )
    e.prepare()
    _generate(e, make_prompts(tiny_llama, "synthetic", 1, 8, seed=1), n=10)
    s = {k: v.value for k, v in e.stats().items()}
    assert s["decode_tokens_per_bits"] == str({"8": 2, "4": 3, "2": 4})
    assert s["mean_decode_bits"] == pytest.approx((2 * 8 + 3 * 4 + 4 * 2) / 9)
    assert s["switch_steps"] == [2, 5]


def test_prefill_and_decode_roofline_use_their_own_bits(tiny_llama):
    from rooflens.roofline.analytic import ModelShape, Precision, decode_cost, prefill_cost
    from rooflens.roofline.position import roofline_position

    e = build_engine(
        EngineSpec(name="mixed_precision", options={**TINY, "ladder": [8, 2], "switch_steps": [1]}), tiny_llama
    )
    e.prepare()
    _generate(e, make_prompts(tiny_llama, "synthetic", 1, 8, seed=1), n=9)
    hints = e.roofline_hints()
    assert hints.prefill_weight_bits > hints.decode_weight_bits
    cfg = tiny_llama.model.config
    r = roofline_position(
        cfg, "float32", batch=1, prompt_len=8, gen_len=9, ttft_s=0.01, tpot_s=0.001, hints=hints, ceilings=[]
    )
    assert r.prefill.weight_bits == pytest.approx(hints.prefill_weight_bits)
    assert r.decode.weight_bits == pytest.approx(hints.decode_weight_bits)
    shape = ModelShape.from_config(cfg)
    pre = prefill_cost(shape, batch=1, prompt_len=8, precision=Precision(hints.prefill_weight_bits, 32, 32))
    dec = decode_cost(shape, batch=1, context_len=8 + 9 // 2, precision=Precision(hints.decode_weight_bits, 32, 32))
    assert r.prefill.weight_bytes.value == pytest.approx(pre.weight_bytes)
    assert r.decode.weight_bytes.value == pytest.approx(dec.weight_bytes)


def test_tuning_runs_once_and_is_cached(tiny_llama):
    opts = {**TINY, "ladder": [8, 2]}
    first = build_engine(EngineSpec(name="mixed_precision", options=opts), tiny_llama)
    first.prepare()
    assert "tuned now" in first.tuning_note
    again = build_engine(EngineSpec(name="mixed_precision", options={**opts, "scheduler": "learned"}), tiny_llama)
    again.prepare()
    assert again.tuning_note.startswith("cache ")  # static and learned share one tuning
    _generate(again, make_prompts(tiny_llama, "synthetic", 1, 8, seed=1))
    assert again.stats()["learned_choices"].value[0] in (0, 1, 2, 3)


def test_tuning_settings_come_from_the_options_train_fields_only():
    """The options hold the defaults (quality_budget's included); the tuning's cache key reads ``train_fields``."""
    base = MixedPrecisionOptions(ladder=[8, 4])
    assert TuneSettings.from_options(base).quality_budget == QUALITY_BUDGET_DEFAULT
    assert TuneSettings.from_options(base).prefill_bits == 8
    changed = {"ladder": [8, 2], "group_size": 32, "symmetric": False, "lm_head": False, "prefill_bits": "original"}
    changed |= {"quality_budget": 0.1, "train_prompts": 5, "train_prompt_len": 9, "train_gen_len": 7}
    changed |= {"classifier_epochs": 3, "seed": 2, "quantizer": "hqq"}
    assert set(changed) == set(MixedPrecisionOptions.train_fields)
    for name, value in changed.items():
        other = MixedPrecisionOptions(**{"ladder": [8, 4], name: value})
        assert TuneSettings.from_options(other) != TuneSettings.from_options(base), name
    for name, value in {"kernel": "torch", "train_if_missing": False, "scheduler": "learned"}.items():
        other = MixedPrecisionOptions(**{"ladder": [8, 4], name: value})
        assert TuneSettings.from_options(other) == TuneSettings.from_options(base), name


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "options, says",
    [
        ({"ladder": [4, 8]}, "options.ladder: ladder [4, 8]: bits must strictly decrease"),
        ({"ladder": [6]}, "options.ladder:"),
        (
            {"scheduler": "confidence", "switch_steps": [3]},
            "switch_steps applies to scheduler 'static', not 'confidence'",
        ),
        ({"confidence_k": 2.0}, "confidence_k applies to scheduler 'confidence', not 'static'"),
        ({"ladder": [8, 4], "prefill_bits": 4}, "prefill_bits 4: allowed 8, 4, 3, 2 at or above the top rung (8)"),
        ({"ladder": [8, 4], "switch_steps": [1, 2]}, "switch_steps needs 1 value(s)"),
        ({"ladder": [8], "scheduler": "learned"}, "a one-rung ladder never switches"),
        ({"scheduler": "magic"}, "options.scheduler: Input should be 'static', 'confidence' or 'learned'"),
    ],
)
def test_bad_options_name_the_field(options, says):
    problems = validate_engine_options(EngineSpec(name="mixed_precision", options=options))
    assert any(says in p for p in problems), problems


def test_learned_without_tuning_says_how_to_get_one(tiny_llama):
    e = build_engine(
        EngineSpec(
            name="mixed_precision",
            options={**TINY, "ladder": [8, 4], "scheduler": "learned", "train_if_missing": False},
        ),
        tiny_llama,
    )
    with pytest.raises(
        EngineUnavailable, match="options.scheduler: 'learned' needs a tuning .*rooflens train mixed-precision"
    ):
        e.prepare()
