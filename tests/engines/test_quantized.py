"""The quantized engine: torchao, bitsandbytes and rooflens's own low-bit format on the tiny random Llama."""

import functools
import importlib.util

import pytest
import torch

from factories import tiny_experiment
from rooflens.bench.runner import ExperimentRunner
from rooflens.config import ConfigError
from rooflens.data.prompts import make_prompts
from rooflens.engines.base import EngineUnavailable, TokenClock
from rooflens.engines.options.quantized import QuantizedOptions
from rooflens.engines.quant import copy_for_quantization
from rooflens.engines.quant.lowbit import KERNEL_PATHS
from rooflens.engines.quantized import QuantizedEngine, options_unavailable_reason
from rooflens.engines.registry import get_engine
from rooflens.kernels import format_bits_per_weight
from rooflens.roofline.analytic import decode_weight_elements

CPU = torch.device("cpu")
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None

# every backend/format that can run on the CPU (the rooflens ones always can)
CASES = {
    "rooflens-4b-g32-sym": dict(backend="rooflens", bits=4, group_size=32),
    "rooflens-8b-g32-sym": dict(backend="rooflens", bits=8, group_size=32),
    "rooflens-3b-g64-asym": dict(backend="rooflens", bits=3, group_size=64, symmetric=False),
    "rooflens-2b-g32-sym": dict(backend="rooflens", bits=2, group_size=32),
    "torchao-int8wo": dict(backend="torchao", format="int8_weight_only"),
    "torchao-int8dq": dict(backend="torchao", format="int8_dynamic"),
    "torchao-intx4-g32": dict(backend="torchao", format="intx_weight_only", bits=4, group_size=32),
    "bnb-int8": dict(backend="bitsandbytes", format="int8"),
    "bnb-nf4": dict(backend="bitsandbytes", format="nf4"),
}
EIGHT_BIT = ["rooflens-8b-g32-sym", "torchao-int8wo", "torchao-int8dq", "bnb-int8"]


def _skip_if_unavailable(options: QuantizedOptions) -> None:
    if options.backend == "torchao" and not HAS_TORCHAO:
        pytest.skip("torchao is not installed (pip install torchao)")
    if options.backend == "bitsandbytes" and not HAS_BNB:
        pytest.skip("bitsandbytes is not installed (pip install bitsandbytes)")
    reason = options_unavailable_reason(options, CPU, "float32")
    if reason:
        pytest.skip(reason)


_ENGINES: dict[str, QuantizedEngine] = {}


@pytest.fixture(scope="module")
def original_state(tiny_llama):
    """The shared model's weights before this module prepares any engine."""
    return {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}


@pytest.fixture
def prepared(tiny_llama, original_state):
    """Prepared engines, built once per case for the whole module (quantizing is the slow part)."""

    def get(case: str) -> QuantizedEngine:
        if case not in _ENGINES:
            options = QuantizedOptions(**CASES[case])
            _skip_if_unavailable(options)
            engine = QuantizedEngine(options, tiny_llama)
            engine.prepare()
            _ENGINES[case] = engine
        return _ENGINES[case]

    return get


def _logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits.float()


# ---------------------------------------------------------------------------- generation


def test_registered():
    assert get_engine("quantized") is QuantizedEngine


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_generates_exactly_n_tokens_for_a_batch(case, prepared, tiny_llama):
    engine = prepared(case)
    prompts = make_prompts(tiny_llama, "synthetic", 2, 8, seed=3)
    clock = TokenClock(CPU)
    clock.start()
    new = engine.generate(prompts, 6, clock)
    clock.stop()
    assert new.shape == (2, 6) and clock.n_tokens == 6 and len(clock.events) == 6
    assert engine.supports_batch
    assert engine.scoring_model() is engine.module and engine.module is not tiny_llama.model


# 8-bit error bound. Per-row (or per-group) absmax scaling to 127 levels gives a rounding error per
# weight uniform in [-s/2, s/2], s = absmax/127, i.e. an rms error of s/sqrt(12); for the Gaussian
# init of the tiny model (rows of 64-128 values, absmax ~ 2.5-3.5 rms) that is ~0.6-0.8% of the
# weight rms per matrix. W8A8 (torchao int8_dynamic, LLM.int8) adds a similar activation term, and
# bitsandbytes casts to fp16 (0.05%). 28 quantized matmuls in 4 layers with residual connections add
# these roughly in quadrature: ~1-2% relative logit error is expected (1.0-1.5% measured); 5% leaves
# margin while still failing anything coarser (the 4-bit formats measure 17-19% on this model).
REL_ERR_8BIT = 0.05


