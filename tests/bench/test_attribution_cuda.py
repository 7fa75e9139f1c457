"""Per-operator attribution on a CUDA GPU (CUPTI): an operator's time is its kernels' device time.

Skipped without a GPU (CI has none); run where one is lent (``benchmarks/gpu_check.sh``). The same checks as the
CPU tests, with work put in on the device instead of a sleep: extra kernels inside one module move device time to
that class and nowhere else, and a cell's table adds up to its pass time with nothing taken out for the profiler.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rooflens.bench.attribution import attribute_cell, profile_repetition
from rooflens.config import EngineSpec, ModelSpec
from rooflens.data.prompts import make_prompts
from rooflens.engines.registry import build_engine
from rooflens.models.loader import load_model
from rooflens.roofline.analytic import ModelShape, Precision, decode_cost, prefill_cost
from rooflens.roofline.op_classes import OUTSIDE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CUPTI path)")

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def gpu_llama():
    return load_model(ModelSpec(source="shape", id="tiny-llama"), CUDA, torch.float32, seed=0)


class RepeatingLinear(torch.nn.Linear):
    """A linear that runs its matmul ``extra`` more times on the device: more kernels inside its class."""

    extra = 20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.extra):
            F.linear(x, self.weight, self.bias)
        return super().forward(x)


def _per_pass(times, phase: str) -> dict[str, float]:
    t = times[phase]
    return {k: v / t.passes / 1e6 for k, v in t.inside_us.items()}


def test_on_cuda_each_class_gets_its_kernels_device_time(gpu_llama):
    engine = build_engine(EngineSpec(name="hf"), gpu_llama)
    prompts = make_prompts(gpu_llama, "synthetic", 1, 8, seed=3).to(CUDA)
    profile_repetition(engine, prompts, 4, CUDA)  # warm
    times = profile_repetition(engine, prompts, 6, CUDA).median()
    decode = times["decode"]
    assert decode.passes == 5 and times["prefill"].passes == 1
    for cls in ("q_proj", "down_proj", "attention", "lm_head"):
        assert decode.inside_us.get(cls, 0.0) > 0, (cls, dict(decode.inside_us))
    # kernel time inside a pass can never exceed the pass's wall time (the clock synchronises every pass)
    assert sum(decode.inside_us.values()) < decode.wall_us


def test_on_cuda_extra_kernels_in_one_module_move_time_to_that_class_only(gpu_llama):
    engine = build_engine(EngineSpec(name="hf"), gpu_llama)
    prompts = make_prompts(gpu_llama, "synthetic", 1, 8, seed=3).to(CUDA)
    profile_repetition(engine, prompts, 4, CUDA)  # warm
    plain = profile_repetition(engine, prompts, 6, CUDA).median()
    mlps = [m for name, m in gpu_llama.model.named_modules() if name.endswith("mlp")]
    originals = [m.down_proj for m in mlps]
    try:
        for m, lin in zip(mlps, originals):
            rep = RepeatingLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, device=CUDA)
            rep.load_state_dict(lin.state_dict())
            m.down_proj = rep
        slowed = profile_repetition(engine, prompts, 6, CUDA).median()
    finally:
        for m, lin in zip(mlps, originals):
            m.down_proj = lin
    a, b = _per_pass(plain, "decode"), _per_pass(slowed, "decode")
    grown = b["down_proj"] - a["down_proj"]
    assert grown == pytest.approx(RepeatingLinear.extra * a["down_proj"], rel=0.5)
    others = {k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b) if k != "down_proj"}
    assert max(abs(v) for v in others.values()) < 0.2 * grown, others


@pytest.mark.parametrize(
    "name, options",
    [
        ("hf", {}),
        ("quantized", {"backend": "rooflens", "bits": 4, "group_size": 32}),
        ("speculative", {"proposer": "prompt_lookup", "gamma": 4}),
    ],
)
def test_on_cuda_a_cells_table_adds_up_with_nothing_taken_out(name, options, gpu_llama):
    engine = build_engine(EngineSpec(name=name, options=options), gpu_llama)
    engine.prepare()
    batch = 2 if type(engine).supports_batch else 1
    prompts = make_prompts(gpu_llama, "synthetic", batch, 8, seed=3).to(CUDA)
    shape = ModelShape.from_config(gpu_llama.model.config)
    costs = {
        "prefill": prefill_cost(shape, batch=batch, prompt_len=8, precision=Precision(32, 32, 32)),
        "decode": decode_cost(shape, batch=batch, context_len=10, precision=Precision(32, 32, 32)),
    }
    result = attribute_cell(engine, prompts, 6, CUDA, costs, [], {"prefill": 0.01, "decode": 0.01})
    assert result.reason is None, result.reason
    assert "CUPTI" in result.profiler
    for p in result.phases:
        assert p.removed_s.value == 0.0  # on a GPU the profiler's CPU cost is not in the kernels' time
        assert sum(r.time_s.value for r in p.rows) == pytest.approx(p.pass_time_s.value, rel=1e-6)
        assert OUTSIDE in {r.name for r in p.rows}
        assert 0 < p.inside_operators <= 1
