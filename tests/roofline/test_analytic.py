"""The analytic roofline model against independent references: the real modules' parameters,
``torch.utils.flop_counter`` on real forwards, the real KV cache, and hand arithmetic."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM

from rooflens.models.catalog import shipped_config_names
from rooflens.models.loader import shipped_config
from rooflens.roofline.analytic import (
    ModelShape,
    Precision,
    bits_per_weight,
    decode_cost,
    kv_cache_bytes,
    prefill_cost,
    project,
    weight_storage_bytes,
)
from rooflens.roofline.hardware import get_profile

SMALL = {"vocab_size": 256, "num_hidden_layers": 2, "hidden_size": 64, "max_position_embeddings": 256}
CUSTOM = {
    # GQA 8 heads / 2 KV heads, with attention (q/k/v/o) and MLP biases
    "gqa-llama": dict(
        model_type="llama",
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=96,
        attention_bias=True,
        mlp_bias=True,
        **SMALL,
    ),
    # qwen2: q/k/v bias (no o bias), MQA, tied embeddings
    "qwen2-bias": dict(
        model_type="qwen2",
        num_attention_heads=4,
        num_key_value_heads=1,
        intermediate_size=128,
        tie_word_embeddings=True,
        **SMALL,
    ),
    # mistral: head_dim != hidden / heads, sliding window shorter than the test prompt
    "mistral-window": dict(
        model_type="mistral",
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=128,
        sliding_window=8,
        **SMALL,
    ),
    "gpt2-inner": dict(
        model_type="gpt2",
        n_embd=48,
        n_head=3,
        n_layer=2,
        n_inner=80,
        n_positions=64,
        vocab_size=100,
        bos_token_id=0,
        eos_token_id=0,
    ),
}
REAL = ["tiny-llama", "tiny-gpt2", *CUSTOM]
B, L = 2, 16


def _config(name: str):
    if name in CUSTOM:
        kwargs = dict(CUSTOM[name])
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    return shipped_config(name)[0]


@functools.cache
def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = _config(name)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()


ATTENTION = ("attn_scores", "attn_values", "attention")  # eager, or fused (the shapes here: SDPA)


def _counted(fn) -> tuple[int, int]:
    """(all matmul FLOPs, batched-matmul FLOPs) of ``fn()``: eager attention is the only ``bmm``,
    the linear layers flatten to ``mm``/``addmm``, so the split checks attention and linears apart."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    bmm = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "bmm" in str(op))
    return counter.get_total_flops(), bmm


def _check_flops(cost, counted: tuple[int, int]) -> None:
    total, bmm = counted
    attention = sum(op.matmul_flops * cost.count(op) for op in cost.ops if op.name in ATTENTION)
    assert cost.matmul_flops == pytest.approx(total, rel=0.01)
    assert attention == pytest.approx(bmm, rel=0.01)
    assert cost.matmul_flops - attention == pytest.approx(total - bmm, rel=0.01)


def _prompt(name: str, length: int = L) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, int(_config(name).vocab_size), (B, length), generator=gen)


# --------------------------------------------------------------------------- 1. parameters


@pytest.mark.parametrize("name", REAL)
def test_param_count_and_storage_match_real_module(name):
    shape = ModelShape.from_config(_config(name))
    params = list(_model(name).parameters())  # tied tensors yielded once
    assert shape.param_count() == sum(p.numel() for p in params)
    assert weight_storage_bytes(shape, Precision(weight_bits=32)) == sum(p.numel() * p.element_size() for p in params)


@pytest.mark.parametrize("name", shipped_config_names())
def test_param_count_matches_every_shipped_config(name):
    cfg = shipped_config(name)[0]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())
    shape = ModelShape.from_config(cfg)
    assert shape.param_count() == n
    assert weight_storage_bytes(shape, Precision(weight_bits=16)) == 2 * n


def test_shape_reads_family_features():
    qwen = ModelShape.from_config(shipped_config("qwen2.5-7b")[0])
    assert (qwen.family, qwen.qkv_bias, qwen.o_bias, qwen.num_kv_heads) == ("llama", True, False, 4)
    assert qwen.sliding_window is None  # use_sliding_window: false
    smol = ModelShape.from_config(shipped_config("smollm2-135m")[0])
    assert smol.tied_embeddings and smol.num_kv_heads == 3
    mistral = ModelShape.from_config(shipped_config("mistral-7b")[0])
    assert mistral.sliding_window == 4096
    gpt2 = ModelShape.from_config(shipped_config("gpt2")[0])
    assert (gpt2.family, gpt2.tied_embeddings, gpt2.intermediate, gpt2.max_positions) == ("gpt2", True, 3072, 1024)


def test_unsupported_model_type_names_the_supported_ones():
    cfg = AutoConfig.for_model("bert", hidden_size=64, num_attention_heads=4, num_hidden_layers=2)
    with pytest.raises(ValueError, match="llama.*mistral.*qwen2.*gpt2"):
        ModelShape.from_config(cfg)


# --------------------------------------------------------------------------- 2. FLOPs vs flop counter