@pytest.mark.parametrize("case", EIGHT_BIT)
def test_eight_bit_formats_stay_close_to_fp32(case, prepared, tiny_llama):
    engine = prepared(case)
    ids = make_prompts(tiny_llama, "synthetic", 2, 16, seed=4)
    ref = _logits(tiny_llama.model, ids)
    out = _logits(engine.module, ids)
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < REL_ERR_8BIT, f"{case}: relative logit error {rel:.4f}"


# ---------------------------------------------------------------------------- storage figures


@pytest.mark.parametrize(
    "case,bits,group,sym",
    [
        ("rooflens-4b-g32-sym", 4, 32, True),
        ("rooflens-3b-g64-asym", 3, 64, False),
        ("rooflens-2b-g32-sym", 2, 32, True),
    ],
)
def test_rooflens_storage_matches_the_report_and_the_format(case, bits, group, sym, prepared, tiny_llama):
    engine = prepared(case)
    report, s, st = engine.report, engine.measured, engine.stats()
    assert st["quantized_weight_bytes"].value == report.total_storage_bytes == s.quantized_bytes
    assert st["quantized_layers"].value == len(report.replaced) == 28  # 4 layers x (q, k, v, o, gate, up, down)
    expected = format_bits_per_weight(bits, group, sym)  # 4-bit g32 sym: 4 + 16/32 = 4.5
    assert st["bits_per_weight_quantized"].value == pytest.approx(expected) == report.bits_per_weight
    # all weights: what was not quantized stays as it was, the quantized layers hold the report's bytes
    total = tiny_llama.info.param_bytes - report.total_original_bytes + report.total_storage_bytes
    assert st["weight_storage_bytes"].value == total
    assert st["bits_per_weight_model"].value == pytest.approx(total * 8 / tiny_llama.info.n_params)
    # the roofline's weight bytes per decode step are what the kernels read: the CPU kernel's view of the weight
    # (native: the format as stored, 3-bit codes as 4-bit; int4pack: its own layout), every dense weight once,
    # one row of the embedding
    layers = [engine.module.get_submodule(r.name) for r in report.replaced]
    emb = tiny_llama.model.get_input_embeddings().weight
    dense = tiny_llama.info.param_bytes - report.total_original_bytes - emb.numel() * 4 + emb.shape[1] * 4
    read = sum(m.plan(m.path(CPU)).read_bytes for m in layers) + dense
    assert st["weight_read_bytes_per_step"].value == read
    hints = engine.roofline_hints()
    assert hints.weight_bits * decode_weight_elements(tiny_llama.model.config) / 8 == pytest.approx(read)
    assert st["emulated"].value == "false" and st["nominal_bits"].value == bits
    assert st["kernel"].value == KERNEL_PATHS[layers[0].path(CPU)]  # the CPU kernel that ran, said plainly
    assert layers[0].path(CPU) in ("native", "int4pack")
    assert "lm_head" in st["skipped_layers"].description


def test_torchao_intx_is_reported_as_emulation_with_its_real_storage(prepared, tiny_llama):
    engine = prepared("torchao-intx4-g32")
    st = engine.stats()
    assert st["emulated"].value == "true" and "int8" in st["emulated"].description
    assert st["nominal_bits"].value == 4
    # int8 codes + fp32 scale and int8 zero point per group of 32: 8 + 32/32 + 8/32 bits, not 4
    assert st["bits_per_weight_quantized"].value == pytest.approx(8 + 32 / 32 + 8 / 32)
    # the roofline reads the real storage: every weight once (quantized layers as stored), one embedding row
    emb = tiny_llama.model.get_input_embeddings().weight
    read = st["weight_storage_bytes"].value - emb.numel() * 4 + emb.shape[1] * 4
    assert st["weight_read_bytes_per_step"].value == read
    hints = engine.roofline_hints()
    assert hints.weight_bits * decode_weight_elements(tiny_llama.model.config) / 8 == pytest.approx(read)
    assert "emulation" in hints.note


