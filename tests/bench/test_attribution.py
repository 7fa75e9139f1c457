"""Per-operator attribution: the profiled repetition's classes, checked against what was put in.

The event rules on hand-made events; a napping operator in one module moves time to that class and nowhere
else; every registered engine's examples profile cleanly and leave the model as it was; the analytic FLOPs
of each class equal ``FlopCounterMode``'s for that module; the table adds up to the pass time.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field, replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from factories import small_shape
from rooflens.bench.attribution import attribute_cell, median_phases, profile_repetition
from rooflens.bench.attribution.events import PhaseTimes, phase_times, place
from rooflens.bench.attribution.instrument import instrumented, role_of
from rooflens.config import EngineSpec
from rooflens.data.prompts import make_prompts
from rooflens.engines.base import EngineUnavailable
from rooflens.engines.registry import build_engine, registered_engines
from rooflens.roofline.analytic import ModelShape, Precision, decode_cost, prefill_cost
from rooflens.roofline.op_classes import OUTSIDE, ProfiledPhase, modelled_ops, phase_attribution

CPU = torch.device("cpu")

# ---------------------------------------------------------------------------- the event rules


@dataclass
class Ev:
    """The fields of a profiler FunctionEvent the rules read."""

    name: str
    start: float
    end: float
    cpu_parent: Ev | None = None
    is_user_annotation: bool = False
    device_type: str = "CPU"
    cpu_children: list = field(default_factory=list)

    @property
    def time_range(self):
        return type("I", (), {"elapsed_us": lambda _s: self.end - self.start})()

    @property
    def cpu_time_total(self) -> float:
        return self.end - self.start

    device_time_total = 0.0


def _tree(*specs) -> list[Ev]:
    """Events from (name, start, end, parent index or None)."""
    out: list[Ev] = []
    for name, start, end, parent in specs:
        out.append(Ev(name, start, end, out[parent] if parent is not None else None))
        if parent is not None:
            out[parent].cpu_children.append(out[-1])
    return out


def test_place_engine_range_claims_everything_inside_and_ops_take_the_innermost_class():
    ev = _tree(
        ("rooflens.step/decode", 0, 100, None),  # 0
        ("rooflens.engine/draft", 0, 30, 0),  # 1
        ("rooflens.op/q_proj", 0, 10, 1),  # 2: the draft model's own q_proj
        ("aten::linear", 1, 9, 2),  # 3
        ("rooflens.op/self_attn", 40, 60, 0),  # 4
        ("rooflens.op/q_proj", 40, 50, 4),  # 5
        ("aten::linear", 41, 49, 5),  # 6
        ("aten::mm", 42, 48, 6),  # 7: nested in an operator
        ("aten::argmax", 70, 72, 0),  # 8
        ("aten::cat", 72, 75, 0),  # 9
        ("aten::add", 200, 210, None),  # 10: outside every pass
        ("rooflens.op/gate_proj", 80, 95, 0),  # 11: a quantized linear
        ("rooflens.kernel/rl_lowbit_gemm", 81, 94, 11),  # 12: its native kernel, called through ctypes
    )
    assert place(ev[3]) == ("decode", "draft", True)
    assert place(ev[6]) == ("decode", "q_proj", False)
    assert place(ev[7]) == (None, None, False)
    assert place(ev[8]) == ("decode", "sampling", False)
    assert place(ev[9]) == ("decode", "loop", False)
    assert place(ev[10]) == (None, "loop", False)
    ev[12].is_user_annotation = True  # how the profiler marks any named range
    assert place(ev[12]) == ("decode", "gate_proj", False)  # still an operator of its class


def test_phase_times_sums_operators_per_class_and_counts_passes():
    ev = _tree(
        ("rooflens.step/prefill", 0, 50, None),
        ("aten::embedding", 0, 5, 0),
        ("rooflens.step/decode", 60, 80, None),
        ("rooflens.op/lm_head", 60, 70, 2),
        ("aten::linear", 61, 69, 3),
        ("rooflens.step/decode", 80, 110, None),
        ("rooflens.op/lm_head", 80, 95, 5),
        ("aten::linear", 81, 94, 6),
        ("aten::mm", 82, 93, 7),
        ("aten::resolve_conj", 83, 84, 8),
    )
    times = phase_times(ev, on_device=False)
    assert (times["prefill"].passes, times["prefill"].wall_us) == (1, 50)
    assert dict(times["prefill"].inside_us) == {"loop": 5}
    assert (times["decode"].passes, times["decode"].wall_us) == (2, 50)
    assert dict(times["decode"].inside_us) == {"lm_head": 8 + 13}
    assert dict(times["decode"].calls) == {"lm_head": 2}
    assert dict(times["decode"].nested) == {"lm_head": 2}  # mm, and resolve_conj inside it
    assert (times["prefill"].ranges, times["decode"].ranges) == (1, 4)  # step ranges and class ranges


def test_role_of_names_the_analytic_classes():
    assert role_of("model.layers.3.self_attn.q_proj", "llama") == "q_proj"
    assert role_of("model.layers.3.mlp.down_proj", "llama") == "down_proj"
    assert role_of("model.layers.3.self_attn", "llama") == "attention"
    assert role_of("model.layers.3", "llama") == "residual_add"
    assert role_of("model.norm", "llama") == "final_norm"
    assert role_of("", "llama") == role_of("model", "llama") == "setup"
    assert role_of("model.layers.3.mlp.down_proj.inner", "llama") is None  # a quantized linear's internals
    assert role_of("transformer.h.0.mlp.c_proj", "gpt2") == "mlp_c_proj"
    assert role_of("transformer.h.0.attn.c_proj", "gpt2") == "c_proj"


# ---------------------------------------------------------------------------- the table


def test_a_removed_cost_larger_than_the_time_outside_operators_is_capped_there():
    """An over-estimated profiler cost (a busy machine) removes at most the time outside operators: the rows
    still add up to the attributed pass, inside operators is exactly 1, never above."""
    inside = {"q_proj": 0.006, "attention": 0.003}
    profiled = ProfiledPhase(1, 0.010, 0.002, inside, {"q_proj": 2})  # 1 ms outside operators, 2 ms "removed"
    table = phase_attribution("decode", profiled, None, [], timed_pass_s=None)
    assert table.removed_s.value == pytest.approx(0.001)
    assert table.attributed_pass_time_s.value == pytest.approx(0.009)
    assert table.inside_operators == 1.0
    assert sum(r.time_s.value for r in table.rows) == pytest.approx(0.009)


def test_phase_table_adds_up_and_compares_each_class_with_its_analytic_ops():
    from rooflens.results.record import CeilingRef, Quantity

    cost = decode_cost(small_shape(), batch=1, context_len=10)
    bw, peak = 10e9, 100e9
    ceiling = CeilingRef(
        source="datasheet",
        ref="test",
        dtype="fp32",
        bandwidth=Quantity(value=bw, unit="B/s", source="datasheet", how="t"),
        peak_flops=Quantity(value=peak, unit="FLOP/s", source="datasheet", how="t"),
    )
    inside = {"q_proj": 0.004, "attention": 0.002, "draft": 0.001, "loop": 0.0005}
    profiled = ProfiledPhase(2, 0.022, 0.002, inside, {"q_proj": 4}, frozenset({"draft"}), "test")
    table = phase_attribution("decode", profiled, cost, [ceiling], timed_pass_s=0.0098)
    rows = {r.name: r for r in table.rows}
    assert table.pass_time_s.value == pytest.approx(0.011)
    assert table.removed_s.value == pytest.approx(0.001)
    assert table.attributed_pass_time_s.value == pytest.approx(0.01)
    assert sum(r.time_s.value for r in table.rows) == pytest.approx(0.01)
    assert rows[OUTSIDE].time_s.value == pytest.approx(0.01 - 0.00375)
    assert table.inside_operators == pytest.approx(0.375)
    assert table.coverage == pytest.approx(1 - 0.00025 / 0.00375)
    assert table.profiler_overhead.value == pytest.approx(0.011 / 0.0098 - 1)
    assert table.agreement.value == pytest.approx(0.01 / 0.0098 - 1)
    assert rows["draft"].kind == "engine" and rows["draft"].modelled == []
    q = cost.op("q_proj")
    assert rows["q_proj"].flops.value == pytest.approx(q.flops * 2)  # two layers
    predicted = q.time_at_roofline(bw, peak) * 2
    assert rows["q_proj"].predicted_to_measured["datasheet"].value == pytest.approx(predicted / 0.002)
    assert rows["q_proj"].calls == 2
    assert rows["attention"].modelled == ["attention"]


def test_with_pairs_the_agreement_is_their_median_not_the_timed_median():
    """Each attributed profiled pass against the bare pass run just before it: a timed median taken while the
    machine was slower (here 20 %) does not enter the check."""
    profiled = ProfiledPhase(1, 0.011, 0.001, {"q_proj": 0.006}, {"q_proj": 2})
    pairs = [(0.0100, 0.0102), (0.0110, 0.0110), (0.0090, 0.0099)]  # +2 %, 0 %, +10 %
    table = phase_attribution("prefill", profiled, None, [], timed_pass_s=0.012, pairs=pairs)
    assert table.agreement.value == pytest.approx(0.02)
    assert "median of 3 pairs" in table.agreement.how and "+10.0%" in table.agreement.how
    assert table.agreement_pairs == [list(p) for p in pairs]
    assert table.profiler_overhead.value == pytest.approx(0.011 / 0.012 - 1)  # still against the timed median
    even = phase_attribution("prefill", profiled, None, [], timed_pass_s=None, pairs=pairs[:2])
    assert even.agreement.value == pytest.approx(0.01)  # of two, their mean


def test_sdpa_attention_bytes_by_hand():
    """SmolLM2-135M's shape, decode of 2 sequences at a 100-token cache, bf16: the fused kernel reads Q, the K and V
    of 101 positions at 3 KV heads, writes the output; no score matrix."""
    shape = ModelShape(
        family="llama",
        model_type="llama",
        num_layers=30,
        hidden=576,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        intermediate=1536,
        vocab=49152,
        tied_embeddings=True,
        qkv_bias=False,
        o_bias=False,
        mlp_bias=False,
    )
    attn = decode_cost(shape, batch=2, context_len=100).op("attention")
    q_and_out = 2 * (2 * 1 * 9 * 64) * 2  # Q read + output written: batch 2, 1 token, 9 heads x 64, 2 bytes
    k_and_v = 2 * (2 * 101 * 3 * 64) * 2  # K and V of 101 positions, 3 KV heads x 64, 2 bytes
    assert attn.act_bytes == q_and_out == 4608
    assert attn.kv_bytes == k_and_v == 155136
    assert attn.weight_bytes == 0
    scores = 2 * 9 * 101
    assert attn.flops == 2 * (2 * scores * 64) + 7 * scores
    eager = decode_cost(replace(shape, attention="eager"), batch=2, context_len=100)
    assert eager.op("attn_scores").matmul_flops + eager.op("attn_values").matmul_flops == attn.matmul_flops
    assert eager.op("softmax").act_bytes == scores * 2 * 2  # the score matrix read and written, 2 bytes
    assert eager.bytes > decode_cost(shape, batch=2, context_len=100).bytes  # the score matrix, written and read


# ---------------------------------------------------------------------------- FLOPs per class


def _module_flops(model: torch.nn.Module, fn) -> dict[str, int]:
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        fn()
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_analytic_flops_per_class_match_flop_counter_per_module(tiny_llama, phase):
    """Each linear class's analytic matmul FLOPs equal what FlopCounterMode counts under the modules of that
    class (every layer's q_proj, ...), in prefill and in a decode step."""
    from transformers import DynamicCache

    model = tiny_llama.model
    shape = ModelShape.from_config(model.config)
    batch, prompt = 2, 12
    ids = torch.randint(0, shape.vocab, (batch, prompt), generator=torch.Generator().manual_seed(0))
    if phase == "prefill":
        counts = _module_flops(model, lambda: model(ids, logits_to_keep=1))
        cost = prefill_cost(shape, batch=batch, prompt_len=prompt, precision=Precision(32, 32, 32))
    else:
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(ids, past_key_values=cache, use_cache=True)
        step = ids[:, -1:]
        counts = _module_flops(model, lambda: model(step, past_key_values=cache, use_cache=True))
        cost = decode_cost(shape, batch=batch, context_len=prompt, precision=Precision(32, 32, 32))
    top = type(model).__name__
    for cls in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        counted = sum(n for name, n in counts.items() if name.endswith("." + cls) and name.startswith(top))
        analytic = sum(op.matmul_flops * cost.count(op) for op in modelled_ops(cls, cost))
        assert analytic == pytest.approx(counted, rel=1e-6), cls
    head = counts[f"{top}.lm_head"]
    assert sum(op.matmul_flops for op in modelled_ops("lm_head", cost)) == pytest.approx(head, rel=1e-6)


# ---------------------------------------------------------------------------- a real profiled repetition


def _nap(seconds: float) -> torch.Tensor:
    """An operator that does nothing but wait: what the profiler sees is exactly the time put in."""
    return torch.ops.rooflens_test.nap(torch.tensor(seconds))


@torch.library.custom_op("rooflens_test::nap", mutates_args=())
def _nap_op(seconds: torch.Tensor) -> torch.Tensor:
    time.sleep(float(seconds))
    return seconds.clone()


class NappingLinear(torch.nn.Linear):
    """A linear that naps inside its own forward (so inside its class's range)."""

    seconds = 0.002

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _nap(self.seconds)
        return super().forward(x)


def _per_pass(times, phase: str) -> dict[str, float]:
    t = times[phase]
    return {k: v / t.passes / 1e6 for k, v in t.inside_us.items()}


def test_each_phase_keeps_the_median_profiled_repetition(tiny_llama):
    engine = build_engine(EngineSpec(name="hf"), tiny_llama)
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=3)
    three = profile_repetition(engine, prompts, 4, CPU)
    median = three.median()
    assert (median["prefill"].passes, median["decode"].passes) == (1, 3)  # one repetition's passes, not their sum
    assert len(three.runs) == len(three.bare_prefill_s) == 3  # each profiled repetition beside a bare prefill
    assert len(three.bare_decode_s) == 1 + 3 + 2 + 2  # a whole generation's passes, one from each short one
    assert min(three.bare_prefill_s + three.bare_decode_s) > 0


