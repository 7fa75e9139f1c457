"""draft: eagle:<folder>: an EAGLE-1 checkpoint (random weights, built here in its on-disk format) as the
early_exit engine's candidate source, checked against a plain torch computation of EAGLE-1's head."""

import json
import math

import pytest
import torch

from factories import clocked_generate
from rooflens.config import EngineSpec
from rooflens.data.prompts import make_prompts
from rooflens.engines.base import EngineUnavailable
from rooflens.engines.decoding import LayerStack, forward_layers, new_cache
from rooflens.engines.early_exit.eagle import load_eagle
from rooflens.engines.options.early_exit import parse_draft
from rooflens.engines.registry import build_engine

TINY = dict(
    train_prompts=3,
    train_prompt_len=6,
    train_gen_len=4,
    predictor_epochs=5,
    predictor_hidden=8,
    draft_epochs=1,
    draft_vocab=64,  # the pre-check's trimmed vocabulary (the tiny model has 512 tokens)
)
LAYER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "cache"))


def eagle_state(cfg, bias: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random EAGLE-1 weights for a target config: fc [h, 2h] (+ bias), one layer without input_layernorm."""
    g = torch.Generator().manual_seed(seed)
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    nq, nkv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes = {
        "fc.weight": (h, 2 * h),
        "layers.0.self_attn.q_proj.weight": (nq, h),
        "layers.0.self_attn.k_proj.weight": (nkv, h),
        "layers.0.self_attn.v_proj.weight": (nkv, h),
        "layers.0.self_attn.o_proj.weight": (h, nq),
        "layers.0.mlp.gate_proj.weight": (i, h),
        "layers.0.mlp.up_proj.weight": (i, h),
        "layers.0.mlp.down_proj.weight": (h, i),
    }
    state = {k: torch.randn(*s, generator=g) / math.sqrt(s[-1]) for k, s in shapes.items()}
    state["layers.0.post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    if bias:
        state["fc.bias"] = 0.1 * torch.randn(h, generator=g)
    return state


def write_checkpoint(folder, model, state=None, **kw):
    """An EAGLE-1 folder for ``model``: config.json (its Llama config, one layer) and pytorch_model.bin."""
    cfg = model.model.config.to_dict()
    cfg["num_hidden_layers"] = 1
    cfg.pop("layer_types", None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, default=str))
    torch.save(state if state is not None else eagle_state(cfg, **kw), folder / "pytorch_model.bin")
    return folder


def reference_logits(state, cfg, lm_head, emb, prev, positions):
    """EAGLE-1's head written out in plain torch for one sequence [T, h] (causal, no cache)."""
    h, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d, eps = cfg.get("head_dim") or h // nh, cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    w = {k.removeprefix("layers.0."): v for k, v in state.items()}
    x = torch.cat([emb, prev], -1) @ w["fc.weight"].T + w.get("fc.bias", 0)
    T = x.shape[0]
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = positions.float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(t):  # t [heads, T, d]
        rot = torch.cat([-t[..., d // 2 :], t[..., : d // 2]], -1)
        return t * cos + rot * sin

    q = rope((x @ w["self_attn.q_proj.weight"].T).view(T, nh, d).transpose(0, 1))
    k = rope((x @ w["self_attn.k_proj.weight"].T).view(T, nkv, d).transpose(0, 1)).repeat_interleave(nh // nkv, 0)
    v = (x @ w["self_attn.v_proj.weight"].T).view(T, nkv, d).transpose(0, 1).repeat_interleave(nh // nkv, 0)
    scores = q @ k.transpose(1, 2) / math.sqrt(d) + torch.full((T, T), float("-inf")).triu(1)
    att = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, nh * d)
    x = x + att @ w["self_attn.o_proj.weight"].T  # no input norm before attention (EAGLE-1's layer 0)
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w["post_attention_layernorm.weight"]
    mlp = (torch.nn.functional.silu(y @ w["mlp.gate_proj.weight"].T) * (y @ w["mlp.up_proj.weight"].T)) @ w[
        "mlp.down_proj.weight"
    ].T
    return (x + mlp) @ lm_head.T  # the target's LM head, no final norm


@torch.no_grad()
def test_loaded_head_equals_a_plain_torch_eagle_computation(tiny_llama, tmp_path):
    folder = write_checkpoint(tmp_path / "eagle", tiny_llama)
    cfg = json.loads((folder / "config.json").read_text())
    state = torch.load(folder / "pytorch_model.bin")
    stack = LayerStack.of(tiny_llama.model)
    head = load_eagle(stack, str(folder))
    T, h = 7, cfg["hidden_size"]
    g = torch.Generator().manual_seed(1)
    emb, prev = torch.randn(T, h, generator=g), torch.randn(T, h, generator=g)
    pos = torch.arange(T)
    want = reference_logits(state, cfg, stack.lm_head.weight.float(), emb, prev, pos)
    torch.testing.assert_close(head(emb[None], prev[None], pos[None])[0], want, rtol=1e-4, atol=1e-4)
    cache = head.new_cache()  # one step at a time through its own KV cache: the same logits
    steps = [head(emb[None, t : t + 1], prev[None, t : t + 1], pos[None, t : t + 1], cache)[0, 0] for t in range(T)]
    torch.testing.assert_close(torch.stack(steps), want, rtol=1e-4, atol=1e-4)


def test_eagle_draft_proposes_its_top_k_and_the_engine_runs_end_to_end(tiny_llama, tmp_path):
    folder = write_checkpoint(tmp_path / "eagle", tiny_llama, bias=False)
    assert parse_draft(f"eagle:{folder}") == ("eagle", None)
    options = {"draft": f"eagle:{folder}", "k": 3, "threshold": 0.0, **TINY}
    engine = build_engine(EngineSpec(name="early_exit", options=options), tiny_llama)
    engine.prepare()
    prompt = make_prompts(tiny_llama, "synthetic", 1, 6, seed=2)
    with torch.inference_mode():
        gen = engine._prefill(prompt, 4)
        cands = engine._propose(gen, gen.last_token)
    # the reference: the head over the whole prompt + first token, paired with the full-depth normed states
    stack = LayerStack.of(tiny_llama.model)
    with torch.no_grad():
        _, hid = forward_layers(stack, prompt, new_cache(tiny_llama.model), torch.arange(6))
        seq = torch.cat([prompt[0], gen.tokens[0, 6:7]])
        cfg = json.loads((folder / "config.json").read_text())
        state = torch.load(folder / "pytorch_model.bin")
        want = reference_logits(
            state, cfg, stack.lm_head.weight, stack.embed_tokens(seq[1:]), stack.norm(hid)[0], torch.arange(6)
        )
    assert cands.ids.numel() == 3 and cands.ids.tolist() == want[-1].topk(3).indices.tolist()
    out = clocked_generate(engine, prompt, 5)
    assert out.shape == (1, 5)
    stats = engine.stats()
    assert stats["draft"].value == f"eagle:{folder}" and stats["decode_steps"].value == 4
    assert not any(d.setting == "draft" for d in engine.fidelity().deviations)  # the reference's own draft


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no folder", "no such folder"),
        ("no weights", "no weights (pytorch_model.bin or model.safetensors)"),
        ("missing key", "missing key 'layers.0.mlp.up_proj.weight'"),
        ("fc shape", "'fc.weight' has shape [8, 8], the target needs [{h}, {h2}]"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_one_clear_line(tiny_llama, tmp_path, damage, message):
    cfg = tiny_llama.model.config.to_dict()
    state = eagle_state(cfg)
    folder = tmp_path / "eagle"
    if damage == "missing key":
        del state["layers.0.mlp.up_proj.weight"]
    if damage == "fc shape":
        state["fc.weight"] = torch.zeros(8, 8)
    if damage != "no folder":
        write_checkpoint(folder, tiny_llama, state)
    if damage == "no weights":
        (folder / "pytorch_model.bin").unlink()
    engine = build_engine(EngineSpec(name="early_exit", options={"draft": f"eagle:{folder}", **TINY}), tiny_llama)
    h = cfg["hidden_size"]
    with pytest.raises(EngineUnavailable) as err:
        engine.prepare()
    assert message.format(h=h, h2=2 * h) in str(err.value) and "\n" not in str(err.value)


def test_a_hub_id_is_read_only_from_the_local_cache(tmp_path, monkeypatch):
    from rooflens.engines.early_exit.eagle import resolve_folder

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="not in the local Hugging Face cache \\(rooflens never downloads it"):
        resolve_folder("yuhuili/EAGLE-llama2-chat-7B")
