"""The loader for the three model sources."""

import pytest
import torch

from rooflens.config import ModelSpec
from rooflens.models.catalog import shipped_config_names
from rooflens.models.loader import ModelLoadError, choose_dtype, load_model, resolve_device

CPU = torch.device("cpu")


def test_shape_model_is_random_and_counted(tiny_llama):
    info = tiny_llama.info
    assert info.source == "shape" and info.weights == "random" and not info.has_tokenizer
    assert info.model_type == "llama" and info.num_layers == 4 and info.vocab_size == 512
    expected = sum(p.numel() for p in tiny_llama.model.parameters())
    assert info.n_params == expected and info.param_bytes == 4 * expected
    assert next(tiny_llama.model.parameters()).dtype == torch.float32
    assert not tiny_llama.model.training


def test_shape_models_are_seeded():
    a = load_model(ModelSpec(source="shape", id="tiny-gpt2"), CPU, torch.float32, seed=3)
    b = load_model(ModelSpec(source="shape", id="tiny-gpt2"), CPU, torch.float32, seed=3)
    c = load_model(ModelSpec(source="shape", id="tiny-gpt2"), CPU, torch.float32, seed=4)
    wa, wb, wc = (next(m.model.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.info.model_type == "gpt2" and a.info.num_layers == 2


def test_shape_model_dtype_follows_request():
    m = load_model(ModelSpec(source="shape", id="tiny-llama"), CPU, torch.bfloat16)
    assert m.info.dtype == "bfloat16" and next(m.model.parameters()).dtype == torch.bfloat16


def test_unknown_shape_lists_shipped():
    with pytest.raises(ModelLoadError) as exc:
        load_model(ModelSpec(source="shape", id="llama-9000"), CPU, torch.float32)
    assert "unknown shape config 'llama-9000'" in str(exc.value)
    for name in ("llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-7b", "smollm2-135m", "tiny-llama"):
        assert name in shipped_config_names() and name in str(exc.value)


def test_model_that_does_not_fit_is_refused_before_allocating(monkeypatch):
    import psutil

    class Tiny:
        available = 2 * 10**9

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    with pytest.raises(ModelLoadError) as exc:
        load_model(ModelSpec(source="shape", id="llama-2-7b"), CPU, torch.float32)
    msg = str(exc.value)
    assert "does not fit" in msg and "27.0 GB in float32" in msg and "available RAM is 2.0 GB" in msg


def test_hf_source_from_local_path(tmp_path, tiny_llama):
    tiny_llama.model.save_pretrained(tmp_path / "m")
    m = load_model(ModelSpec(source="hf", id=str(tmp_path / "m")), CPU, torch.float32)
    assert m.info.weights == "real" and m.info.source == "hf"
    assert not m.info.has_tokenizer  # none was saved: synthetic prompts only
    for a, b in zip(m.model.parameters(), tiny_llama.model.parameters()):
        assert torch.equal(a, b)


def test_hf_source_missing_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"cannot load model .*nothing-here"):
        load_model(ModelSpec(source="hf", id=str(tmp_path / "nothing-here")), CPU, torch.float32)


def test_unknown_builtin():
    with pytest.raises(ModelLoadError, match=r"unknown built-in model 'gpt-5' \(built-in: smollm2-135m\)"):
        load_model(ModelSpec(source="builtin", id="gpt-5"), CPU, torch.float32)


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")
    assert choose_dtype("auto", torch.device("cuda")).dtype == torch.bfloat16
    assert choose_dtype("bfloat16", CPU).dtype == torch.bfloat16


@pytest.mark.slow
def test_builtin_smollm2_real_weights(smollm2):
    info = smollm2.info
    assert info.source == "builtin" and info.weights == "real" and info.has_tokenizer
    assert info.n_params == 134_515_008 and info.num_layers == 30 and info.hidden_size == 576
    tok = smollm2.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = smollm2.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])  # real, trained weights


def test_auto_dtype_on_a_cpu_picks_bfloat16_only_when_native_and_faster(monkeypatch):
    from rooflens.device.cpu import CpuInfo
    from rooflens.models import loader

    def cpu_with(flags):
        monkeypatch.setattr(loader, "detect_cpu", lambda: CpuInfo(model="test CPU", flags=frozenset(flags)))

    cpu_with(["avx2"])
    choice = choose_dtype("auto", CPU)
    assert choice.dtype == torch.float32 and "no native bfloat16" in choice.reason
    cpu_with(["avx2", "avx512_bf16", "amx_bf16"])
    monkeypatch.setattr(loader, "_gemv_seconds", lambda dtype: 1e-4 if dtype == torch.bfloat16 else 3e-4)
    choice = choose_dtype("auto", CPU)
    assert (
        choice.dtype == torch.bfloat16
        and "avx512_bf16, amx_bf16" in choice.reason
        and "100 us in bfloat16" in choice.reason
    )
    monkeypatch.setattr(loader, "_gemv_seconds", lambda dtype: 3e-4 if dtype == torch.bfloat16 else 1e-4)
    choice = choose_dtype("auto", CPU)
    assert choice.dtype == torch.float32 and "but a 1x2048" in choice.reason


@pytest.mark.slow
def test_a_cache_that_cannot_take_the_converted_builtin_falls_back_to_a_temporary_folder(tmp_path, monkeypatch):
    import shutil
    import tempfile
    from pathlib import Path

    from rooflens.models.loader import converted_builtin

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "file" / "cache"))  # every write there fails
    path = converted_builtin("smollm2-135m")
    try:
        assert (path / "config.json").is_file() and Path(tempfile.gettempdir()) in path.parents
        assert not str(path).startswith(str(tmp_path / "file"))
    finally:
        shutil.rmtree(path, ignore_errors=True)  # ~0.5 GB of fp32 weights