def test_the_bare_generations_run_uninstrumented_and_unprofiled(tiny_llama):
    """Bare as the timed repetitions are: the instrumentation's wrappers cost a pass time of their own, which belongs
    to what the attribution takes out, so the bare pair must not pay it."""
    engine = build_engine(EngineSpec(name="hf"), tiny_llama)
    q_proj = tiny_llama.model.model.layers[0].self_attn.q_proj
    original, seen = engine.generate, []

    def spy(prompts, n_new, clock):
        seen.append((type(clock).__name__, "forward" in q_proj.__dict__, torch.autograd._profiler_enabled()))
        return original(prompts, n_new, clock)

    engine.generate = spy
    profile_repetition(engine, make_prompts(tiny_llama, "synthetic", 1, 8, seed=3), 4, CPU, reps=2)
    bare = [s for s in seen if s[0] == "TokenClock"]
    profiled = [s for s in seen if s[0] == "SteppedClock"]
    assert (
        len(bare) == len(profiled) == 4
    )  # per repetition: two bare (the first cycle's second a whole one), two profiled
    assert not any(wrapped or on for _, wrapped, on in bare)
    assert all(wrapped for _, wrapped, _ in profiled) and any(on for _, _, on in profiled)


def test_median_phases_picks_the_middle_run_per_phase():
    def run(prefill_us: float, decode_us: float) -> dict[str, PhaseTimes]:
        return {"prefill": PhaseTimes(passes=1, wall_us=prefill_us), "decode": PhaseTimes(passes=4, wall_us=decode_us)}

    runs = [run(300, 40), run(100, 80), run(200, 60)]
    got = median_phases(runs)
    assert got["prefill"] is runs[2]["prefill"]  # 200 between 100 and 300
    assert got["decode"] is runs[2]["decode"]  # 60 / 4 between 40 / 4 and 80 / 4
    assert median_phases(runs[:2])["prefill"] is runs[1]["prefill"]  # of two, the lower
    assert median_phases([{"prefill": PhaseTimes()}]) == {}  # a phase with no pass is left out


