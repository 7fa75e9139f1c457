"""``compile: true`` for the speculative engine's own loop (issue 26): token for token the eager loop's (and so the
hf baseline's) greedy output with the same acceptance counters, compiling only in ``warm``, and a rewound static
cache whose stale slots change nothing. Compiling takes seconds on a CPU: slow tests (CI runs them). Both engines
verify at width 4, so the target's graphs are compiled once for the file (dynamo keeps them across engines)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from rooflens.config import EngineSpec
from rooflens.data.prompts import make_prompts
from rooflens.engines.base import TokenClock
from rooflens.engines.compiled import CompiledForward
from rooflens.engines.hf import HFEngine
from rooflens.engines.options.hf import HFOptions
from rooflens.engines.options.speculative import SpeculativeOptions
from rooflens.engines.registry import validate_engine_options
from rooflens.engines.speculative import SpeculativeEngine
from rooflens.engines.speculative.compiled import CompiledTarget, VerifyCount

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
N_NEW = 20
LOOKUP = {"proposer": "prompt_lookup", "gamma": 3}  # verify width gamma + 1 = 4
DRAFT = {"draft": "self:1", "gamma": 2, "adaptive_gamma": True, "gamma_max": 3}  # width gamma_max + 1 = 4
COUNTERS = (
    "accepted_tokens",
    "drafted_tokens",
    "accepted_length_hist",
    "target_passes",
    "verify_passes",
    "draft_passes",
    "gamma_mean",
    "generated_tokens",
)


@pytest.fixture(scope="module")
def exact_rig1(tiny_llama):
    """Layers >= 1 of a copy of the tiny model write nothing to the residual stream: its first layer (self:1)
    predicts exactly what it does, so every draft is accepted (and adaptive gamma grows)."""
    model = copy.deepcopy(tiny_llama.model)
    for layer in model.model.layers[1:]:
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
    return dataclasses.replace(tiny_llama, model=model)


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _run(engine, prompt, n):
    clock = TokenClock(CPU)
    clock.start()
    out = engine.generate(prompt, n, clock)
    clock.stop()
    assert clock.n_tokens == n
    return out, [k for _, k in clock.events]


def _run_compiled(engine, prompt, n):
    """``warm``, then a generation that must compile nothing."""
    engine.warm(prompt, n)
    graphs = _graphs()
    out = _run(engine, prompt, n)
    assert _graphs() == graphs, "a timed generation compiled a graph"
    return out


def _spec(model, **options) -> SpeculativeEngine:
    engine = SpeculativeEngine(SpeculativeOptions(**options), model)
    engine.prepare()
    return engine


def _counters(engine) -> dict:
    stats = engine.stats()
    return {k: stats[k].value for k in COUNTERS}


def _compiled_equals_eager(model, options, prompts) -> SpeculativeEngine:
    """The compiled engine's tokens, emissions and counters equal the eager loop's; its tokens the hf baseline's."""
    compiled, eager = _spec(model, compile=True, **options), _spec(model, **options)
    hf = HFEngine(HFOptions(), model)
    for length, seed in prompts:
        prompt = make_prompts(model, "synthetic", 1, length, seed=seed)
        out, emitted = _run_compiled(compiled, prompt, N_NEW)
        eager_out, eager_emitted = _run(eager, prompt, N_NEW)
        assert torch.equal(out, eager_out) and emitted == eager_emitted, (options, length)
        assert torch.equal(out, _run(hf, prompt, N_NEW)[0]), (options, length)
    assert _counters(compiled) == _counters(eager)
    return compiled


@pytest.mark.slow
def test_compiled_prompt_lookup_equals_eager_and_reports_compiling(tiny_llama):
    engine = _compiled_equals_eager(tiny_llama, LOOKUP, ((12, 1), (17, 2)))
    stats = engine.stats()
    assert stats["compile_time_s"].value > 0 and stats["compile_mode"].value == "default"
    assert "prompt 12, cache 128, verify width 4" in stats["compile_time_s"].description
    # a pass is 1 token (nothing drafted) or padded to the width: the hints say what the passes processed
    count = engine._compiled.count
    assert count.passes > 0
    assert engine.roofline_hints().tokens_verified_per_pass == pytest.approx(count.tokens / count.passes)
    assert 1.0 <= count.tokens / count.passes <= 4.0


@pytest.mark.slow
def test_compiled_draft_model_with_adaptive_gamma_equals_eager(tiny_llama, exact_rig1):
    _compiled_equals_eager(tiny_llama, DRAFT, ((12, 1), (17, 2)))
    engine = _compiled_equals_eager(exact_rig1, DRAFT, ((12, 3),))
    stats = engine.stats()
    # every draft accepted: the draft catches up on two tokens each round, gamma grows from 2 to 3
    assert stats["acceptance_rate"].value == 1.0 and stats["gamma_mean"].value > 2


@pytest.mark.slow
def test_stale_slots_of_a_rewound_static_cache_change_nothing(tiny_llama):
    """A short draft's padded rows write keys and values after the committed tokens; the roll-back only rewinds
    the write position. Filling every slot after it with garbage leaves the next verify's logits as they were:
    the causal mask (built from that position) hides them."""
    model = tiny_llama.model
    target = CompiledTarget(CompiledForward(model, CPU, "default"), width=4, count=VerifyCount())
    prompt = make_prompts(tiny_llama, "synthetic", 1, 12, seed=4)
    kept, block = torch.tensor([7]), torch.tensor([5, 6])  # a 2-token block: 2 padded rows

    def next_verify(garbage: float | None) -> torch.Tensor:
        target.start(12, N_NEW)
        target.prefill(prompt)
        target.verify(torch.cat([kept, torch.tensor([8, 9, 10])]))  # slots 12..15
        target.rollback(13)  # keep the first token of that block
        if garbage is not None:
            with torch.inference_mode():
                for layer in target.forward.cache.layers:
                    layer.keys[:, :, 13:] = garbage * torch.randn_like(layer.keys[:, :, 13:])
                    layer.values[:, :, 13:] = garbage
        return target.verify(block).clone()

    stale = next_verify(None)
    assert torch.equal(next_verify(1e4), stale)
    with torch.inference_mode():
        eager = model(torch.cat([prompt, kept.view(1, 1), block.view(1, -1)], dim=1)).logits[0, -2:]
    assert torch.allclose(stale, eager, atol=1e-5)


@pytest.mark.slow
def test_compiled_sampling_runs_to_exact_length(tiny_llama):
    engine = _spec(tiny_llama, compile=True, do_sample=True, temperature=0.8, seed=5, **LOOKUP)
    prompt = make_prompts(tiny_llama, "synthetic", 1, 12, seed=5)
    out, _ = _run_compiled(engine, prompt, N_NEW)
    assert out.shape == (1, N_NEW)
    stats = engine.stats()
    assert stats["generated_tokens"].value == stats["target_passes"].value + stats["accepted_tokens"].value


def test_compile_is_refused_for_hf_assisted_with_the_reason():
    def problems(**options):
        return validate_engine_options(EngineSpec(name="speculative", options=options))

    assert problems(draft="self:2", compile=True) == []
    assert problems(proposer="prompt_lookup", compile=True, compile_mode="max-autotune") == []
    message = problems(proposer="hf_assisted", hf_mode="prompt_lookup", compile=True)[0]
    assert "compile: true" in message and "draft_model or prompt_lookup" in message and "hf_assisted" in message
