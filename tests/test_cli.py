"""The command line as a user meets it: exit codes and what it prints."""

import textwrap

import pytest
from typer.testing import CliRunner

from rooflens.cli import app
from rooflens.results.store import load_records

runner = CliRunner()

TINY = textwrap.dedent("""
    name: tiny
    model: shape:tiny-llama
    engines: [{name: hf}]
    workloads: [{prompt_len: 8, gen_len: 4, batch_sizes: [1, 2]}]
    repetitions: {warmup: 1, min_reps: 2, min_seconds: 0}
    device: cpu
""")


@pytest.fixture
def tiny_yaml(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def test_validate_ok_and_bad(tiny_yaml, tmp_path):
    r = runner.invoke(app, ["validate", str(tiny_yaml)])
    assert r.exit_code == 0 and "ok - model shape:tiny-llama, 1 engine(s), 2 cell(s)" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("gen_len: 4", "gen_len: 4, temprature: 0"))
    r = runner.invoke(app, ["validate", str(bad)])
    assert r.exit_code == 2
    assert "workloads[0].temprature: unknown key" in r.output


def test_run_writes_records_and_prints_the_summary(tiny_yaml, tmp_path):
    r = runner.invoke(app, ["run", str(tiny_yaml), "--results", str(tmp_path / "res"), "--quiet"])
    assert r.exit_code == 0, r.output
    for col in ("engine", "TTFT ms", "TPOT ms", "decode tok/s", "e2e tok/s", "tok/J", "peak mem MB"):
        assert col in r.output
    assert "2/2 cells ok" in r.output
    records = load_records(tmp_path / "res")
    assert sorted(rec.cell.batch_size for rec in records) == [1, 2]
    r = runner.invoke(app, ["show", str(tmp_path / "res")])
    assert r.exit_code == 0 and "decode tok/s" in r.output


def test_run_refuses_a_model_that_does_not_fit(tmp_path, monkeypatch):
    import psutil

    class Small:
        available, total = 10**9, 24 * 10**9

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Small)
    p = tmp_path / "big.yaml"
    p.write_text(TINY.replace("shape:tiny-llama", "shape:llama-3-8b"))
    r = runner.invoke(app, ["run", str(p), "--results", str(tmp_path / "res"), "--quiet"])
    assert r.exit_code == 2 and "does not fit" in r.output


def test_engines_and_models_and_hw():
    r = runner.invoke(app, ["engines"])
    assert r.exit_code == 0 and "hf" in r.output and "cpu: available" in r.output
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "smollm2-135m" in r.output and "shape:llama-2-7b" in r.output
    r = runner.invoke(app, ["hw", "list"])
    assert r.exit_code == 0 and "h100-sxm" in r.output and "rtx-4090" in r.output
    r = runner.invoke(app, ["hw", "show", "a100-80g-sxm"])
    assert r.exit_code == 0 and "2039 GB/s" in r.output
    r = runner.invoke(app, ["hw", "show", "a100-90g"])
    assert r.exit_code == 2 and "a100-80g-sxm" in r.output  # the known names are listed
    r = runner.invoke(app, ["hw", "detect"])
    assert r.exit_code == 0 and "CPU:" in r.output and "profile for" in r.output


def test_show_on_empty_folder(tmp_path):
    r = runner.invoke(app, ["show", str(tmp_path)])
    assert r.exit_code == 2 and "no records" in r.output


def test_roofline_what_if_json_and_png(tmp_path):
    import json

    png = tmp_path / "r.png"
    r = runner.invoke(app, ["roofline", "llama-2-7b", "--hw", "a100-80g-sxm", "--batch", "1,8", "--prompt", "1",
                            "--gen", "1", "--bits", "16,4", "--json", "--png", str(png)])  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    assert data["hardware"] == "a100-80g-sxm" and len(data["projections"]) == 4
    p = data["projections"][0]  # batch 1, 16-bit
    params = 6_738_415_616
    embedding_rows_not_read = 32000 * 4096 - 4096  # decode reads one row of the embedding table
    assert p["decode"]["totals"]["weight_bytes"] == 2 * (params - embedding_rows_not_read)
    assert p["decode"]["bound"] == "memory"
    bw = data["ceilings"]["bandwidth"]
    assert p["decode"]["tokens_per_s"] == pytest.approx(bw / p["decode"]["totals"]["bytes"], rel=0.01)
    for key in ("ops", "totals", "intensity", "bound", "tokens_per_s"):
        assert key in p["prefill"] and key in p["decode"]
    int4 = data["projections"][1]
    assert int4["decode"]["tokens_per_s"] > 3 * p["decode"]["tokens_per_s"]  # 4.125 bits/weight vs 16
    assert png.stat().st_size > 10000


def test_roofline_errors():
    r = runner.invoke(app, ["roofline", "llama-9b"])
    assert r.exit_code == 2 and "unknown model 'llama-9b'" in r.output
    r = runner.invoke(app, ["roofline", "llama-2-7b", "--hw", "a100-80g-sxm", "--bits", "5"])
    assert r.exit_code == 2 and "allowed 32, 16, 8, 4, 3, 2" in r.output
    r = runner.invoke(app, ["roofline", "llama-2-7b", "--hw", "a100-80g-sxm", "--batch", "0"])
    assert r.exit_code == 2 and "positive integers" in r.output


def test_hw_probe_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path))
    r = runner.invoke(app, ["hw", "probe", "--device", "cpu", "--quick"])
    assert r.exit_code == 0, r.output
    assert "bandwidth GB/s" in r.output and "fp32 TFLOP/s" in r.output and "saved:" in r.output
    assert list((tmp_path / "probes").glob("*.json"))
