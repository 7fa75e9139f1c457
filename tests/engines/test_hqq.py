"""HQQ (rooflens.engines.quant.hqq): lower error than round-to-nearest, the same storage, and the engines' option."""

import pytest
import torch
from torch import nn

from factories import clocked_generate
from rooflens.config import EngineSpec
from rooflens.data.prompts import make_prompts
from rooflens.engines.mixed_precision.fidelity import fidelity as pmpd
from rooflens.engines.mixed_precision.training import TuneSettings, scheduler_path
from rooflens.engines.options.mixed_precision import MixedPrecisionOptions
from rooflens.engines.quant.hqq import HQQSettings, hqq_codes, hqq_quantize
from rooflens.engines.registry import build_engine, validate_engine_options
from rooflens.kernels.linear import LowBitLinear, kernel_unavailable
from rooflens.kernels.lowbit import dequantize, quantize, unpack_codes

CPU = torch.device("cpu")
CASES = [(bits, sym) for bits in (4, 3, 2) for sym in (True, False)]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "cache"))


def _outlier_matrix(seed: int = 0, n: int = 96, k: int = 256) -> torch.Tensor:
    """Gaussian weights with a few columns and single entries scaled x20 (the outliers min-max RTN stretches for)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    w[:, torch.randperm(k, generator=g)[:3]] *= 20
    w.view(-1)[torch.randperm(n * k, generator=g)[:40]] *= 20
    return w


def _rtn_reference(w: torch.Tensor, bits: int, group: int, symmetric: bool) -> torch.Tensor:
    """Min-max round-to-nearest dequantized, written out here from the format's definition (not the library)."""
    wg = w.reshape(w.shape[0], -1, group)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = wg.abs().amax(-1, keepdim=True) / qmax
        return (torch.clamp(torch.round(wg / s), -qmax - 1, qmax) * s).reshape(w.shape)
    lo, hi = wg.amin(-1, keepdim=True).clamp(max=0), wg.amax(-1, keepdim=True).clamp(min=0)
    s = (hi - lo) / (2**bits - 1)
    z = torch.round(-lo / s)
    return ((torch.clamp(torch.round(wg / s) + z, 0, 2**bits - 1) - z) * s).reshape(w.shape)


# ---------------------------------------------------------------------------- error


@pytest.mark.parametrize("bits, symmetric", CASES)
def test_hqq_reconstructs_better_than_round_to_nearest(bits, symmetric):
    w = _outlier_matrix()
    rtn = _rtn_reference(w, bits, 64, symmetric)
    # the independent RTN errs as the library's (which rounds its scales up to fp16: a few codes differ by one)
    lib = dequantize(quantize(w, bits, 64, symmetric))
    assert float((w - lib).norm()) == pytest.approx(float((w - rtn).norm()), rel=2e-2)
    hqq = dequantize(hqq_quantize(w, bits, 64, symmetric))
    assert (w - hqq).norm() < 0.99 * (w - rtn).norm()
    assert (w - hqq).abs().mean() < (w - rtn).abs().mean()


@pytest.mark.parametrize("bits, symmetric", CASES)
def test_no_group_ends_worse_than_round_to_nearest(bits, symmetric):
    """Each group keeps the best grid seen, RTN's included."""
    w = _outlier_matrix(seed=1)
    per_group = lambda d: (w - d).reshape(w.shape[0], -1, 32).square().sum(-1)  # noqa: E731
    rtn, hqq = (
        per_group(dequantize(quantize(w, bits, 32, symmetric))),
        per_group(dequantize(hqq_quantize(w, bits, 32, symmetric))),
    )
    assert bool((hqq <= rtn * (1 + 1e-6) + 1e-12).all())
    assert bool((hqq < 0.999 * rtn).any())


