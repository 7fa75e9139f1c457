"""The decoding toolkit: greedy loop == the hf baseline, the layer-by-layer forward == the model's own."""

import pytest
import torch

from rooflens.config import ModelSpec
from rooflens.data.prompts import make_prompts
from rooflens.engines.base import TokenClock
from rooflens.engines.decoding import (
    LayerStack,
    decode_n_tokens,
    eos_token_ids,
    forward_layers,
    hooks,
    new_cache,
    prefill,
)
from rooflens.engines.hf import HFEngine, HFOptions
from rooflens.models.loader import load_model

CPU = torch.device("cpu")


def clocked(fn):
    clock = TokenClock(CPU)
    clock.start()
    out = fn(clock)
    clock.stop()
    return out, clock


def greedy(model, prompt, n, clock):
    cache = new_cache(model)
    eos = eos_token_ids(model)
    first = prefill(model, prompt, cache, eos)
    clock.tokens(1)
    return torch.cat([first, decode_n_tokens(model, first, cache, n - 1, eos, clock)], dim=1)


def check_greedy_equals_hf(loaded, source, seeds):
    for seed in seeds:
        prompt = make_prompts(loaded, source, 1, 16, seed)
        ref, _ = clocked(lambda c: HFEngine(HFOptions(), loaded).generate(prompt, 12, c))
        with torch.inference_mode():
            out, clock = clocked(lambda c: greedy(loaded.model, prompt, 12, c))
        assert torch.equal(out, ref), seed
        assert clock.n_tokens == 12


def check_layer_forward(loaded, source):
    model = loaded.model
    stack = LayerStack.of(model)
    prompt = make_prompts(loaded, source, 1, 10, 0)
    n = len(stack.layers)
    with torch.inference_mode():
        ref = model(input_ids=prompt, output_hidden_states=True)
        i, hidden = forward_layers(stack, prompt, new_cache(model), torch.arange(prompt.shape[1]))
        assert i == n - 1
        torch.testing.assert_close(stack.logits(hidden), ref.logits, atol=1e-4, rtol=1e-4)
        for stop in range(n - 1):
            seen = []
            i, hidden = forward_layers(
                stack, prompt, new_cache(model), torch.arange(prompt.shape[1]), lambda j, h: seen.append(j) or j == stop
            )
            assert (i, seen) == (stop, list(range(stop + 1)))
            torch.testing.assert_close(hidden, ref.hidden_states[stop + 1], atol=1e-5, rtol=1e-5)


def test_decode_n_tokens_equals_the_hf_baseline(tiny_llama):
    check_greedy_equals_hf(tiny_llama, "synthetic", range(3))


def test_forward_layers_matches_the_model(tiny_llama):
    check_layer_forward(tiny_llama, "synthetic")


def test_forward_layers_continues_a_cache(tiny_llama):
    """Prefill then one token through the stack gives the model's next-token logits."""
    model = tiny_llama.model
    stack = LayerStack.of(model)
    prompt = make_prompts(tiny_llama, "synthetic", 1, 9, 1)
    with torch.inference_mode():
        ref = model(input_ids=prompt).logits[:, -1]
        cache = new_cache(model)
        forward_layers(stack, prompt[:, :-1], cache, torch.arange(8))
        _, hidden = forward_layers(stack, prompt[:, -1:], cache, torch.tensor([8]))
    torch.testing.assert_close(stack.logits(hidden)[:, -1], ref, atol=1e-4, rtol=1e-4)


def test_hooks_are_removed_even_when_the_body_raises(tiny_llama):
    model = tiny_llama.model
    calls = []
    with pytest.raises(RuntimeError, match="boom"):
        with hooks() as handles:
            handles.append(model.register_forward_hook(lambda *a: calls.append(1)))
            handles.append(model.model.layers[0].register_forward_pre_hook(lambda *a: calls.append(2)))
            raise RuntimeError("boom")
    with torch.inference_mode():
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert calls == []
    assert not model._forward_hooks and not model.model.layers[0]._forward_pre_hooks


def test_an_unsupported_model_is_refused_by_name():
    gpt2 = load_model(ModelSpec(source="shape", id="tiny-gpt2"), CPU, torch.float32, seed=0)
    with pytest.raises(ValueError, match="model type 'gpt2'"):
        LayerStack.of(gpt2.model)


@pytest.mark.slow
def test_toolkit_on_smollm2(smollm2):
    check_greedy_equals_hf(smollm2, "corpus", range(2))
    check_layer_forward(smollm2, "corpus")
