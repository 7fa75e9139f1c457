"""The low-bit linear's three paths (GEMV, flat GEMM, dense) against the torch reference, and the heuristic
dataflow that picks one (:mod:`rooflens.kernels.dispatch`).  Without a GPU the kernels run in the Triton
interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on tiny shapes; nothing here is timed."""

import json

import pytest
import torch

from rooflens.kernels import LowBitLinear, dequantize, quantize, reference_linear

pytest.importorskip("triton", reason="pip install 'rooflens[kernels]'")

from rooflens.kernels import dispatch  # noqa: E402
from rooflens.kernels.triton_lowbit import lowbit_dequantize, lowbit_linear  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N, K = 48, 128  # BLOCK_N = 32 in the interpreter: N is ragged
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _weights(bits: int, symmetric: bool, group: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    qw = quantize(torch.randn(N, K, generator=g), bits, group, symmetric)
    return qw.to(DEVICE), torch.randn(N, generator=g).to(DEVICE), g


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("path,ms", [("gemv", (1, 2)), ("flat", (1, 2, 5, 16))])
def test_kernel_path_matches_reference(path, ms, bits, symmetric):
    qw, bias, g = _weights(bits, symmetric)
    for m in ms:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(m, K, generator=g).to(DEVICE, dtype)
            got = lowbit_linear(x, qw, bias, path=path)
            assert got.dtype == dtype and got.shape == (m, N)
            assert _rel(got, reference_linear(x, qw, bias)) < TOL[dtype], (m, dtype)


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, False), (3, True), (2, False)])
def test_dense_path_matches_reference(bits, symmetric):
    qw, bias, g = _weights(bits, symmetric, group=128, seed=bits)
    assert torch.equal(lowbit_dequantize(qw, torch.float32), dequantize(qw))
    # within one bf16 step: the interpreter truncates fp32 -> bf16, a GPU rounds to nearest
    torch.testing.assert_close(
        lowbit_dequantize(qw, torch.bfloat16), dequantize(qw, torch.bfloat16), rtol=2**-7, atol=0
    )
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 17, K, generator=g).to(DEVICE, dtype)
        got = lowbit_linear(x, qw, bias, path="dense")
        assert got.dtype == dtype and got.shape == (2, 17, N)
        assert _rel(got, reference_linear(x, qw, bias)) < TOL[dtype]
    out = torch.empty(3, N, device=DEVICE)
    x = torch.randn(3, K, generator=g).to(DEVICE)
    assert lowbit_linear(x, qw, path="dense", out=out).data_ptr() == out.data_ptr()
    assert _rel(out, reference_linear(x, qw)) < 1e-5
    with pytest.raises(ValueError, match="path='tiled'"):
        lowbit_linear(x, qw, path="tiled")


def test_choose_path_defaults(home):
    for m, want in [(1, "gemv"), (2, "flat"), (16, "flat"), (17, "dense"), (512, "dense")]:
        assert dispatch.choose_path(m, 4096, 11008, "cpu") == want
        assert dispatch.decide(m, 4096, 11008, "cpu") == dispatch.Decision(want, "default")
    assert not (home / "dispatch").exists()  # deciding never writes


def _table(**buckets: dispatch.Crossover) -> dispatch.DispatchTable:
    return dispatch.DispatchTable(device_name="fake", torch_version="x", triton_version="y", buckets=buckets)


def test_measured_cache_is_followed(home, monkeypatch):
    path = dispatch.cache_path(DEVICE)
    assert path.parent == home / "dispatch" and torch.__version__.split("+")[0].replace(".", "-") in path.name
    when = "2026-01-02T03:04:05+00:00"
    table = _table(**{dispatch.bucket(N, K): dispatch.Crossover(gemv_max_m=3, flat_max_m=8, measured_at=when)})
    assert dispatch.bucket(N, K) == "64x128" and dispatch.bucket(11008, 4096) == "16384x4096"
    path.parent.mkdir(parents=True)
    path.write_text(table.model_dump_json())
    got = [dispatch.choose_path(m, N, K, DEVICE) for m in (1, 3, 4, 8, 9)]
    assert got == ["gemv", "gemv", "flat", "flat", "dense"]
    assert dispatch.decide(4, 40, 100, DEVICE).source == f"measured at {when}"  # same bucket
    assert dispatch.decide(4, 4096, 4096, DEVICE) == dispatch.Decision("flat", "default")  # not measured

    # LowBitLinear's Triton path follows it
    seen = []

    def spy(*args, path=None, **kwargs):
        seen.append(path)
        return lowbit_linear(*args, path=path, **kwargs)

    monkeypatch.setattr("rooflens.kernels.triton_lowbit.lowbit_linear", spy)
    qw, bias, g = _weights(4, True)
    layer = LowBitLinear(qw, bias, kernel="triton")
    for m in (2, 5, 12):
        x = torch.randn(1, m, K, generator=g).to(DEVICE)
        assert _rel(layer(x), reference_linear(x, qw, bias)) < 1e-5
    assert seen == ["gemv", "flat", "dense"]


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps(
            {
                "device_name": "d",
                "torch_version": "t",
                "triton_version": "t",
                "buckets": {"64x128": {"gemv_max_m": 9, "flat_max_m": 2}},
            }
        ),
    ],
)
def test_corrupt_cache_is_ignored_with_a_warning(home, text):
    path = dispatch.cache_path("cpu")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.warns(RuntimeWarning, match="ignoring the low-bit dispatch cache"):
        assert dispatch.decide(2, N, K, "cpu") == dispatch.Decision("flat", "default")


def test_fit_crossover_from_measurements():
    ms = [1, 2, 4, 8, 16, 32]
    us = {"gemv": [10, 12, 30, 60, 120, 240], "flat": [14, 14, 15, 16, 18, 40], "dense": [40, 40, 40, 40, 41, 30]}
    assert dispatch.fit_crossover(ms, us) == (2, 16)
    us["dense"] = [100] * 6  # never the fastest: flat to the end of the measured range
    assert dispatch.fit_crossover(ms, us) == (2, 32)
    us["gemv"] = [20] * 6  # never the fastest either
    assert dispatch.fit_crossover(ms, us) == (0, 32)


def test_calibrate_on_cpu_raises(home):
    with pytest.raises(dispatch.CalibrationError, match="only measured on a CUDA GPU.*defaults"):
        dispatch.calibrate("cpu", shapes=[(N, K)])
    assert not (home / "dispatch").exists()
