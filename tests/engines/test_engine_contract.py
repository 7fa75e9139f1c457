"""The contract every registered engine keeps, run over each engine's ``examples`` (new engines get it for free).

Exactly N new tokens per row even when EOS comes first; the clock counts N; lossless engines equal the hf
baseline token for token; the shared model's weights and hook tables are as they were; roofline hints in range.
"""

import pytest
import torch

from rooflens.config import EngineSpec
from rooflens.data.prompts import make_prompts
from rooflens.engines.base import EngineUnavailable, TokenClock
from rooflens.engines.hf import HFEngine
from rooflens.engines.registry import build_engine, registered_engines

CPU = torch.device("cpu")
N_NEW = 6

CASES = [
    pytest.param(cls, opts, id=f"{name}-{i}")
    for name, cls in registered_engines().items()
    for i, opts in enumerate(cls.examples)
]


def test_every_engine_declares_examples():
    missing = [name for name, cls in registered_engines().items() if not cls.examples]
    assert not missing, f"engines without examples for the contract test: {missing}"


def _hooks(model: torch.nn.Module) -> dict[str, int]:
    tables = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_forward_hooks_with_kwargs")
    return {f"{name}.{t}": len(getattr(m, t, {})) for name, m in model.named_modules() for t in tables}


def _generate(engine, prompts: torch.Tensor) -> tuple[torch.Tensor, TokenClock]:
    clock = TokenClock(CPU)
    clock.start()
    tokens = engine.generate(prompts, N_NEW, clock)
    clock.stop()
    return tokens, clock


@pytest.mark.parametrize("cls, options", CASES)
def test_engine_contract(cls, options, tiny_llama):
    check_contract(cls, options, tiny_llama)


@torch.no_grad()
def check_contract(cls, options, tiny_llama) -> None:
    model = tiny_llama.model
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hooks(model)
    batch = 2 if cls.supports_batch else 1
    prompts = make_prompts(tiny_llama, "synthetic", batch, 8, seed=3)
    baseline = build_engine(EngineSpec(name="hf"), tiny_llama)
    first = int(_generate(baseline, prompts)[0][0, 0])

    old = (model.config.eos_token_id, model.generation_config.eos_token_id)
    model.config.eos_token_id = model.generation_config.eos_token_id = first  # the first greedy token is EOS
    try:
        expected, _ = _generate(baseline, prompts)  # the baseline under the same EOS: it is masked until N
        engine = cls(cls.Options.model_validate(options), tiny_llama)
        try:
            engine.prepare()
        except EngineUnavailable as err:
            if not cls.requires_packages:  # built on torch alone: every engine must run on the tiny model
                raise
            # on an optional library: missing here, or a file the tiny model has not (llamacpp's GGUF; its own
            # test file runs this contract on a GGUF written from the tiny model)
            pytest.skip(f"{cls.name} cannot run on the tiny model here: {err}")
        tokens, clock = _generate(engine, prompts)
    finally:
        model.config.eos_token_id, model.generation_config.eos_token_id = old
    assert tokens.shape == (batch, N_NEW), f"returned {tuple(tokens.shape)}: EOS must not stop a run early"
    assert clock.n_tokens == N_NEW
    times = [t for t, _ in clock.events]
    assert clock.t_start <= times[0] and times == sorted(times) and times[-1] <= clock.t_stop
    if cls.lossless:
        assert torch.equal(tokens, expected), f"{cls.name} {options}: not token-for-token equal to hf"

    after = model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights), "the shared model's weights changed"
    assert _hooks(model) == hooks, "hooks were left on the shared model"
    h = engine.roofline_hints()
    layers = model.config.num_hidden_layers
    # up to the torch reference path's: the stored format + the dequantized fp32 weight written and read back
    assert h.weight_bits is None or 0 < h.weight_bits <= 3 * 32
    assert h.layers_executed is None or 0 < h.layers_executed <= layers
    assert h.tokens_per_pass is None or h.tokens_per_pass >= 1
    assert h.tokens_verified_per_pass is None or h.tokens_verified_per_pass >= (h.tokens_per_pass or 1)


class LeavesAHook(HFEngine):
    name = "leaves-a-hook"

    def prepare(self):
        self.model.model.lm_head.register_forward_hook(lambda *a: None)


class StopsAtEos(HFEngine):
    name = "stops-at-eos"

    def generate(self, input_ids, max_new_tokens, clock):
        out = self.module.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False)[:, input_ids.shape[1] :]
        for _ in range(out.shape[1]):
            clock.tokens(1)
        return out


@pytest.mark.parametrize(
    "broken, message", [(LeavesAHook, "hooks were left"), (StopsAtEos, "EOS must not stop|not token-for-token equal")]
)
def test_the_contract_catches_a_broken_engine(broken, message, tiny_llama):
    hooks = {id(m): dict(m._forward_hooks) for m in tiny_llama.model.modules()}
    try:
        with pytest.raises(AssertionError, match=message):
            check_contract(broken, {}, tiny_llama)
    finally:  # leave the shared fixture as it was
        for m in tiny_llama.model.modules():
            m._forward_hooks.clear()
            m._forward_hooks.update(hooks[id(m)])