def test_a_slowed_operator_moves_time_to_its_class_and_nowhere_else(tiny_llama):
    engine = build_engine(EngineSpec(name="hf"), tiny_llama)
    prompts = make_prompts(tiny_llama, "synthetic", 1, 8, seed=3)
    profile_repetition(engine, prompts, 4, CPU)  # warm
    plain = profile_repetition(engine, prompts, 6, CPU).median()
    mlps = [m for name, m in tiny_llama.model.named_modules() if name.endswith("mlp")]
    originals = [m.down_proj for m in mlps]
    try:
        for m, lin in zip(mlps, originals):
            nap = NappingLinear(lin.in_features, lin.out_features, bias=lin.bias is not None)
            nap.load_state_dict(lin.state_dict())
            m.down_proj = nap
        slowed = profile_repetition(engine, prompts, 6, CPU).median()
    finally:
        for m, lin in zip(mlps, originals):
            m.down_proj = lin
    put_in = NappingLinear.seconds * len(mlps)  # per pass: one nap per layer
    a, b = _per_pass(plain, "decode"), _per_pass(slowed, "decode")
    assert b["down_proj"] - a["down_proj"] == pytest.approx(put_in, rel=0.25)
    others = {k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b) if k != "down_proj"}
    assert max(abs(v) for v in others.values()) < 0.2 * put_in, others


