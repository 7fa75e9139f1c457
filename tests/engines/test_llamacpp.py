"""The llamacpp engine: the engine contract on a GGUF written from the tiny model, agreement with hf on the shipped
SmolLM2 GGUF, the roofline's weight bytes against a hand sum, requantization, the record, and the reason it gives
where llama-cpp-python is missing. Skipped where the optional extra is not installed (CI installs it)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from test_engine_contract import check_contract  # noqa: E402

from rooflens.config import EngineSpec  # noqa: E402
from rooflens.data.prompts import make_prompts  # noqa: E402
from rooflens.engines import base  # noqa: E402
from rooflens.engines.base import EngineUnavailable, TokenClock  # noqa: E402
from rooflens.engines.llamacpp import LlamaCppEngine  # noqa: E402
from rooflens.engines.llamacpp.gguf_file import read_gguf  # noqa: E402
from rooflens.engines.registry import build_engine  # noqa: E402
from rooflens.models.loader import builtin_gguf  # noqa: E402
from rooflens.roofline.analytic import decode_weight_elements  # noqa: E402

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- a GGUF of the tiny model


def _rope_pairs_interleaved(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q/k projection reordered from Hugging Face's rotate-half pairing (j, j + d/2 within a head) to the
    adjacent pairs (2j, 2j + 1) llama.cpp's llama rope rotates."""
    out, cols = w.shape
    return w.reshape(heads, 2, out // heads // 2, cols).transpose(1, 2).reshape(out, cols)


def _vocabulary(n: int) -> tuple[list[str], list[int]]:
    """A SentencePiece-style vocabulary llama.cpp can load: unk, bos, eos, the 256 byte tokens, then plain ones."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # unknown, control, control, byte
    rest = n - len(tokens)
    return tokens + [f"t{i}" for i in range(rest)], types + [1] * rest


def write_tiny_gguf(model: torch.nn.Module, path) -> None:
    """``model`` (a Llama) as an F32 GGUF file in llama.cpp's tensor names and layout."""
    import gguf

    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // heads)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens, types = _vocabulary(cfg.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    names = {"self_attn.o_proj": "attn_output", "self_attn.v_proj": "attn_v", "mlp.gate_proj": "ffn_gate"}
    names |= {"mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm"}
    names |= {"post_attention_layernorm": "ffn_norm"}

    def add(name: str, t: torch.Tensor) -> None:
        w.add_tensor(name, t.detach().float().contiguous().numpy())

    add("token_embd.weight", model.model.embed_tokens.weight)
    add("output_norm.weight", model.model.norm.weight)
    add("output.weight", model.lm_head.weight)
    for i, layer in enumerate(model.model.layers):
        add(f"blk.{i}.attn_q.weight", _rope_pairs_interleaved(layer.self_attn.q_proj.weight, heads))
        add(f"blk.{i}.attn_k.weight", _rope_pairs_interleaved(layer.self_attn.k_proj.weight, kv_heads))
        for hf_name, gguf_name in names.items():
            add(f"blk.{i}.{gguf_name}.weight", layer.get_submodule(hf_name).weight)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf"
    write_tiny_gguf(tiny_llama.model, path)
    return path


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Requantized files go to this test's folder, not the user's cache."""
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "cache"))


def _engine(model, **options) -> LlamaCppEngine:
    engine = build_engine(EngineSpec(name="llamacpp", options=options), model)
    engine.prepare()
    return engine


def _run(engine, prompts: torch.Tensor, n: int) -> tuple[torch.Tensor, TokenClock]:
    clock = TokenClock(CPU)
    clock.start()
    tokens = engine.generate(prompts, n, clock)
    clock.stop()
    return tokens, clock


# ---------------------------------------------------------------------------- the contract and the clock


def test_contract_on_a_gguf_of_the_tiny_model(tiny_llama, tiny_gguf):
    """Exactly N tokens per run when the first greedy token is EOS (masked), N clock ticks, weights untouched."""
    check_contract(LlamaCppEngine, {"gguf": str(tiny_gguf)}, tiny_llama)


def test_exactly_n_tokens_one_tick_each_and_the_kv_cache_is_reset(tiny_llama, tiny_gguf):
    engine = _engine(tiny_llama, gguf=str(tiny_gguf))
    a, b = (make_prompts(tiny_llama, "synthetic", 1, 12, seed=s) for s in (1, 2))
    first, clock = _run(engine, a, 9)
    assert first.shape == (1, 9) and clock.n_tokens == 9 and len(clock.events) == 9
    _run(engine, b, 5)  # another prompt in between: a stale cache would shift the next run
    again, _ = _run(engine, a, 9)
    assert torch.equal(first, again)
    assert engine.load.n_threads == torch.get_num_threads()


def test_greedy_f32_gguf_of_the_tiny_model_matches_hf(tiny_llama, tiny_gguf):
    """The same fp32 weights: llama.cpp's greedy tokens are hf's (its f16 KV cache and summation order are the only
    differences, small against the random model's logit gaps on these prompts)."""
    engine = _engine(tiny_llama, gguf=str(tiny_gguf))
    hf = build_engine(EngineSpec(name="hf"), tiny_llama)
    for seed in range(3):
        prompts = make_prompts(tiny_llama, "synthetic", 1, 16, seed=seed)
        ours, _ = _run(engine, prompts, 12)
        theirs, _ = _run(hf, prompts, 12)
        assert torch.equal(ours, theirs), f"seed {seed}: {ours.tolist()} vs hf {theirs.tolist()}"


# ---------------------------------------------------------------------------- the shipped SmolLM2 GGUF


SEEDS, N_NEW = (0, 1, 2), 32


@contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's CPU threads, which llama.cpp's engine takes too, at ``n`` meanwhile."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """SmolLM2 at one thread: llama.cpp's and torch's threads spin at every barrier, and on a shared 2-core machine
    two of them wait out each other's time slices (here 100-800 ms a token instead of 30 for llama.cpp; 94 s instead
    of 7 for hf's three generations below). The tokens do not depend on it."""
    with threads(1):
        yield


@pytest.fixture(scope="module")
def hf_tokens(smollm2):
    """The hf baseline's greedy tokens on three corpus prompts of 48 tokens."""
    hf = build_engine(EngineSpec(name="hf"), smollm2)
    prompts = [make_prompts(smollm2, "corpus", 1, 48, seed=s) for s in SEEDS]
    with threads(1):
        return [(p, _run(hf, p, N_NEW)[0]) for p in prompts]


def _common_prefixes(engine, hf_tokens) -> list[int]:
    out = []
    for prompts, theirs in hf_tokens:
        ours, clock = _run(engine, prompts, N_NEW)
        assert ours.shape == (1, N_NEW) and clock.n_tokens == N_NEW
        same = (ours == theirs)[0].tolist()
        out.append(same.index(False) if False in same else N_NEW)
    return out


@pytest.mark.slow
def test_smollm2_gguf_agrees_with_hf_until_a_near_tie(smollm2, hf_tokens, one_thread):
    """llama.cpp computes on the file's Q4_1 blocks, its activations quantized to 8 bits (Q8_1) for the dot products;
    hf on the same weights dequantized to fp32, activations in fp32. Greedy tokens agree until a near-tie flips one,
    then the texts part. Measured here on six corpus prompts, 32 tokens: common prefixes 14, 32, 3, 4, 12, 3 (the
    first three below); the f32 requantization, the very weights hf runs, agrees on all 32 of all six (next test),
    so the quantized dot products make the difference, not the f16 KV cache both runs share."""
    engine = _engine(smollm2)
    prefixes = _common_prefixes(engine, hf_tokens)
    assert min(prefixes) >= 3 and sum(prefixes) >= 24, f"common prefixes with hf: {prefixes}"
    stats = engine.stats()
    assert stats["file_type"].value == "MOSTLY_Q4_1"
    assert stats["tensor_types"].value == "Q4_1: 210, F32: 61, Q8_0: 1"
    assert stats["library"].value == f"llama-cpp-python {llama_cpp.__version__}"
    assert stats["system_info"].value and "requantized_from" not in stats
    assert stats["n_threads"].value == 1 and stats["n_ctx"].value >= 48 + N_NEW


@pytest.mark.slow
def test_smollm2_requantized_to_f32_is_hf_token_for_token(smollm2, hf_tokens, one_thread):
    """Q4_1 dequantized by llama.cpp's quantizer is the fp32 model rooflens dequantized with gguf (the same block
    arithmetic), and with fp32 weights llama.cpp multiplies in fp32 as hf does: the same greedy tokens."""
    engine = _engine(smollm2, ftype="f32")
    assert engine.gguf.type_counts == {"F32": 272}
    assert _common_prefixes(engine, hf_tokens) == [N_NEW] * len(SEEDS)


def test_smollm2_read_bytes_are_a_hand_sum_over_its_tensors():
    """30 layers of Q4_1 projections (20 bytes per 32 weights) and fp32 norms, the final norm, and the Q8_0 token
    embedding (34 bytes per 32) read whole as the tied output head plus one row for the lookup."""
    h, ffn, kv, layers, vocab = 576, 1536, 192, 30, 49152
    projections = h * h * 2 + h * kv * 2 + h * ffn * 3
    per_layer = projections // 32 * 20 + 2 * h * 4
    embedding = vocab * h // 32 * 34
    expected = layers * per_layer + h * 4 + embedding + h // 32 * 34
    gguf = read_gguf(builtin_gguf("smollm2-135m"))
    assert gguf.tied and gguf.decode_read_bytes().total == expected


def test_tiny_read_bytes_and_roofline_hints(tiny_llama, tiny_gguf):
    """Untied: the embedding table is not read but for one row; weight_bits is those bytes over the analytic
    model's elements (fp32 throughout: 32 bits)."""
    cfg = tiny_llama.model.config
    h, ffn, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = h // cfg.num_attention_heads * cfg.num_key_value_heads
    per_layer = (h * h * 2 + h * kv * 2 + h * ffn * 3 + 2 * h) * 4
    expected = layers * per_layer + h * 4 + vocab * h * 4 + h * 4  # final norm, output head, one embedding row
    engine = _engine(tiny_llama, gguf=str(tiny_gguf))
    assert not engine.gguf.tied and engine.gguf.decode_read_bytes().total == expected
    hints = engine.roofline_hints()
    assert hints.weight_bits == pytest.approx(expected * 8 / decode_weight_elements(cfg))
    assert hints.weight_bits == pytest.approx(32.0)
    assert engine.stats()["weight_read_bytes_per_step"].value == expected


# ---------------------------------------------------------------------------- requantization


def test_ftype_requantizes_once_into_the_cache(tiny_llama, tiny_gguf):
    engine = _engine(tiny_llama, gguf=str(tiny_gguf), ftype="q8_0")
    assert engine.gguf.path != tiny_gguf and engine.gguf.file_type == "MOSTLY_Q8_0"
    matrices = [t for t in engine.gguf.tensors if len(t.shape) == 2]
    assert {t.type for t in matrices} == {"Q8_0"}, engine.gguf.describe_types()
    assert {t.type for t in engine.gguf.tensors if len(t.shape) == 1} == {"F32"}  # norms stay fp32
    stats = engine.stats()
    assert str(tiny_gguf) in stats["requantized_from"].value and "ALL_F32" in stats["requantized_from"].value
    assert engine.quantize_s is not None and engine.quantize_s > 0
    assert engine.stats()["weight_read_bytes_per_step"].value < read_gguf(tiny_gguf).decode_read_bytes().total / 3

    again = _engine(tiny_llama, gguf=str(tiny_gguf), ftype="q8_0")
    assert again.gguf.path == engine.gguf.path and again.quantize_s is None  # from the cache
    tokens, _ = _run(again, make_prompts(tiny_llama, "synthetic", 1, 8, seed=0), 4)
    assert tokens.shape == (1, 4)


def test_the_memory_precheck_counts_the_file_or_its_requantized_size():
    from types import SimpleNamespace

    from pydantic import ValidationError

    from rooflens.engines.options.llamacpp import LlamaCppOptions

    model = SimpleNamespace(info=SimpleNamespace(source="builtin", id="smollm2-135m", label="smollm2-135m"))
    source, what = LlamaCppEngine.extra_weight_bytes(LlamaCppOptions(), model)
    assert source == read_gguf(builtin_gguf("smollm2-135m")).tensor_bytes and "MOSTLY_Q4_1" in what
    q8, _ = LlamaCppEngine.extra_weight_bytes(LlamaCppOptions(ftype="q8_0"), model)
    f32, _ = LlamaCppEngine.extra_weight_bytes(LlamaCppOptions(ftype="f32"), model)
    assert source < q8 < f32 and f32 == pytest.approx(134.5e6 * 4, rel=0.01)
    with pytest.raises(ValidationError, match="ftype"):
        LlamaCppOptions(ftype="q3")


def test_every_ftype_is_a_llama_cpp_file_type():
    from gguf import GGMLQuantizationType, LlamaFileType

    from rooflens.engines.llamacpp.requantize import ggml_type_of
    from rooflens.engines.options.llamacpp import FTYPES

    for ftype, name in FTYPES.items():
        assert getattr(llama_cpp, f"LLAMA_FTYPE_{name}") == LlamaFileType[name].value
        assert ggml_type_of(ftype) in GGMLQuantizationType.__members__  # the memory pre-check knows its block size


# ---------------------------------------------------------------------------- when it cannot run


def test_without_llama_cpp_the_engine_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(base.importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name))
    reason = LlamaCppEngine.unavailable_reason(CPU)
    assert "llama-cpp-python" in reason and "rooflens[llamacpp]" in reason


def test_a_model_without_a_gguf_or_of_another_vocabulary_is_refused(tiny_llama):
    with pytest.raises(EngineUnavailable, match="runs a GGUF file"):
        _engine(tiny_llama)
    with pytest.raises(EngineUnavailable, match="vocabulary of 49152 tokens"):
        _engine(tiny_llama, gguf=str(builtin_gguf("smollm2-135m")))
    assert "runs on cpu" in LlamaCppEngine.unavailable_reason(torch.device("meta"))


def test_batches_are_refused(tiny_llama, tiny_gguf):
    engine = _engine(tiny_llama, gguf=str(tiny_gguf))
    with pytest.raises(ValueError, match="one sequence at a time"):
        _run(engine, make_prompts(tiny_llama, "synthetic", 2, 8, seed=0), 2)
    assert not LlamaCppEngine.supports_batch and np.isfinite(engine.load.load_s)


def test_no_perplexity_and_no_attribution_outside_torch(tiny_llama, tiny_gguf):
    from rooflens.bench.attribution import attribute_cell

    engine = _engine(tiny_llama, gguf=str(tiny_gguf))
    assert engine.scoring_model() is None
    result = attribute_cell(engine, make_prompts(tiny_llama, "synthetic", 1, 8, seed=0), 2, CPU, {}, [], {})
    assert result.reason is not None and "outside torch" in result.reason


def test_a_build_that_would_crash_here_is_refused_before_it_runs(tiny_llama, tiny_gguf, monkeypatch):
    """An AMX build on a VM that cannot run AMX dies with SIGSEGV at its first quantized matmul: the engine asks a
    child process first (only for builds that use AMX) and is unavailable, naming the fix."""
    from rooflens.engines.llamacpp import engine as engine_module
    from rooflens.engines.llamacpp import smoke

    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    assert "SIGSEGV" in smoke.forward_fails(str(tiny_gguf), crash)
    assert smoke.forward_fails(str(tiny_gguf)) is None  # this build, this machine: the real forward pass runs
    assert smoke.build_unusable("CPU : AVX2 = 1 | AVX512 = 1 |", "/no/such/file") is None  # no AMX: not asked

    monkeypatch.setattr(engine_module, "system_info", lambda: "CPU : AVX512 = 1 | AMX_INT8 = 1 |")
    monkeypatch.setattr(smoke, "forward_fails", lambda path: "a four-token forward pass died with SIGSEGV")
    with pytest.raises(EngineUnavailable, match="uses AMX.*SIGSEGV.*-mno-amx-tile"):
        _engine(tiny_llama, gguf=str(tiny_gguf))