def test_more_iterations_never_hurt_and_zero_iterations_are_rtn():
    w = _outlier_matrix(seed=2)
    err = {
        iters: float((w - _dequant(*hqq_codes(w, 3, 64, True, HQQSettings(iters=iters)), 3)).norm())
        for iters in (0, 2, 20)
    }
    assert err[0] == pytest.approx(float((w - dequantize(quantize(w, 3, 64, True))).norm()), rel=1e-6)
    assert err[20] <= err[2] < err[0]


def _dequant(codes, scales, zeros, bits: int) -> torch.Tensor:
    """(codes - z) s from the unpacked output of :func:`hqq_codes`, group size 64."""
    n, k = codes.shape
    z = torch.full_like(scales, 2 ** (bits - 1)) if zeros is None else zeros
    c = codes.float().reshape(n, -1, 64)
    return ((c - z.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)).reshape(n, k)


# ---------------------------------------------------------------------------- storage


@pytest.mark.parametrize("bits, symmetric", [*CASES, (8, True), (8, False)])
def test_hqq_is_stored_exactly_as_rtn_and_dequantizes_through_the_same_path(bits, symmetric):
    w = _outlier_matrix(seed=3)
    rtn, hqq = quantize(w, bits, 64, symmetric), hqq_quantize(w, bits, 64, symmetric)
    for name in ("packed", "scales", "zeros"):
        a, b = getattr(rtn, name), getattr(hqq, name)
        assert (a is None) == (b is None) and (a is None or (a.dtype, a.shape) == (b.dtype, b.shape)), name
    assert hqq.storage_bytes == rtn.storage_bytes
    codes = unpack_codes(hqq.packed, bits, w.shape[1])
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    if not symmetric:  # integer zero points in the code range (torch's int4 CPU kernel relies on it)
        z = hqq.zeros.float()
        assert torch.equal(z, z.round()) and float(z.min()) >= 0 and float(z.max()) <= 2**bits - 1
    # the packed words hold the solver's codes: unpacking + the format's formula = the solver's dequantization
    torch.testing.assert_close(dequantize(hqq), _dequant(*hqq_codes(w, bits, 64, symmetric), bits))


@pytest.mark.parametrize("kernel", ["torch", "native", "int4pack"])
@pytest.mark.parametrize("bits, symmetric", [(4, False), (2, True), (3, False)])
def test_every_cpu_kernel_runs_hqq_weights(kernel, bits, symmetric):
    if kernel_unavailable(kernel, CPU):
        pytest.skip(kernel_unavailable(kernel, CPU))
    torch.manual_seed(0)
    lin = nn.Linear(128, 48, bias=True)
    with torch.no_grad():
        lin.weight.copy_(_outlier_matrix(seed=4, n=48, k=128))
    layer = LowBitLinear.from_linear(lin, bits, 32, symmetric, kernel=kernel, quantizer=hqq_quantize)
    x = torch.randn(3, 128)
    ref = x @ dequantize(hqq_quantize(lin.weight.detach(), bits, 32, symmetric)).T + lin.bias.detach()
    tol = 2e-2 if kernel == "int4pack" else 1e-4  # bf16 activations there
    torch.testing.assert_close(layer(x), ref, rtol=tol, atol=tol * float(ref.abs().max()))


def test_an_all_zero_group_stays_exact():
    w = _outlier_matrix(seed=5)
    w[:4] = 0.0
    for symmetric in (True, False):
        d = dequantize(hqq_quantize(w, 2, 64, symmetric))
        assert torch.isfinite(d).all() and torch.equal(d[:4], torch.zeros_like(d[:4]))


# ---------------------------------------------------------------------------- the engines