# ---------------------------------------------------------------------------- every engine


CASES = [
    pytest.param(name, opts, id=f"{name}-{i}")
    for name, cls in registered_engines().items()
    for i, opts in enumerate(cls.examples)
]


def _instrumentation_state(model: torch.nn.Module) -> dict:
    from transformers.cache_utils import Cache
    from transformers.generation.logits_process import LogitsProcessorList
    from transformers.models.llama import modeling_llama

    return {
        "forwards": sorted(n for n, m in model.named_modules() if "forward" in m.__dict__),
        "cache_update": Cache.__dict__["update"],
        "processors": LogitsProcessorList.__dict__["__call__"],
        "rotary": modeling_llama.apply_rotary_pos_emb,
    }


@pytest.mark.parametrize("name, options", CASES)
def test_every_engine_is_attributed_and_left_as_it_was(name, options, tiny_llama):
    engine = build_engine(EngineSpec(name=name, options=options), tiny_llama)
    try:
        engine.prepare()
    except EngineUnavailable as err:  # as in the engine contract: only an engine on an optional library may be
        if not type(engine).requires_packages:
            raise
        pytest.skip(f"{name} cannot run on the tiny model here: {err}")
    before = _instrumentation_state(tiny_llama.model)
    batch = 2 if type(engine).supports_batch else 1
    prompts = make_prompts(tiny_llama, "synthetic", batch, 8, seed=3)
    shape = ModelShape.from_config(tiny_llama.model.config)
    costs = {
        "prefill": prefill_cost(shape, batch=batch, prompt_len=8, precision=Precision(32, 32, 32)),
        "decode": decode_cost(shape, batch=batch, context_len=10, precision=Precision(32, 32, 32)),
    }
    result = attribute_cell(engine, prompts, 6, CPU, costs, [], {"prefill": 0.01, "decode": 0.01})
    assert _instrumentation_state(tiny_llama.model) == before
    if result.reason is not None:  # only a compiled forward has none
        assert "torch.compile" in result.reason
        return
    phases = {p.phase: p for p in result.phases}
    assert set(phases) == {"prefill", "decode"}
    for p in phases.values():
        total = sum(r.time_s.value for r in p.rows)
        assert total == pytest.approx(p.attributed_pass_time_s.value, rel=1e-6)
        assert p.attributed_pass_time_s.value == pytest.approx(p.pass_time_s.value - p.removed_s.value)
        assert 0 < p.inside_operators <= 1
        names = {r.name for r in p.rows}
        assert OUTSIDE in names
    assert phases["decode"].passes >= 1
    pairs = phases["prefill"].agreement_pairs  # each profiled prefill beside a bare one, run just before it
    assert len(pairs) == 3 and all(bare > 0 and attributed > 0 for bare, attributed in pairs)
    assert "pairs" in phases["prefill"].agreement.how
    decode = {r.name for r in phases["decode"].rows}
    assert {"q_proj", "down_proj", "attention"} <= decode or any(r.kind == "engine" for r in phases["decode"].rows)