@pytest.mark.parametrize("name", REAL)
def test_prefill_matmul_flops_match_flop_counter(name):
    model, ids = _model(name), _prompt(name)
    shape = ModelShape.from_config(_config(name))
    _check_flops(prefill_cost(shape, batch=B, prompt_len=L, all_logits=True), _counted(lambda: model(ids)))
    # default: last-token logits only, what generate() asks for
    counted = _counted(lambda: model(ids, logits_to_keep=1))
    _check_flops(prefill_cost(shape, batch=B, prompt_len=L), counted)


@pytest.mark.parametrize("new_tokens", [1, 3])
@pytest.mark.parametrize("name", REAL)
def test_decode_matmul_flops_match_flop_counter(name, new_tokens):
    model = _model(name)
    ids = _prompt(name, L + new_tokens)
    with torch.no_grad():
        cache = model(ids[:, :L], use_cache=True).past_key_values
    counted = _counted(lambda: model(ids[:, L:], past_key_values=cache, use_cache=True))
    shape = ModelShape.from_config(_config(name))
    _check_flops(decode_cost(shape, batch=B, context_len=L, new_tokens=new_tokens), counted)


def test_matmul_flops_are_the_matmul_ops_only():
    shape = ModelShape.from_config(_config("qwen2-bias"))
    cost = prefill_cost(shape, batch=B, prompt_len=L)
    matmuls = {op.name for op in cost.ops if op.is_matmul}
    assert matmuls == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "attention",  # fused (SDPA): one op
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    }
    # a bias add is a FLOP, but not a matmul FLOP
    q = cost.op("q_proj")
    assert q.flops - q.matmul_flops == B * L * shape.q_dim
    assert cost.flops > cost.matmul_flops


# --------------------------------------------------------------------------- 3. KV cache


@pytest.mark.parametrize("name", REAL)
def test_kv_cache_bytes_match_real_cache(name):
    model, ids = _model(name), _prompt(name)
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    real = sum(
        layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        for layer in cache.layers
    )
    shape = ModelShape.from_config(_config(name))
    assert kv_cache_bytes(shape, batch=B, seq_len=L, precision=Precision(kv_bits=32)) == real


def test_decode_kv_traffic_reads_cache_and_writes_new_tokens():
    shape = ModelShape.from_config(_config("tiny-llama"))
    p = Precision(kv_bits=8)
    cost = decode_cost(shape, batch=3, context_len=100, precision=p)
    read = kv_cache_bytes(shape, batch=3, seq_len=101, precision=p)  # the cache incl. the new token
    written = kv_cache_bytes(shape, batch=3, seq_len=1, precision=p)
    assert cost.kv_bytes == pytest.approx(read + written)


# --------------------------------------------------------------------------- 4. a real model on a datasheet


@pytest.mark.parametrize("profile", ["a100-80g-sxm", "h100-sxm"])
def test_llama2_7b_decode_is_weight_streaming(profile):
    hw = get_profile(profile)
    bw, peak = hw.bandwidth_si(), hw.peak_flops_si("fp16")
    shape = ModelShape.from_config(shipped_config("llama-2-7b")[0])
    n = shape.param_count()
    proj = project(shape, batch=1, prompt_len=128, gen_len=128, precision=Precision(), bandwidth=bw, peak_flops=peak)
    dec = proj.decode
    # every weight once, except the embedding table: one row looked up instead of 32000
    assert dec.weight_bytes == 2 * (n - shape.vocab * shape.hidden + shape.hidden)
    assert dec.weight_bytes == pytest.approx(2 * n, rel=0.02)
    assert proj.decode_tokens_per_s == pytest.approx(bw / dec.bytes, rel=0.03)
    assert dec.bound(bw, peak) == "memory"
    assert all(row["bound"] == "memory" for row in dec.op_rows(bw, peak))
    long = prefill_cost(shape, batch=1, prompt_len=2048)
    assert long.bound(bw, peak) == "compute"
    assert long.flops == pytest.approx(2 * n * 2048, rel=0.25)  # ~2 FLOPs per parameter per token + attention


def test_projection_dict_is_json_and_consistent():
    hw = get_profile("a100-80g-sxm")
    bw, peak = hw.bandwidth_si(), hw.peak_flops_si("bf16")
    shape = ModelShape.from_config(shipped_config("smollm2-135m")[0])
    proj = project(shape, batch=4, prompt_len=64, gen_len=32, precision=Precision(), bandwidth=bw, peak_flops=peak)
    assert proj.decode.context == 64 + 16 + 1  # mean decode context + the new token
    data = json.loads(json.dumps(proj.to_dict()))
    assert data["ridge"] == pytest.approx(peak / bw)
    for phase, cost in (("prefill", proj.prefill), ("decode", proj.decode)):
        d = data[phase]
        assert d["totals"]["flops"] == pytest.approx(cost.flops)
        assert sum(row["time_s"] for row in d["ops"]) == pytest.approx(d["time_s"])
        assert d["bound"] in ("memory", "compute")
    assert data["decode"]["tokens_per_s"] == pytest.approx(4 / proj.decode_step_time_s)
    assert data["prefill"]["tokens_per_s"] == pytest.approx(4 * 64 / proj.prefill_time_s)


