"""The shipped model configs in src/rooflens/models/configs build with transformers.

Each JSON is a Hugging Face ``config.json``-style dict plus a ``_rooflens`` metadata key,
which must be popped before the dict is handed to ``AutoConfig.for_model``.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from factories import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "src" / "rooflens" / "models" / "configs"

# Parameter counts of the published checkpoints (unique parameters, tied weights once).
KNOWN_PARAMS = {
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "qwen2.5-7b": 7_615_616_512,
    "smollm2-135m": 134_515_008,
    "gpt2": 124_439_808,
}
TINY = ["tiny-llama", "tiny-gpt2"]
REQUIRED = sorted([*KNOWN_PARAMS, *TINY])
ALL_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _load(name: str) -> tuple[dict, dict]:
    """Return (hf_config_dict, rooflens_metadata) for a shipped config."""
    with open(CONFIG_DIR / f"{name}.json", encoding="utf-8") as f:
        d = json.load(f)
    meta = d.pop("_rooflens")
    return d, meta


def _build_config(name: str):
    d, _ = _load(name)
    return AutoConfig.for_model(**d)


def test_required_configs_present():
    missing = [n for n in REQUIRED if not (CONFIG_DIR / f"{n}.json").is_file()]
    assert not missing, f"missing shipped configs: {missing}"


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_builds(name):
    d, meta = _load(name)
    assert "model_type" in d and d.get("architectures"), name
    assert set(meta) >= {"display_name", "hf_id", "source"}, meta
    assert "_rooflens" not in d
    cfg = AutoConfig.for_model(**d)
    assert cfg.model_type == d["model_type"]
    assert not hasattr(cfg, "_rooflens")


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_builds_on_meta_device(name):
    cfg = _build_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert type(model).__name__ in cfg.architectures
    n = sum(p.numel() for p in model.parameters())
    assert n > 0
    if name in KNOWN_PARAMS:
        expected = KNOWN_PARAMS[name]
        assert abs(n - expected) / expected < 0.005, f"{name}: {n:,} params, expected {expected:,}"


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_on_cpu(name):
    torch.manual_seed(0)
    cfg = _build_config(name)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    assert all(p.device.type == "cpu" for p in model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (1, 8))
    with torch.no_grad():
        out = model(input_ids=ids)
    assert out.logits.shape == (1, 8, cfg.vocab_size)
    assert torch.isfinite(out.logits).all()


def test_tiny_llama_shape():
    cfg = _build_config("tiny-llama")
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == (512, 64, 128)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 4, 2)
    assert cfg.max_position_embeddings == 1024 and cfg.tie_word_embeddings is False


def test_tiny_gpt2_shape():
    cfg = _build_config("tiny-gpt2")
    assert (cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_positions) == (512, 64, 2, 4, 1024)


def test_smollm2_tied_embeddings():
    cfg = _build_config("smollm2-135m")
    assert cfg.tie_word_embeddings is True
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert model.lm_head.weight is model.get_input_embeddings().weight
