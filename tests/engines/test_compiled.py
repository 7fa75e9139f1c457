"""The compiled decode loop (issue 26): token for token the eager engine's greedy output, compiling only in the
warm-up, and its cost in the record. Compiling takes seconds on a CPU: slow tests (CI runs them)."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from rooflens.config import EngineSpec
from rooflens.data.prompts import make_prompts
from rooflens.engines.base import TokenClock
from rooflens.engines.compiled import (
    CACHE_BUCKET,
    GQA_ENV,
    GqaInPlace,
    cache_length,
    compile_mode,
    inductor_cache,
    own_code,
    static_cache,
    step_calls,
)
from rooflens.engines.decoding import eos_allowed, eos_token_ids
from rooflens.engines.registry import build_engine
from rooflens.kernels.native import native_operator_unavailable

CPU = torch.device("cpu")
pytestmark = pytest.mark.slow


def test_inductor_cache_is_rooflens_s_unless_the_user_chose_one(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path))
    monkeypatch.setattr("rooflens.USER_INDUCTOR_CACHE", None)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/torch/put/its/default")
    assert inductor_cache() == tmp_path / "inductor"  # not the default torch wrote into the environment
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setattr("rooflens.USER_INDUCTOR_CACHE", str(tmp_path / "mine"))
    assert inductor_cache() == tmp_path / "mine"


def _tokens(engine, prompts, n):
    clock = TokenClock(CPU)
    clock.start()
    out = engine.generate(prompts, n, clock)
    clock.stop()
    assert clock.n_tokens == n  # one tick per token
    return out


def test_cache_lengths_are_bucketed_and_modes_resolved_per_device():
    assert cache_length(64, 20) == CACHE_BUCKET
    assert cache_length(CACHE_BUCKET, 1) == 2 * CACHE_BUCKET
    assert compile_mode("reduce-overhead", CPU) is None  # CUDA graphs exist only on a GPU
    assert compile_mode("reduce-overhead", torch.device("cuda")) == "reduce-overhead"
    assert compile_mode("max-autotune", CPU) == "max-autotune"


@pytest.mark.parametrize("batch", [1, 3])
def test_compiled_hf_equals_eager_token_for_token(tiny_llama, batch):
    eager = build_engine(EngineSpec(name="hf"), tiny_llama)
    compiled = build_engine(EngineSpec(name="hf", options={"cache": "static", "compile": True}), tiny_llama)
    prompts = make_prompts(tiny_llama, "synthetic", batch, 12, seed=batch)
    compiled.warm(prompts, 10)
    assert torch.equal(_tokens(compiled, prompts, 10), _tokens(eager, prompts, 10))
    # another prompt length reuses the prefill graph (its length is dynamic) and the same cache bucket
    other = make_prompts(tiny_llama, "synthetic", batch, 17, seed=7)
    assert torch.equal(_tokens(compiled, other, 6), _tokens(eager, other, 6))


def test_compiling_happens_in_warm_and_is_reported(tiny_llama):
    engine = build_engine(EngineSpec(name="hf", options={"cache": "static", "compile": True}), tiny_llama)
    prompts = make_prompts(tiny_llama, "synthetic", 1, 9, seed=1)
    assert engine.stats() == {}  # nothing compiled yet
    engine.warm(prompts, 5)
    first = engine.stats()["compile_time_s"]
    assert first.value > 0 and "batch 1, prompt 9" in first.description
    engine.warm(prompts, 5)  # the same shape: nothing more to compile
    assert engine.stats()["compile_time_s"].value == first.value
    assert engine.stats()["compile_mode"].value == "default"
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs > 0  # the counter does count this engine's graphs
    _tokens(engine, prompts, 5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # a timed run compiles nothing


def test_compiled_engines_with_and_without_the_gemv_share_a_model_and_alternate_without_recompiling(tiny_llama):
    """compile_gemv changes what the graphs call, not the model: two engines on one model, measured in turns."""
    static = {"cache": "static", "compile": True}
    gemv = build_engine(EngineSpec(name="hf", options=static), tiny_llama)
    plain = build_engine(EngineSpec(name="hf", options={**static, "compile_gemv": False}), tiny_llama)
    eager = build_engine(EngineSpec(name="hf"), tiny_llama)
    prompts = make_prompts(tiny_llama, "synthetic", 1, 11, seed=3)
    gemv.warm(prompts, 6)
    plain.warm(prompts, 6)
    if native_operator_unavailable() is None:
        assert gemv.stats()["compile_fp32_linear"].value.startswith("rooflens AVX2 fp32 GEMV")
    assert plain.stats()["compile_fp32_linear"].value == "torch's linear (compile_gemv: false)"
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    want = _tokens(eager, prompts, 6)
    for engine in (gemv, plain, gemv, plain):
        assert torch.equal(_tokens(engine, prompts, 6), want)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # each engine's guards held


def test_compiled_loop_masks_eos_and_lets_it_through_for_task_answers(tiny_llama):
    engine = build_engine(EngineSpec(name="hf", options={"cache": "static", "compile": True}), tiny_llama)
    eos = eos_token_ids(tiny_llama.model)
    assert eos, "the tiny model has an EOS id"
    decoder = engine.decoder()
    assert decoder._eos_bias()[eos].isinf().all()
    with eos_allowed():
        assert not decoder._eos_bias().isinf().any()


def test_compiled_quantized_engines_each_equal_their_eager_self_and_never_run_each_other_s_graphs(tiny_llama):
    """Their decode steps skip dynamo's guards on the modules (the module attributes that tell 2 from 8 bits), so each
    engine's step must be a code object of its own: alternating, each still gives its own eager tokens."""
    kernel = "native"  # the other kernel paths compile too: tests/kernels/test_custom_ops.py
    from rooflens.kernels.native import native_unavailable

    if kernel == "native" and (why := native_unavailable()) is not None:
        pytest.skip(f"the native kernel is unavailable here: {why}")
    prompts = make_prompts(tiny_llama, "synthetic", 1, 20, seed=4)  # 20 rows: the prefill takes the dense path
    pairs = []
    for bits in (2, 8):
        opts = {"backend": "rooflens", "bits": bits, "group_size": 32, "kernel": kernel}
        eager = build_engine(EngineSpec(name="quantized", options=opts), tiny_llama)
        compiled = build_engine(
            EngineSpec(name="quantized", options={**opts, "cache": "static", "compile": True}), tiny_llama
        )
        eager.prepare()
        compiled.prepare()
        compiled.warm(prompts, 8)
        pairs.append((compiled, _tokens(eager, prompts, 8)))
    assert not torch.equal(pairs[0][1], pairs[1][1]), "2 and 8 bits must differ for this test to tell them apart"
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for compiled, want in pairs + pairs:
        assert torch.equal(_tokens(compiled, prompts, 8), want)
        stats = compiled.stats()
        assert stats["compile_time_s"].value > 0
        assert stats["compile_step_calls"].value == (
            "inductor's C++ wrapper; no guards on the model's modules; "
            "GQA keys and values read in place (sdpa's enable_gqa)"
        )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_own_code_gives_a_method_a_code_object_of_its_own():
    class Loop:
        def step(self, x):
            return x + 1

    loop = Loop()
    a, b = own_code(loop.step), own_code(loop.step)
    assert a.__code__ is not b.__code__ and a.__code__ is not Loop.step.__code__
    assert a(1) == b(1) == 2 and a.__self__ is loop
    assert step_calls(None, CPU, False).startswith("inductor's C++ wrapper; dynamo's full guards; GQA keys")
    on_gpu = step_calls("reduce-overhead", torch.device("cuda"), True)
    assert on_gpu.startswith("CUDA graph replays") and on_gpu.endswith("; repeat_kv")