def test_mixed_precision_with_hqq_runs_end_to_end_and_its_record_says_hqq(tiny_llama, tmp_path):
    from factories import tiny_experiment
    from rooflens.bench.runner import ExperimentRunner
    from rooflens.results.store import load_records

    opts = {"ladder": [4, 2], "switch_steps": [2], "group_size": 32, "quantizer": "hqq"}
    engine = build_engine(EngineSpec(name="mixed_precision", options=opts), tiny_llama)
    engine.prepare()
    name, layer = next(iter(engine.layers.items()))
    weight = tiny_llama.model.get_submodule(name).weight.detach()
    for b in (4, 2):  # each rung holds HQQ's codes of the original weight
        assert torch.equal(layer.rungs[str(b)].packed, hqq_quantize(weight, b, 32, True).packed)
    out = clocked_generate(engine, make_prompts(tiny_llama, "synthetic", 1, 8, seed=1), 6)
    stats = {k: v.value for k, v in engine.stats().items()}
    assert out.shape == (1, 6) and stats["decode_tokens_per_bits"] == str({"4": 2, "2": 3})
    assert stats["quantizer"] == "hqq"

    mixed = {"name": "mixed_precision", "options": {"ladder": [8, 4], "switch_steps": [2], "quantizer": "hqq"}}
    ExperimentRunner(tiny_experiment([mixed], batch_sizes=(1,)), results_root=tmp_path / "r").run()
    (record,) = load_records(tmp_path / "r")
    assert record.status == "ok"
    quantizer = next(d for d in record.fidelity.deviations if d.setting == "quantizer")
    assert quantizer.here.startswith("HQQ") and "SqueezeLLM" in quantizer.reference


def test_fidelity_names_the_quantizer():
    rtn = next(d for d in pmpd(MixedPrecisionOptions()).deviations if d.setting == "quantizer")
    hqq = next(d for d in pmpd(MixedPrecisionOptions(quantizer="hqq")).deviations if d.setting == "quantizer")
    assert rtn.here.startswith("round-to-nearest (RTN") and "HQQ" not in rtn.here
    assert hqq.here.startswith("HQQ") and "scale fitted" in hqq.here  # symmetric: only the scale moves
    asym = pmpd(MixedPrecisionOptions(quantizer="hqq", symmetric=False)).deviations[0]
    assert "scale and zero point" in asym.here


def test_rtn_and_hqq_tunings_never_share_a_cache_file(tiny_llama):
    rtn = TuneSettings.from_options(MixedPrecisionOptions(quantizer="rtn"))
    hqq = TuneSettings.from_options(MixedPrecisionOptions(quantizer="hqq"))
    assert rtn.quantizer == "rtn" and hqq.quantizer == "hqq"
    label = tiny_llama.info.label
    assert scheduler_path(tiny_llama.model, label, rtn) != scheduler_path(tiny_llama.model, label, hqq)


def test_quantized_engine_takes_the_quantizer_for_the_rooflens_backend(tiny_llama):
    opts = {"backend": "rooflens", "bits": 3, "group_size": 32, "quantizer": "hqq", "kernel": "torch"}
    engine = build_engine(EngineSpec(name="quantized", options=opts), tiny_llama)
    engine.prepare()
    name, layer = next(iter(engine._layers.items()))
    weight = tiny_llama.model.get_submodule(name).weight.detach()
    assert torch.equal(layer.packed, hqq_quantize(weight, 3, 32, True).packed)
    assert not torch.equal(layer.packed, quantize(weight, 3, 32, True).packed)
    assert engine.options.describe() == "rooflens groupwise 3-bit g32 sym hqq"


@pytest.mark.parametrize(
    "engine, options, says",
    [
        ("mixed_precision", {"quantizer": "gptq"}, "options.quantizer: Input should be 'rtn' or 'hqq'"),
        ("quantized", {"quantizer": "awq"}, "options.quantizer: Input should be 'rtn' or 'hqq'"),
        ("quantized", {"backend": "torchao", "quantizer": "hqq"}, "quantizer: applies to backend 'rooflens' only"),
    ],
)
def test_a_bad_quantizer_names_the_field_and_the_allowed_values(engine, options, says):
    problems = validate_engine_options(EngineSpec(name=engine, options=options))
    assert any(says in p for p in problems), problems