def test_instrumentation_is_undone_when_the_generation_fails(tiny_llama):
    model = tiny_llama.model
    before = _instrumentation_state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with instrumented(model, "llama", {}):
            assert "forward" in model.model.layers[0].self_attn.q_proj.__dict__
            # transformers reads forward's parameters (logits_to_keep, ...): the wrapper keeps them
            assert "logits_to_keep" in inspect.signature(model.forward).parameters
            raise RuntimeError("boom")
    assert _instrumentation_state(model) == before


# ---------------------------------------------------------------------------- in a run's records


@pytest.mark.parametrize("schedule", ["blocks", "interleaved"])
def test_a_run_records_the_attribution_after_the_timed_repetitions(tmp_path, schedule):
    from factories import tiny_experiment
    from rooflens.bench.runner import ExperimentRunner
    from rooflens.results.store import load_records

    exp = tiny_experiment(
        [{"name": "hf"}, {"name": "hf", "label": "hf2"}], batch_sizes=(2,), schedule=schedule, attribution=True
    )
    ExperimentRunner(exp, results_root=tmp_path).run()
    records = load_records(tmp_path)
    assert len(records) == 2
    for r in records:
        assert r.status == "ok" and r.attribution is not None and r.attribution.reason is None, r.attribution
        phases = {p.phase: p for p in r.attribution.phases}
        assert phases["decode"].passes == 4  # gen 5: four decode passes after the prefill's token
        timed = r.metrics["tpot_s"].median
        assert phases["decode"].timed_pass_time_s.value == pytest.approx(timed)
        assert r.repetitions.measured == r.metrics["tpot_s"].n  # the profiled repetition is not a timed one
        assert "q_proj" in {row.name for row in phases["decode"].rows}