def test_torchao_and_bnb_int8_storage_is_codes_plus_row_scales(prepared, tiny_llama):
    layers = [m for n, m in tiny_llama.model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    elements = sum(m.weight.numel() for m in layers)
    rows = sum(m.out_features for m in layers)
    # torchao Int8Tensor: int8 qdata + fp32 scale + int8 zero point per row
    assert prepared("torchao-int8wo").stats()["quantized_weight_bytes"].value == elements + rows * (4 + 1)
    # bitsandbytes Int8Params: int8 data + fp32 SCB per row (CB is the data itself: counted once)
    assert prepared("bnb-int8").stats()["quantized_weight_bytes"].value == elements + rows * 4
    # NF4: 4-bit codes + one absmax per 64 weights (fp32, or bf16 after the CPU repack) + a 16-entry code table
    nf4 = prepared("bnb-nf4").stats()["bits_per_weight_quantized"].value
    assert 4 + 16 / 64 <= nf4 <= 4 + 32 / 64 + 16 * 32 * len(layers) / elements


@pytest.mark.parametrize("case", list(CASES))
def test_the_shared_model_is_untouched(case, prepared, tiny_llama, original_state):
    engine = prepared(case)
    after = tiny_llama.model.state_dict()
    assert original_state.keys() == after.keys()
    assert all(torch.equal(original_state[k], after[k]) and type(after[k]) is torch.Tensor for k in after)
    assert all(type(m).__module__.startswith(("torch.nn", "transformers")) for m in tiny_llama.model.modules())
    originals = {p.data_ptr() for p in tiny_llama.model.parameters()}
    assert not any(
        p.data_ptr() in originals for p in engine.module.parameters() if type(p) in (torch.Tensor, torch.nn.Parameter)
    )


def test_copy_drops_the_compiled_call_bound_to_the_original(tiny_llama):
    model = tiny_llama.model
    model._compiled_call = model.__call__  # what generate() caches after a compiled run
    try:
        dup = copy_for_quantization(model)
    finally:
        del model._compiled_call
    assert "_compiled_call" not in dup.__dict__


# ---------------------------------------------------------------------------- availability and options


@pytest.mark.slow
def test_int4_weight_only_is_unavailable_on_cpu_with_the_reason(tiny_llama, tmp_path):
    if not HAS_TORCHAO:
        pytest.skip("torchao is not installed (pip install torchao)")
    o = QuantizedOptions(backend="torchao", format="int4_weight_only")
    reason = options_unavailable_reason(o, CPU, "float32")
    assert reason.startswith("torchao int4_weight_only needs CUDA")
    assert "bfloat16" in options_unavailable_reason(o, torch.device("cuda"), "float32")
    with pytest.raises(EngineUnavailable, match="needs CUDA"):
        QuantizedEngine(o, tiny_llama).prepare()
    exp = experiment(
        [
            {"name": "hf"},
            {"name": "quantized", "label": "int4", "options": {"backend": "torchao", "format": "int4_weight_only"}},
        ]
    )
    rec = {r.cell.engine_label: r for r in ExperimentRunner(exp, results_root=tmp_path).run().records}["int4"]
    assert rec.status == "unavailable" and rec.reason.type == "EngineUnavailable"
    assert "needs CUDA" in rec.reason.message


def test_missing_library_is_named_with_a_pip_hint(monkeypatch):
    import rooflens.engines.quant.base as q

    real = importlib.util.find_spec
    monkeypatch.setattr(
        q.importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    reason = options_unavailable_reason(QuantizedOptions(backend="bitsandbytes"), CPU, "float32")
    assert reason == "backend 'bitsandbytes' needs the Python package bitsandbytes (pip install bitsandbytes)"


def test_triton_kernel_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    o = QuantizedOptions(backend="rooflens", kernel="triton")
    assert "TRITON_INTERPRET=1" in options_unavailable_reason(o, CPU, "float32")


@pytest.mark.parametrize(
    "options,message",
    [
        (
            {"backend": "bitsandbytes", "format": "int4_weight_only"},
            "format: 'int4_weight_only' is not a format of backend 'bitsandbytes' (allowed: int8, nf4); "
            "it is a format of backend 'torchao'",
        ),
        (
            {"backend": "rooflens", "bits": 5},
            "bits: 5 is not allowed for format 'groupwise' of backend 'rooflens' (allowed: 2, 3, 4, 8)",
        ),
        (
            {"backend": "rooflens", "group_size": 256},
            "group_size: 256 is not allowed for format 'groupwise' of backend 'rooflens' (allowed: 32, 64, 128)",
        ),
        (
            {"backend": "torchao", "format": "int8_weight_only", "group_size": 64},
            "group_size: does not apply to format 'int8_weight_only' of backend 'torchao'",
        ),
        (
            {"backend": "torchao", "format": "int8_dynamic", "bits": 4},
            "bits: format 'int8_dynamic' of backend 'torchao' is 8-bit (got 4)",
        ),
        ({"backend": "bitsandbytes", "format": "nf4", "symmetric": False}, "symmetric: does not apply to format 'nf4'"),
        ({"backend": "torchao", "kernel": "triton"}, "kernel: applies to backend 'rooflens' only"),
        ({"backend": "gptq"}, "options.backend: Input should be 'torchao', 'bitsandbytes' or 'rooflens'"),
        (
            {"backend": "rooflens", "bit": 4},
            "options.bit: unknown option for engine 'quantized' (allowed: cache, compile",
        ),
        ({"backend": "rooflens", "compile": True}, "compile: true needs cache: static"),
    ],
)
def test_invalid_options_give_clear_errors(options, message):
    with pytest.raises(ConfigError) as err:
        experiment([{"name": "quantized", "options": options}])
    assert "engines[0].options" in str(err.value) and message in str(err.value)


def test_valid_options_resolve_their_defaults():
    o = QuantizedOptions(backend="torchao", format="intx_weight_only", bits=3)
    assert (o.resolved_bits, o.resolved_group_size, o.resolved_symmetric, o.emulated) == (3, 32, True, True)
    assert QuantizedOptions().describe() == "rooflens groupwise 4-bit g128 sym"
    assert QuantizedOptions(backend="bitsandbytes", format="nf4").describe() == "bitsandbytes nf4 g64"
    assert QuantizedOptions(backend="torchao", format="intx_weight_only", bits=8).emulated is False


# ---------------------------------------------------------------------------- through the runner


experiment = functools.partial(tiny_experiment, batch_sizes=(1,))


@pytest.mark.slow
def test_runner_records_stats_and_roofline_bits(tmp_path):
    exp = experiment(
        [
            {"name": "hf"},
            {"name": "quantized", "label": "q4", "options": {"backend": "rooflens", "bits": 4, "group_size": 32}},
        ],
        batch_sizes=(1, 2),
    )
    records = {
        (r.cell.engine_label, r.cell.batch_size): r for r in ExperimentRunner(exp, results_root=tmp_path).run().records
    }
    base = records[("hf", 1)]
    assert base.roofline.weight_bits == 32.0
    for b in (1, 2):
        rec = records[("q4", b)]
        assert rec.status == "ok", rec.reason
        st = rec.engine_stats
        assert st["bits_per_weight_quantized"].value == pytest.approx(4.5) and st["quantized_layers"].value == 28
        assert st["weight_storage_bytes"].unit == "B" and st["quantize_time_s"].value > 0
        assert rec.roofline.weight_bits < 32
        assert "weight_bits = weight bytes a decode step reads" in rec.roofline.engine_note
        # the record's decode weight bytes per step are the bytes the kernels read (batch 1; each further
        # sequence of the batch reads one more embedding row, which the analytic model prices at weight_bits)
        extra_rows = (b - 1) * 64 * rec.roofline.weight_bits / 8
        assert rec.roofline.decode.weight_bytes.value == pytest.approx(
            st["weight_read_bytes_per_step"].value + extra_rows
        )
        # fewer weight bytes per decode step than the fp32 baseline, in proportion to the bits
        ratio = rec.roofline.decode.weight_bytes.value / records[("hf", b)].roofline.decode.weight_bytes.value
        assert ratio == pytest.approx(rec.roofline.weight_bits / 32)


@pytest.mark.slow
def test_rooflens_triton_kernel_matches_the_torch_reference(tiny_llama):
    """kernel: triton runs rooflens's Triton kernel (here in the interpreter) inside the engine."""
    import os

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (pip install triton)")
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    engines = {}
    for kernel in ("triton", "torch"):
        engines[kernel] = QuantizedEngine(QuantizedOptions(bits=4, group_size=32, kernel=kernel), tiny_llama)
        engines[kernel].prepare()
    assert engines["triton"].stats()["kernel"].value.startswith("Triton dequant-matmul kernel")
    ids = make_prompts(tiny_llama, "synthetic", 1, 4, seed=5)
    torch.testing.assert_close(
        _logits(engines["triton"].module, ids), _logits(engines["torch"].module, ids), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("fmt", ["int8_weight_only", "int8_dynamic", "int4_weight_only"])
def test_torchao_leaves_global_inductor_and_matmul_settings_alone(fmt, tiny_llama):
    if not HAS_TORCHAO:
        pytest.skip("torchao is not installed (pip install torchao)")
    from rooflens.engines.quant.torchao import torchao_config

    o = QuantizedOptions(backend="torchao", format=fmt)
    assert torchao_config(o.spec()).set_inductor_config is False  # else torchao changes them for every later engine
    if fmt != "int4_weight_only":
        before = torch.get_float32_matmul_precision()
        QuantizedEngine(o, tiny_llama).prepare()
        assert torch.get_float32_matmul_precision() == before


@torch.no_grad()
def test_the_lm_head_can_be_quantized_and_a_tied_embedding_keeps_its_table():
    from rooflens.config import ModelSpec
    from rooflens.kernels import LowBitLinear
    from rooflens.models.loader import load_model

    tied = load_model(ModelSpec(source="shape", id="tiny-llama"), torch.device("cpu"), torch.float32, seed=3)
    tied.model.lm_head.weight = tied.model.model.embed_tokens.weight  # tie, as SmolLM2 is
    table = tied.model.model.embed_tokens.weight.clone()
    engine = QuantizedEngine(QuantizedOptions(bits=8, group_size=32, lm_head=True), tied)
    engine.prepare()
    head = engine.module.lm_head
    assert isinstance(head, LowBitLinear) and engine.stats()["quantized_layers"].value == 29
    assert torch.equal(engine.module.model.embed_tokens.weight, table)  # the lookup still reads the dense table
    assert tied.model.lm_head.weight is tied.model.model.embed_tokens.weight  # the shared model is untouched
    ids = make_prompts(tied, "synthetic", 1, 8, seed=1)
    ref, out = _logits(tied.model, ids), _logits(engine.module, ids)
    assert float((out - ref).norm() / ref.norm()) < REL_ERR_8BIT
    # the head is read through its kernel's layout; the embedding table only one row per token
    plain = QuantizedEngine(QuantizedOptions(bits=8, group_size=32), tied)
    plain.prepare()
    saved = plain.stats()["weight_read_bytes_per_step"].value - engine.stats()["weight_read_bytes_per_step"].value
    assert saved == table.numel() * 4 - head.plan(head.path(CPU)).read_bytes


def test_the_memory_pre_check_counts_the_quantized_copy(tiny_llama):
    """The estimate bounds what prepare() really holds: the copy's dense weights plus the quantized layers."""
    o = QuantizedOptions(bits=4, group_size=32)
    estimate, what = QuantizedEngine.extra_weight_bytes(o, tiny_llama)
    engine = QuantizedEngine(o, tiny_llama)
    engine.prepare()
    layers = list(engine._layers.values())
    path = layers[0].path(CPU)
    plans = sum(m.plan(path).read_bytes for m in layers) if path == "int4pack" else 0  # native reads the format
    held = engine.measured.total_bytes + plans  # the format's storage (+ torch's int4 layout where that runs)
    assert "quantized copy (rooflens groupwise 4-bit g32 sym)" == what
    assert held <= estimate <= 1.3 * held


def test_a_prefill_through_the_native_dense_path_is_credited_with_its_extra_traffic(tiny_llama):
    """From DENSE_FROM_ROWS rows the native kernel dequantizes to fp32 and runs a GEMM: the prefill's roofline
    bytes add the fp32 weight written and read back; a decode step reads the codes only."""
    from rooflens.kernels.cpu_native import DENSE_FROM_ROWS

    engine = QuantizedEngine(QuantizedOptions(bits=4, group_size=32), tiny_llama)
    engine.prepare()
    layers = list(engine._layers.values())
    if layers[0].path(CPU) != "native":
        pytest.skip(f"the native kernel does not run here (path {layers[0].path(CPU)})")
    ids = make_prompts(tiny_llama, "synthetic", 1, DENSE_FROM_ROWS, seed=2)
    clock = TokenClock(CPU)
    clock.start()
    engine.generate(ids, 2, clock)
    hints = engine.roofline_hints()
    elements = decode_weight_elements(tiny_llama.model.config)
    extra = sum(2 * m.in_features * m.out_features * 4 for m in layers)
    assert hints.prefill_weight_bits * elements / 8 == pytest.approx(hints.weight_bits * elements / 8 + extra)
    assert hints.bits_for("decode") == hints.weight_bits and "dense path" in hints.note
