"""The early-exit oracle: full-depth tokens as hf's, and the earliest correct exit layer per token."""

import copy

import pytest
import torch

from rooflens.data.prompts import make_prompts
from rooflens.engines.base import TokenClock
from rooflens.engines.early_exit.oracle import oracle_exits
from rooflens.engines.hf import HFEngine, HFOptions

N_NEW = 8


def hf_tokens(loaded, prompts):
    clock = TokenClock(torch.device("cpu"))
    clock.start()
    return HFEngine(HFOptions(), loaded).generate(prompts, N_NEW, clock)[0]


def test_the_oracle_decodes_the_models_own_greedy_tokens(tiny_llama):
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=2)
    oracle = oracle_exits(tiny_llama.model, prompts, N_NEW)
    assert torch.equal(oracle.tokens, hf_tokens(tiny_llama, prompts))
    assert len(oracle.layers_needed) == N_NEW and all(1 <= n <= 4 for n in oracle.layers_needed)
    assert sum(oracle.histogram().values()) == N_NEW and oracle.num_layers == 4


@torch.no_grad()
def test_layers_that_change_nothing_are_never_needed(tiny_llama):
    """With the residual branches of layers 2 and 3 zeroed, the prediction after layer 1 is final."""
    rig = copy.deepcopy(tiny_llama.model)
    for layer in rig.model.layers[2:]:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=2)
    oracle = oracle_exits(rig, prompts, N_NEW)
    assert max(oracle.layers_needed) <= 2 and oracle.layer_fraction <= 0.5


def test_one_sequence_only(tiny_llama):
    with pytest.raises(ValueError, match=r"\[1, P\]"):
        oracle_exits(tiny_llama.model, make_prompts(tiny_llama, "synthetic", 2, 8, seed=2), 2)


@pytest.mark.slow
def test_smollm2_oracle_matches_its_greedy_decode(smollm2):
    prompts = make_prompts(smollm2, "corpus", 1, 32, seed=1)
    oracle = oracle_exits(smollm2.model, prompts, N_NEW)
    assert torch.equal(oracle.tokens, hf_tokens(smollm2, prompts))
    assert 1 <= oracle.mean_layers <= 30