def test_attribution_off_and_out_of_the_config_hash(tmp_path):
    from factories import tiny_experiment
    from rooflens.bench.runner import ExperimentRunner
    from rooflens.results.store import load_records

    on = tiny_experiment([{"name": "hf"}], batch_sizes=(1,), attribution=True)
    off = tiny_experiment([{"name": "hf"}], batch_sizes=(1,), attribution=False)
    assert on.attribution and not off.attribution
    assert on.config_hash() == off.config_hash()  # it changes nothing that is timed
    ExperimentRunner(off, results_root=tmp_path).run()
    assert [r.attribution for r in load_records(tmp_path)] == [None]


def test_bare_and_profiled_passes_pair_up_per_repetition():
    from rooflens.bench.attribution import ProfiledReps
    from rooflens.bench.attribution.events import PhaseTimes

    def run(prefill_us: float, decode_us: float) -> dict[str, PhaseTimes]:
        return {"prefill": PhaseTimes(passes=1, wall_us=prefill_us), "decode": PhaseTimes(passes=2, wall_us=decode_us)}

    reps = ProfiledReps(
        runs=[run(110.0, 44.0), run(100.0, 40.0), run(300.0, 0.0)],  # the last recorded no decode time
        bare_prefill_s=[100e-6, 90e-6, 200e-6],
        bare_decode_s=[20e-6, 22e-6, 21e-6, 90e-6],  # the bare generations' decode passes, one of them slow
    )
    assert reps.bare_pass_s() == pytest.approx({"prefill": 100e-6, "decode": 21.5e-6})  # medians: the slow one aside
    flat = lambda pairs: [x for pair in pairs for x in pair]  # noqa: E731
    assert flat(reps.pairs("prefill", None)) == pytest.approx([100e-6, 110e-6, 90e-6, 100e-6, 200e-6, 300e-6])
    assert flat(reps.pairs("decode", None)) == pytest.approx([21.5e-6, 22e-6, 21.5e-6, 20e-6])  # none for rep 3
    assert ProfiledReps([run(1.0, 1.0)], [], []).pairs("decode", None) == []  # no bare pass: no pair


