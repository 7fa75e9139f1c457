"""rooflens's kernels as torch custom operators (rooflens.kernels.ops): opcheck, and LowBitLinear models compiled
with torch.compile(fullgraph=True) on the CPU, equal to eager and without graph breaks."""

import importlib.util
import os

import pytest
import torch
from torch import nn

from rooflens.bench.attribution.events import event_tree, phase_times, place
from rooflens.kernels import LowBitLinear, quantize
from rooflens.kernels.cpu_lowbit import cpu_kernel_unavailable
from rooflens.kernels.cpu_native import DENSE_FROM_ROWS, plan_for
from rooflens.kernels.linear import resolve_lowbit_layers
from rooflens.kernels.native import native_operator_unavailable, native_unavailable
from rooflens.kernels.ops import lowbit_native, lowbit_triton
from rooflens.kernels.ranges import KERNEL, OP, STEP, profiler_range, recording_ranges


def _triton_missing() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "no GPU and TRITON_INTERPRET is not 1"
    return None


needs_native = pytest.mark.skipif(native_unavailable() is not None, reason=str(native_unavailable()))
needs_triton = pytest.mark.skipif(_triton_missing() is not None, reason=str(_triton_missing()))
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the CPU: under the interpreter
ROWS = (1, DENSE_FROM_ROWS + 4)  # the GEMV and the dense path of the native kernel
# what resolve_lowbit_layers has compiled graphs call: the C++ operator where it builds, else the Python one
NATIVE_OP = "rooflens_native.linear" if native_operator_unavailable() is None else "rooflens.lowbit_native"


def _weight(bits: int, symmetric: bool, n: int = 48, k: int = 128, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return quantize(torch.randn(n, k, generator=gen) * 0.05, bits, 32, symmetric), torch.randn(n, generator=gen)


@needs_native
@pytest.mark.parametrize(
    ("bits", "symmetric", "shape", "dtype", "with_bias", "int8_activations"),
    [
        (4, True, (1, 128), torch.float32, False, False),
        (3, False, (2, 3, 128), torch.bfloat16, True, False),  # 3 bits run in the 4-bit packing; leading dims
        (8, False, (DENSE_FROM_ROWS + 4, 128), torch.float32, True, False),  # the dense path: a transposed output
        (2, True, (2, DENSE_FROM_ROWS, 128), torch.bfloat16, False, False),
        (4, False, (3, 128), torch.float32, True, True),  # kernel: native_a8
        (8, True, (DENSE_FROM_ROWS + 1, 128), torch.float32, False, True),
    ],
)
def test_native_op_passes_opcheck(bits, symmetric, shape, dtype, with_bias, int8_activations):
    qw, bias = _weight(bits, symmetric)
    plan = plan_for(qw)
    x = torch.randn(*shape).to(dtype)
    if x.dim() == 2:  # a column-major input: the kernel copies it, the output's layout must not follow it
        x = x.t().contiguous().t()
    args = (x, plan.codes, plan.scales, plan.zeros, bias.to(dtype) if with_bias else None)
    args = (*args, plan.kbits, plan.zconst, plan.group_size, *plan.shape)
    torch.library.opcheck(lowbit_native, (*args, int8_activations) if int8_activations else args)


@needs_triton
def test_triton_op_passes_opcheck():
    qw, bias = _weight(4, False)
    qw, bias = qw.to(TRITON_DEVICE), bias.to(TRITON_DEVICE)
    x = torch.randn(3, 128, device=TRITON_DEVICE)
    args = (x, qw.packed, qw.scales, qw.zeros, bias, qw.bits, qw.group_size, *qw.shape)
    torch.library.opcheck(lowbit_triton, args)


def _tiny_model(kernel: str) -> nn.Module:
    """Two 4-bit asymmetric layers (one with a bias) around a SiLU."""
    torch.manual_seed(0)
    up, down = nn.Linear(64, 96), nn.Linear(96, 64, bias=False)
    lowbit = [LowBitLinear.from_linear(m, 4, 32, symmetric=False, kernel=kernel) for m in (up, down)]
    return nn.Sequential(lowbit[0], nn.SiLU(), lowbit[1]).eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kernel", "op"),
    [
        pytest.param("native", NATIVE_OP, marks=needs_native),
        pytest.param("native_a8", NATIVE_OP, marks=needs_native),
        ("int4pack", "aten._weight_int4pack_mm_for_cpu"),
        ("torch", "torch.matmul"),
        pytest.param("triton", "rooflens.lowbit_triton", marks=needs_triton),
    ],
)
@torch.no_grad()
def test_compiled_lowbit_layers_equal_eager_without_graph_breaks(kernel, op):
    if kernel == "int4pack" and cpu_kernel_unavailable() is not None:
        pytest.skip(cpu_kernel_unavailable())
    device = TRITON_DEVICE if kernel == "triton" else torch.device("cpu")
    model = _tiny_model(kernel).to(device)
    assert resolve_lowbit_layers(model, device) == 2
    explained = torch._dynamo.explain(model)(torch.randn(1, 64, device=device))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert op in "\n".join(g.code for g in explained.graphs)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break would be an error
    for rows in ROWS:  # the second size recompiles with a dynamic row count
        x = torch.randn(rows, 64, device=device)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@torch.no_grad()
def test_the_quantized_engines_tiny_llama_compiles_whole(tiny_llama):
    from rooflens.engines.options.quantized import QuantizedOptions
    from rooflens.engines.quantized import QuantizedEngine

    engine = QuantizedEngine(QuantizedOptions(bits=4, group_size=32), tiny_llama)
    engine.prepare()  # its smoke forward resolves every layer's path (kernel: auto)
    model, gen = engine.module, torch.Generator().manual_seed(0)
    torch._dynamo.reset()
    # aot_eager: dynamo, the fake kernels and functionalization, without inductor's minute of C++ for a whole model
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for rows in ROWS:
        ids = torch.randint(0, 512, (1, rows), generator=gen)
        eager = model(ids, use_cache=False).logits
        torch.testing.assert_close(compiled(ids, use_cache=False).logits, eager, rtol=1e-5, atol=1e-6)


@needs_native
def test_the_attribution_counts_the_native_op_once_as_an_operator_of_its_class():
    """The kernel's range nests in the Python operator's event: the call is one operator of the class, not two."""
    plan, x = plan_for(_weight(4, True)[0]), torch.randn(1, 128)
    args = (plan.codes, plan.scales, plan.zeros, None, plan.kbits, plan.zconst, plan.group_size, *plan.shape)
    with recording_ranges(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with profiler_range(STEP + "decode"), profiler_range(OP + "mlp"):
            lowbit_native(x, *args)
    nodes = event_tree(prof.profiler.kineto_results.events())
    placed = {n.name: place(n) for n in nodes}
    assert placed["rooflens::lowbit_native"] == ("decode", "mlp", False)
    assert placed[KERNEL + "rl_lowbit_gemm"][0] is None  # inside the operator: counted with it
    assert dict(phase_times(nodes, on_device=False)["decode"].calls) == {"mlp": 1}


def test_compiling_an_unresolved_layer_says_what_to_do():
    model = _tiny_model("torch")
    torch._dynamo.reset()
    with pytest.raises(RuntimeError, match="resolve_lowbit_layers"):  # dynamo's Unsupported, naming ours
        torch.compile(model, fullgraph=True, backend="eager")(torch.randn(1, 64))
    model(torch.randn(1, 64))  # one eager forward resolves the paths: the compiled model runs
    torch.compile(model, fullgraph=True, backend="eager")(torch.randn(1, 64))
