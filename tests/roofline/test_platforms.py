"""The platform comparison: modelled decode tokens/s and tokens/J per profile, and measured records beside them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from factories import make_record
from rooflens.cli import app
from rooflens.results.store import write_record
from rooflens.roofline.analytic import ModelShape, Precision, decode_cost, kv_cache_bytes, weight_storage_bytes
from rooflens.roofline.hardware import Ceiling, HardwareProfile, get_profile, list_profiles
from rooflens.roofline.platforms import (
    BANDWIDTH_ONLY,
    CLASSES,
    NO_CEILINGS,
    NO_TDP,
    measured_points,
    platform_class,
    platform_rows,
)

# Llama-2-7B's shape, written out so that the test does not go through the shipped-config loader
LLAMA2_7B = SimpleNamespace(
    model_type="llama",
    hidden_size=4096,
    num_attention_heads=32,
    num_key_value_heads=32,
    intermediate_size=11008,
    num_hidden_layers=32,
    vocab_size=32000,
    tie_word_embeddings=False,
)
PROMPT, GEN = 512, 128
CONTEXT = PROMPT + GEN // 2  # the mean decode context, as analytic.project uses


def _rows(profiles=None, **kw):
    kw.setdefault("batches", (1, 8))
    return platform_rows(LLAMA2_7B, profiles, prompt_len=PROMPT, gen_len=GEN, **kw)


def _row(rows, profile, batch):
    return next(r for r in rows if r.profile == profile and r.batch == batch)


def _bytes_per_step(batch: int, bits: float = 16.0) -> float:
    shape = ModelShape.from_config(LLAMA2_7B)
    return decode_cost(shape, batch=batch, context_len=CONTEXT, precision=Precision(weight_bits=bits)).bytes


@pytest.fixture(scope="module")
def rows():
    return _rows()


# --------------------------------------------------------------------------- modelled rows


@pytest.mark.parametrize("name", ["h100-sxm", "rtx-4090", "l4", "a100-80g-sxm"])
def test_batch1_memory_bound_equals_bandwidth_over_bytes(rows, name):
    profile = get_profile(name)
    r = _row(rows, name, 1)
    assert r.bound == "memory" and r.compute_dtype == "bf16" and not r.flags
    assert r.tokens_per_s == pytest.approx(profile.bandwidth_si() / _bytes_per_step(1), rel=1e-9)
    assert r.tokens_per_joule == pytest.approx(r.tokens_per_s / profile.tdp.si, rel=1e-12)
    assert "modelled" in r.provenance and "modelled, not measured" in r.energy_provenance


def test_t4_uses_fp16_when_the_datasheet_has_no_bf16(rows):
    r = _row(rows, "t4", 1)
    assert r.compute_dtype == "fp16" and r.peak_flops == pytest.approx(65e12)


def test_batching_raises_memory_bound_throughput(rows):
    r1, r8 = _row(rows, "h100-sxm", 1), _row(rows, "h100-sxm", 8)
    bw = get_profile("h100-sxm").bandwidth_si()
    assert r8.tokens_per_s == pytest.approx(8 * bw / _bytes_per_step(8), rel=1e-9)
    assert 6 * r1.tokens_per_s < r8.tokens_per_s < 8 * r1.tokens_per_s  # the KV cache grows with the batch


def test_bandwidth_only_profile_is_an_upper_bound_and_flagged(rows):
    epyc = get_profile("epyc-9654")
    r = _row(rows, "epyc-9654", 1)
    assert r.peak_flops is None and r.compute_dtype is None
    assert BANDWIDTH_ONLY in r.flags and "upper bound" in r.provenance
    assert r.tokens_per_s == pytest.approx(epyc.bandwidth_si() / _bytes_per_step(1), rel=1e-9)
    assert r.tokens_per_joule == pytest.approx(r.tokens_per_s / 360.0)


def test_profile_without_ceilings_is_listed_not_dropped(rows):
    assert len(rows) == 2 * len(list_profiles())
    for b in (1, 8):
        r = _row(rows, "cpu-generic", b)
        assert r.tokens_per_s is None and r.tokens_per_joule is None and r.bound == "n/a"
        assert NO_CEILINGS in r.flags and "hw probe" in r.provenance


def test_profile_without_tdp_has_no_energy_estimate(rows):
    r = _row(rows, "apple-m3", 1)
    assert r.tokens_per_s == pytest.approx(100e9 / _bytes_per_step(1), rel=1e-9)
    assert r.tokens_per_joule is None and NO_TDP in r.flags
    assert r.energy_provenance == "no TDP on the datasheet"


def test_rows_grouped_by_class_then_fastest_first(rows):
    classes = [r.platform_class for r in rows]
    assert classes == sorted(classes, key=CLASSES.index)
    assert set(classes) == set(CLASSES)
    for cls in CLASSES:
        speeds = [r.tokens_per_s or 0.0 for r in rows if r.platform_class == cls and r.batch == 1]
        assert speeds == sorted(speeds, reverse=True)
    assert rows[-1].profile == "cpu-generic"  # no tokens/s: last of its class


def _toy(bandwidth_gbs=1000.0, bf16_tflops=None, tdp=None, capacity_gib=None) -> HardwareProfile:
    c = lambda v, u: Ceiling(value=v, unit=u, source="test")  # noqa: E731
    return HardwareProfile(
        name="toy",
        display_name="Toy",
        kind="gpu",
        category="pc_gpu",
        vendor="test",
        memory_bandwidth=c(bandwidth_gbs, "GB/s"),
        peak_flops={"bf16": c(bf16_tflops, "TFLOP/s")} if bf16_tflops else {},
        tdp=c(tdp, "W") if tdp else None,
        memory_capacity=c(capacity_gib, "GiB") if capacity_gib else None,
    )


def test_compute_bound_when_the_peak_is_low():
    toy = _toy(bandwidth_gbs=1000.0, bf16_tflops=1.0, tdp=100.0)
    (r,) = _rows([toy], batches=(64,))
    shape = ModelShape.from_config(LLAMA2_7B)
    cost = decode_cost(shape, batch=64, context_len=CONTEXT, precision=Precision())
    assert r.bound == "compute"
    assert r.tokens_per_s == pytest.approx(64 / cost.time_at_roofline(1000e9, 1e12), rel=1e-9)
    assert r.tokens_per_s < 64 * 1000e9 / cost.bytes  # below the bandwidth-only bound


def test_low_bit_weights_and_memory_fit():
    toy = _toy(capacity_gib=8.0)
    r16 = _row(_rows([toy]), "toy", 8)
    r4 = _row(_rows([toy], bits=4), "toy", 8)
    assert r4.weight_bits == pytest.approx(4 + 16 / 128)
    assert r4.tokens_per_s > 2.5 * r16.tokens_per_s
    shape = ModelShape.from_config(LLAMA2_7B)
    need = weight_storage_bytes(shape, Precision()) + kv_cache_bytes(
        shape, batch=8, seq_len=PROMPT + GEN, precision=Precision()
    )
    assert r16.memory_needed == pytest.approx(need)
    assert r16.fits is False and any(f.startswith("does not fit") for f in r16.flags)
    assert r4.fits is True
    assert _row(_rows([_toy()]), "toy", 1).fits is None  # no capacity on the datasheet


def test_platform_class():
    assert [platform_class(c) for c in ("cloud_gpu", "pc_gpu", "cpu", "edge")] == [
        "cloud GPU",
        "PC GPU",
        "CPU/edge",
        "CPU/edge",
    ]
    with pytest.raises(ValueError, match="unknown profile category"):
        platform_class("tpu")


# --------------------------------------------------------------------------- measured records


def _llama_record(**kw):
    r = make_record(**kw)
    model = r.model.model_copy(update={"num_layers": 32, "hidden_size": 4096, "vocab_size": 32000})
    hp = {"name": "rtx-4090", "display_name": "NVIDIA GeForce RTX 4090", "reason": "test"}
    return r.model_copy(update={"model": model, "hardware_profile": hp, "device": "cuda:0"})


def test_measured_points_keep_energy_only_when_measured():
    with_energy = _llama_record(batch=8, decode=400.0, tok_per_j=1.5, seed=1)
    without = _llama_record(batch=1, decode=60.0, seed=2)
    failed = make_record(status="failed")
    other_model = make_record(decode=999.0)  # the factory's tiny model
    points, notes = measured_points([with_energy, without, failed, other_model], LLAMA2_7B)
    assert [(p.batch, p.platform_class, p.profile) for p in points] == [
        (8, "PC GPU", "rtx-4090"),
        (1, "PC GPU", "rtx-4090"),
    ]
    assert points[0].tokens_per_joule == 1.5 and points[1].tokens_per_joule is None
    assert points[0].tokens_per_s == pytest.approx(with_energy.metrics["decode_tok_s"].median)
    assert any("status failed" in n for n in notes) and any("another model" in n for n in notes)
    everything, _ = measured_points([with_energy, other_model])
    assert len(everything) == 2
    assert everything[1].platform_class == "CPU/edge"  # cpu-generic


# --------------------------------------------------------------------------- command line

runner = CliRunner()


def test_cli_hw_all_json_lists_every_profile():
    r = runner.invoke(app, ["roofline", "llama-2-7b", "--hw", "all", "--batch", "1,8", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert len(data["modelled"]) == 2 * len(list_profiles())
    generic = [m for m in data["modelled"] if m["profile"] == "cpu-generic"]
    assert [m["tokens_per_s"] for m in generic] == [None, None]
    assert data["measured"] == []


@pytest.mark.slow
def test_cli_hw_all_table_png_and_records(tmp_path):
    folder = tmp_path / "results"
    write_record(folder, _llama_record(batch=1, decode=60.0, tok_per_j=0.2))
    png = tmp_path / "platforms.png"
    r = runner.invoke(
        app,
        ["roofline", "llama-2-7b", "--hw", "all", "--batch", "1,8", "--records", str(folder), "--png", str(png)],
    )
    assert r.exit_code == 0, r.output
    for text in ("cloud GPU", "PC GPU", "CPU/edge", "cpu-generic", "no datasheet ceilings", "modelled", "measured"):
        assert text in r.output, text
    assert png.stat().st_size > 10_000


def test_cli_hw_list_and_errors():
    r = runner.invoke(app, ["roofline", "llama-2-7b", "--hw", "h100-sxm,apple-m3", "--json"])
    assert r.exit_code == 0, r.output
    assert [m["profile"] for m in json.loads(r.output)["modelled"]] == ["h100-sxm", "apple-m3"]
    r = runner.invoke(app, ["roofline", "llama-2-7b", "--hw", "h100-sxm,nope"])
    assert r.exit_code == 2 and "unknown hardware profile 'nope'" in r.output
    r = runner.invoke(app, ["roofline", "llama-2-7b", "--hw", "all", "--bits", "16,4"])
    assert r.exit_code == 2 and "one --bits value" in r.output
    r = runner.invoke(app, ["roofline", "llama-2-7b", "--hw", "h100-sxm", "--records", "."])
    assert r.exit_code == 2 and "--records goes with --hw all" in r.output
