"""Roofline positions under engine hints (quantized bits, speculative passes, early exit)."""

import pytest

from rooflens.engines.base import RooflineHints
from rooflens.models.loader import shipped_config
from rooflens.roofline.analytic import ModelShape, Precision, decode_cost
from rooflens.roofline.hardware import get_profile
from rooflens.roofline.position import ceilings_for, roofline_position

CONFIG = shipped_config("llama-2-7b")[0]
SHAPE = ModelShape.from_config(CONFIG)


def position(hints, dtype="bfloat16"):
    return roofline_position(
        CONFIG,
        dtype,
        batch=1,
        prompt_len=100,
        gen_len=20,
        ttft_s=0.1,
        tpot_s=0.01,
        hints=hints,
        ceilings=ceilings_for(get_profile("h100-sxm"), dtype),
    )


def test_plain_decode_step():
    r = position(RooflineHints())
    d = decode_cost(SHAPE, batch=1, context_len=110, precision=Precision(16, 16, 16))
    assert r.decode.flops.value == pytest.approx(d.flops) and r.decode.bytes.value == pytest.approx(d.bytes)
    assert r.decode.achieved_bandwidth.value == pytest.approx(d.bytes / 0.01)
    assert [c.source for c in r.ceilings] == ["datasheet"] and r.decode.bound["datasheet"] == "memory"


def test_speculative_pass_verifies_more_than_it_keeps():
    r = position(RooflineHints(tokens_per_pass=2.5, tokens_verified_per_pass=5.0))
    d = decode_cost(SHAPE, batch=1, context_len=110, precision=Precision(16, 16, 16), new_tokens=5)
    assert r.decode.flops.value == pytest.approx(d.flops / 2.5)
    assert r.decode.weight_bytes.value == pytest.approx(d.weight_bytes / 2.5)  # weights read once per pass
    assert r.tokens_per_pass == 2.5


def test_quantized_bits_and_early_exit():
    q = position(RooflineHints(weight_bits=4.5))
    assert q.decode.weight_bytes.value == pytest.approx(
        decode_cost(SHAPE, batch=1, context_len=110, precision=Precision(4.5, 16, 16)).weight_bytes
    )
    e = position(RooflineHints(layers_executed=16))
    full = position(RooflineHints())
    assert e.decode.flops.value < 0.6 * full.decode.flops.value and e.layers_executed == 16


def test_unsupported_architecture_gives_a_reason():
    from transformers import BertConfig

    r = roofline_position(
        BertConfig(),
        "float32",
        batch=1,
        prompt_len=4,
        gen_len=2,
        ttft_s=1,
        tpot_s=1,
        hints=RooflineHints(),
        ceilings=[],
    )
    assert r.prefill is None and r.decode is None and "llama" in r.reason


# ---------------------------------------------------------------------------- the probe a record names


def test_the_record_names_the_probe_its_cv_and_age():
    from datetime import datetime, timezone

    from factories import valid_probe
    from rooflens.results.record import RooflineResult

    probe = valid_probe(threads=2, measured_at="2026-01-01T00:00:00+00:00")
    at = datetime(2026, 1, 3, 12, tzinfo=timezone.utc)
    ceilings = ceilings_for(get_profile("cpu-generic"), "float32", probe, at=at)
    (measured,) = [c for c in ceilings if c.source == "measured"]
    ref = measured.probe
    assert ref.file == "test-cpu-r-2-0ghz-t2.json" and ref.file in measured.ref
    assert (ref.device_name, ref.threads, ref.measured_at) == (probe.device_name, 2, probe.measured_at)
    assert ref.age_s == 2.5 * 86400
    assert ref.bandwidth_cv == probe.bandwidth.cv and ref.peak_flops_cv == probe.gemm["fp32"].cv
    assert ref.bandwidth_median_to_best == pytest.approx(probe.bandwidth.median / probe.bandwidth.max)
    assert ref.valid and ref.rules["bandwidth_max_cv"] == 0.10 and ref.rules["gemm_max_cv"] == 0.10
    r = roofline_position(
        CONFIG, "float32", batch=1, prompt_len=100, gen_len=20, ttft_s=0.1, tpot_s=0.01,
        hints=RooflineHints(), ceilings=ceilings, probe_note="ignored: there are measured ceilings",
    )  # fmt: skip
    assert r.probe_note is None and "measured" in r.decode.efficiency
    again = RooflineResult.model_validate_json(r.model_dump_json())
    assert again.ceilings[-1].probe == ref
    # a record written before probes were named still loads
    old = r.model_dump(mode="json")
    for c in old["ceilings"]:
        c.pop("probe")
    old.pop("probe_note")
    assert RooflineResult.model_validate(old).ceilings[-1].probe is None


def test_no_measured_ceilings_say_why():
    from factories import valid_probe
    from rooflens.roofline.position import why_unmeasured

    note = "no probe of Test CPU at 2 threads (x); `rooflens hw probe` on a quiet machine measures them"
    r = roofline_position(
        CONFIG, "float32", batch=1, prompt_len=100, gen_len=20, ttft_s=0.1, tpot_s=0.01,
        hints=RooflineHints(), ceilings=ceilings_for(get_profile("cpu-generic"), "float32"), probe_note=note,
    )  # fmt: skip
    assert r.probe_note == note and r.ceilings == []
    probe = valid_probe()
    assert why_unmeasured(None, "float32", note) == note
    assert why_unmeasured(probe, "float32", note) is None
    assert (
        why_unmeasured(probe, "float16", None) == "the probe test-cpu-r-2-0ghz-t2.json has no fp16 GEMM (not measured)"
    )