def test_time_is_sum_of_op_rooflines_and_scales_with_layers():
    shape = ModelShape.from_config(shipped_config("llama-2-7b")[0])
    bw, peak = 2e12, 300e12
    full = decode_cost(shape, batch=8, context_len=512)
    half = decode_cost(shape, batch=8, context_len=512, layers_executed=16)
    layer_ops = [op for op in full.ops if op.scope == "layer"]
    model_ops = [op for op in full.ops if op.scope == "model"]
    expected = 32 * sum(max(o.flops / peak, o.bytes / bw) for o in layer_ops) + sum(
        max(o.flops / peak, o.bytes / bw) for o in model_ops
    )
    assert full.time_at_roofline(bw, peak) == pytest.approx(expected)
    layer_flops = sum(o.flops for o in layer_ops)
    assert full.flops - half.flops == pytest.approx(16 * layer_flops)
    with pytest.raises(ValueError):
        decode_cost(shape, batch=1, context_len=1, layers_executed=33)


def test_decode_attention_hand_arithmetic():
    shape = replace(ModelShape.from_config(shipped_config("llama-3-8b")[0]), attention="eager")  # 32 heads, 8 KV, d=128
    cost = decode_cost(shape, batch=2, context_len=999, precision=Precision(kv_bits=8))
    scores = cost.op("attn_scores")
    assert scores.flops == 2 * 2 * 32 * 1 * 1000 * 128
    assert scores.kv_bytes == 2 * 1000 * 8 * 128 * 1  # K of 1000 positions, 8 KV heads, 1 byte
    assert cost.op("k_proj").kv_bytes == 2 * 8 * 128  # the new token's K goes to the cache
    assert cost.op("lm_head").weight_bytes == 128256 * 4096 * 2


def test_gpt2_decode_weight_bytes_hand_arithmetic():
    shape = ModelShape.from_config(shipped_config("gpt2")[0])  # tied LM head, 1024 learned positions
    cost = decode_cost(shape, batch=4, context_len=10, new_tokens=2)
    h, n = shape.hidden, shape.param_count()
    # all weights once; the token table: 4·2 rows looked up, yet read in full by the tied LM head;
    # the position table: the 2 rows of the new positions (shared by the batch)
    expected = n - shape.max_positions * h + 2 * h + 4 * 2 * h
    assert cost.weight_bytes == 2 * expected
    assert cost.op("c_attn").kv_bytes == 4 * 2 * 2 * h * 2  # new K and V of 8 tokens, fp16


def test_sliding_window_caps_decode_context():
    shape = ModelShape.from_config(shipped_config("mistral-7b")[0])
    far = decode_cost(shape, batch=1, context_len=100_000)
    assert far.context == 4096
    assert kv_cache_bytes(shape, batch=1, seq_len=100_000, precision=Precision()) == 2 * 32 * 4095 * 1024 * 2


# --------------------------------------------------------------------------- 5. quantized weights


def test_bits_per_weight():
    assert bits_per_weight(4, 32) == 4.5
    assert bits_per_weight(4, 32, zero_bits=16) == 5.0
    assert bits_per_weight(4, 128) == 4.125
    assert bits_per_weight(8, None) == 8.0
    assert bits_per_weight(3, 64, scale_bits=8, zero_bits=8) == 3.25
    with pytest.raises(ValueError):
        bits_per_weight(4, 0)


def test_int4_linear_weight_bytes_scale_with_bits_per_weight():
    shape = ModelShape.from_config(shipped_config("llama-2-7b")[0])
    fp16 = decode_cost(shape, batch=1, context_len=128)
    int4 = decode_cost(shape, batch=1, context_len=128, precision=Precision(weight_bits=bits_per_weight(4, 32)))
    lin16 = sum(op.weight_bytes for op in fp16.ops if op.is_matmul)
    lin4 = sum(op.weight_bytes for op in int4.ops if op.is_matmul)
    assert lin4 / lin16 == pytest.approx(4.5 / 16)
    assert int4.kv_bytes == fp16.kv_bytes and int4.flops == fp16.flops
    assert weight_storage_bytes(shape, Precision(weight_bits=4.5)) == pytest.approx(shape.param_count() * 4.5 / 8)


@pytest.mark.parametrize("name", shipped_config_names())
def test_plain_json_config_gives_the_same_shape_and_costs_as_transformers(name):
    """`rooflens roofline` reads shipped configs as plain JSON (no transformers import); the analytic model's
    fallbacks for fields a file leaves out must equal transformers' class defaults."""
    from rooflens.models.catalog import config_view, shipped_config_data

    plain = ModelShape.from_config(config_view(shipped_config_data(name)[0]))
    reference = ModelShape.from_config(shipped_config(name)[0])
    assert plain == reference
    assert decode_cost(plain, batch=2, context_len=700) == decode_cost(reference, batch=2, context_len=700)