def test_gqa_in_place_hands_the_kv_heads_to_sdpa_as_they_are(tiny_llama):
    """tiny-llama has 4 query heads on 2 KV heads: traced without the switch, Hugging Face copies the KV heads for
    sdpa (repeat_kv); with it, sdpa gets 2-head keys and values and ``enable_gqa=True``."""
    config = tiny_llama.model.config
    ids = torch.tensor([[5]])

    def sdpa_calls(switch):
        seen = []

        def backend(gm, example_inputs):
            for node in gm.graph.nodes:
                if node.target is torch.nn.functional.scaled_dot_product_attention:
                    seen.append((node.kwargs.get("enable_gqa", False), node.args[1].meta["example_value"].shape[1]))
            return gm

        cache = static_cache(config, 1, 8, torch.float32, CPU)
        step = torch.compile(lambda i: tiny_llama.model(input_ids=i, past_key_values=cache).logits, backend=backend)
        with torch.inference_mode(), switch():
            step(ids)
        torch._dynamo.reset()
        return seen

    heads = config.num_hidden_layers
    assert sdpa_calls(GqaInPlace) == [(True, config.num_key_value_heads)] * heads
    assert sdpa_calls(contextlib.nullcontext) == [(False, config.num_attention_heads)] * heads
    assert GQA_ENV not in os.environ


def test_compiled_mixed_precision_equals_its_eager_self_rung_for_rung(tiny_llama):
    opts = {"ladder": [8, 4], "group_size": 32, "scheduler": "static", "switch_steps": [3], "train_if_missing": False}
    eager = build_engine(EngineSpec(name="mixed_precision", options=opts), tiny_llama)
    compiled = build_engine(EngineSpec(name="mixed_precision", options={**opts, "compile": True}), tiny_llama)
    prompts = make_prompts(tiny_llama, "synthetic", 1, 12, seed=5)
    compiled.warm(prompts, 8)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert torch.equal(_tokens(compiled, prompts, 8), _tokens(eager, prompts, 8))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # the switch to 4-bit compiled in warm
    assert compiled._runs[-1].bits == eager._runs[-1].bits == [8, 8, 8, 8, 4, 4, 4, 4]
    shapes = compiled.stats()["compile_time_s"].description
    assert "prefill at 8-bit" in shapes and "decode at 4-bit" in shapes
