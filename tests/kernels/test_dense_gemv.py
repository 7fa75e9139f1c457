"""rooflens's fp32 GEMV (rl_f32_gemm as rooflens_native::dense_linear) and the torch function mode that gives it to
compiled graphs (rooflens.kernels.dense): numbers against F.linear, the fallbacks, and a compiled model's graph."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rooflens.kernels import ops
from rooflens.kernels.dense import GEMV_ROWS, DenseGemv, gemv_mode
from rooflens.kernels.native import native_operator_unavailable

WHY = native_operator_unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=str(WHY))


@pytest.fixture
def dense():
    assert ops.prepare_native_operator() is None
    return ops.dense_operator()


@pytest.mark.parametrize(
    ("n", "k", "rows"),
    [(48, 128, 1), (50, 576, 1), (3, 37, 2), (257, 1536, 3), (5, 8, 1), (7, 15, 1)],  # ragged tiles, K not /16 or /8
)
def test_the_gemv_equals_f_linear(dense, n, k, rows):
    gen = torch.Generator().manual_seed(n * k + rows)
    x, w, b = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    for bias in (None, b):
        got = dense(x, w, bias, GEMV_ROWS)
        want = F.linear(x.double(), w.double(), None if bias is None else bias.double()).float()
        assert got.shape == (rows, n) and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * k**0.5)


def test_leading_dimensions_and_a_strided_input(dense):
    x, w = torch.randn(1, 1, 64).expand(1, 1, 64), torch.randn(32, 64)
    torch.testing.assert_close(dense(x, w, None, GEMV_ROWS), F.linear(x, w), rtol=1e-5, atol=1e-5)
    xt = torch.randn(64, 2).t()  # column-major rows
    torch.testing.assert_close(dense(xt, w, None, GEMV_ROWS), F.linear(xt, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case", ["many rows", "bf16", "non-contiguous weight"], ids=["many-rows", "bf16", "strided-weight"]
)
def test_what_the_gemv_does_not_take_runs_torchs_linear(dense, case):
    x, w = torch.randn(GEMV_ROWS, 64), torch.randn(32, 64)
    if case == "bf16":
        x, w = x[:1].bfloat16(), w.bfloat16()
    if case == "non-contiguous weight":
        x, w = x[:1], torch.randn(64, 32).t()
    torch.testing.assert_close(dense(x, w, None, GEMV_ROWS), F.linear(x, w), rtol=0, atol=0)  # torch's own result


def test_a_shape_mismatch_is_an_error_naming_the_shapes(dense):
    with pytest.raises(RuntimeError, match=r"x \[\.\.\., 64\] and weight \[N, K\] expected"):
        dense(torch.randn(1, 63), torch.randn(8, 64), None, GEMV_ROWS)


def test_the_mode_sends_fp32_cpu_linears_to_the_operator(dense):
    calls = []

    def spy(*args):
        calls.append(args[0].shape)
        return dense(*args)

    w = torch.randn(16, 32)
    with DenseGemv(spy):
        one = F.linear(torch.randn(1, 32), w)
        many = F.linear(torch.randn(GEMV_ROWS, 32), w)  # the operator runs torch's linear for these itself
        F.linear(torch.randn(1, 32).bfloat16(), w.bfloat16())  # not fp32: never reaches the operator
        nn.Linear(32, 16)(torch.randn(2, 32))  # nn.Linear calls F.linear
    assert calls == [torch.Size([1, 32]), torch.Size([GEMV_ROWS, 32]), torch.Size([2, 32])]
    assert one.shape == (1, 16) and many.shape == (GEMV_ROWS, 16)


def test_gemv_mode_names_what_the_graphs_call():
    enter, words = gemv_mode(torch.device("cpu"), True)
    assert isinstance(enter(), DenseGemv) and enter() is enter()  # one mode object: the graphs' guards hold
    assert words.startswith("rooflens AVX2 fp32 GEMV")
    enter, words = gemv_mode(torch.device("cpu"), False)
    assert not isinstance(enter(), DenseGemv) and words == "torch's linear (compile_gemv: false)"


@pytest.mark.slow
@torch.no_grad()
def test_a_graph_compiled_under_the_mode_calls_the_gemv_and_equals_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.SiLU(), nn.Linear(96, 64, bias=False)).eval()
    enter, _ = gemv_mode(torch.device("cpu"), True)
    torch._dynamo.reset()
    with enter():
        explained = torch._dynamo.explain(model)(torch.randn(1, 64))
    assert explained.graph_break_count == 0
    assert "rooflens_native.dense_linear" in "\n".join(g.code for g in explained.graphs)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(1, 64)
    with enter():
        got = compiled(x)
    torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-6)