def test_profiler_cost_per_operator_is_what_the_decode_passes_show_never_below_the_loops():
    from rooflens.bench.attribution import _profiled, in_situ
    from rooflens.bench.attribution.events import PhaseTimes
    from rooflens.bench.attribution.overhead import ProfilerCost

    loop = ProfilerCost(0.25e-6, 1e-6, "loop")
    decode = PhaseTimes(passes=2, wall_us=22_000.0, ranges=100)
    decode.inside_us.update({"q_proj": 15_000.0, "lm_head": 3_000.0})
    decode.calls.update({"q_proj": 500, "lm_head": 500})
    decode.nested.update({"q_proj": 800, "lm_head": 200})
    # profiled 22 ms for two passes timed at 10 ms each: 2 ms of profiler, 0.1 ms of it the ranges'
    cost = in_situ(loop, {"decode": decode}, {"decode": 0.010})
    assert cost.per_op_s == pytest.approx((0.002 - 100 * 1e-6) / 2000)
    profiled = _profiled(decode, cost)
    assert profiled.removed_s == pytest.approx(0.002)  # the decode passes come out at their timed length
    assert profiled.inside_s["q_proj"] == pytest.approx(0.015 - 800 * cost.per_op_s)  # nested operators' cost
    slower_timed = in_situ(loop, {"decode": decode}, {"decode": 0.0112})  # noise: profiled faster than timed
    assert slower_timed.per_op_s == loop.per_op_s
    assert in_situ(loop, {}, {"decode": 0.01}) is loop


def test_the_profilers_cost_never_takes_more_than_the_time_outside_operators():
    from rooflens.bench.attribution import _profiled
    from rooflens.bench.attribution.events import PhaseTimes
    from rooflens.bench.attribution.overhead import ProfilerCost

    t = PhaseTimes(passes=1, wall_us=1000.0, ranges=50)
    t.inside_us["q_proj"] = 900.0
    t.calls["q_proj"] = 10
    absurd = ProfilerCost(per_op_s=50e-6, per_range_s=50e-6, how="a loop slowed by the machine")
    profiled = _profiled(t, absurd)
    assert profiled.removed_s == pytest.approx(0.0001)  # 1000 us - 900 us inside operators
    assert profiled.wall_s - profiled.removed_s >= sum(profiled.inside_s.values())


def test_a_pass_without_operators_keeps_its_time_when_the_estimate_would_take_it_all():
    """A scripted engine's pass has no operators: an estimate as large as the pass would leave nothing to attribute
    (a division by zero in CI's run of such an engine); nothing is taken out then, and the table still adds up."""
    from rooflens.bench.attribution import _profiled
    from rooflens.bench.attribution.events import PhaseTimes
    from rooflens.bench.attribution.overhead import ProfilerCost

    t = PhaseTimes(passes=2, wall_us=1000.0, ranges=40)
    profiled = _profiled(t, ProfilerCost(per_op_s=1e-6, per_range_s=50e-6, how="loop"))
    assert profiled.removed_s == 0.0 and "whole pass" in profiled.removed_how
    phase = phase_attribution("decode", profiled, None, [], 0.0004)
    assert [r.name for r in phase.rows] == [OUTSIDE]
    assert phase.rows[0].time_s.value == pytest.approx(0.0005)
