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


@pytest.mark.slow
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
    r = runner.invoke(
        app,
        [
            "roofline",
            "llama-2-7b",
            "--hw",
            "a100-80g-sxm",
            "--batch",
            "1,8",
            "--prompt",
            "1",
            "--gen",
            "1",
            "--bits",
            "16,4",
            "--json",
            "--png",
            str(png),
        ],
    )
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


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_hw_probe_quick(tmp_path, monkeypatch, one_thread):
    from factories import FakeActivity, lenient_probe_rules

    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path))
    FakeActivity().install(monkeypatch)  # quiet, and rules nothing fails: the timing itself is not tested
    lenient_probe_rules(monkeypatch)
    r = runner.invoke(app, ["hw", "probe", "--device", "cpu", "--quick", "--threads", "1"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())  # the table's title wraps where the machine's name is long
    assert "bandwidth GB/s" in out and "fp32 TFLOP/s" in out and "saved:" in out
    assert "attempt 1: valid" in out and "valid at attempt 1 of 1" in out
    assert "at 1 threads" in out
    assert [p.name[-8:] for p in (tmp_path / "probes").glob("*.json")] == ["-t1.json"]


def test_hw_probe_refused_on_a_busy_machine_saves_nothing(tmp_path, monkeypatch, one_thread):
    from factories import FakeActivity

    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path))
    FakeActivity(share=0.5, load=(1.8, 1.0, 0.5)).install(monkeypatch)
    r = runner.invoke(app, ["hw", "probe", "--device", "cpu", "--threads", "1"])
    assert r.exit_code == 1, r.output
    assert "refused: no valid probe" in r.output and "in 3 attempts; nothing saved" in r.output
    assert "other processes used 50.0 % of the CPU time before the measurement" in r.output
    assert "`rooflens hw probe --threads 1`" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "probes").exists()
    r = runner.invoke(app, ["hw", "probe", "--device", "cpu", "--json"])
    assert r.exit_code == 1 and '"refused"' in r.output and '"attempts"' in r.output


def test_hw_probe_threads_is_for_cpus():
    r = runner.invoke(app, ["hw", "probe", "--device", "cuda", "--threads", "2"])
    assert r.exit_code == 2 and ("for --device cpu only" in r.output or "CUDA" in r.output)


# ---------------------------------------------------------------------------- exit codes and one-line errors


def scripted(tmp_path, options: str, name="s.yaml", extra=""):
    p = tmp_path / name
    p.write_text(TINY.replace("engines: [{name: hf}]", f"engines: [{{name: scripted, options: {options}}}]") + extra)
    return p


@pytest.mark.slow
def test_run_exits_1_when_a_cell_failed_and_0_when_one_is_only_unavailable(test_engines, tmp_path):
    r = runner.invoke(
        app, ["run", str(scripted(tmp_path, "{fail_on_batch: 2}")), "--results", str(tmp_path / "a"), "-q"]
    )
    assert r.exit_code == 1, r.output
    assert "1/2 cells ok" in r.output and "1 cell(s) failed: scripted p8-g4 b2" in r.output
    assert len(load_records(tmp_path / "a")) == 2  # the failure is on disk too
    p = tmp_path / "u.yaml"
    p.write_text(TINY.replace("engines: [{name: hf}]", "engines: [{name: hf}, {name: cuda-only}]"))
    r = runner.invoke(app, ["run", str(p), "--results", str(tmp_path / "b"), "-q"])
    assert r.exit_code == 0, r.output
    assert "2/4 cells ok" in r.output and "unavailable" in r.output


def test_run_help_documents_the_exit_codes():
    r = runner.invoke(app, ["run", "--help"])
    assert r.exit_code == 0
    for phrase in (
        "0 every cell ok or unavailable",
        "1 at least one cell failed",
        "2 the experiment could not start",
        "4 with --strict, a cell's measurement is invalid",
        "130",
    ):
        assert phrase in " ".join(r.output.split())


def test_ctrl_c_says_what_was_kept(test_engines, tmp_path):
    r = runner.invoke(
        app, ["run", str(scripted(tmp_path, "{interrupt_on_batch: 2}")), "--results", str(tmp_path / "r"), "-q"]
    )
    assert r.exit_code == 130
    out = " ".join(r.output.split())
    assert (
        "interrupted: the sweep stopped after 1 of 2 cell(s); their records are in" in out
        and str(tmp_path / "r") in out
    )
    assert "Traceback" not in r.output


def test_unwritable_output_folders_are_refused_before_measuring(test_engines, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    r = runner.invoke(app, ["run", str(scripted(tmp_path, "{}")), "--results", str(blocker / "res"), "-q"])
    assert r.exit_code == 2 and "results folder" in r.output and "cannot write there" in r.output
    report_blocked = scripted(tmp_path, "{}", "rb.yaml", f"output: {{reports_dir: {blocker / 'rep'}}}\n")
    r = runner.invoke(app, ["run", str(report_blocked), "--results", str(tmp_path / "res"), "--report", "-q"])
    assert r.exit_code == 2 and "reports folder" in r.output
    assert not (tmp_path / "res").exists()  # refused before the first cell: nothing measured, nothing lost


@pytest.mark.slow
def test_report_name_cannot_escape_the_reports_folder(test_engines, tmp_path):
    runner.invoke(app, ["run", str(scripted(tmp_path, "{}")), "--results", str(tmp_path / "res"), "-q"])
    for bad in ("..", ".", "../x", "a/b"):
        r = runner.invoke(app, ["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep"), "--name", bad])
        assert r.exit_code == 2 and "--name" in r.output, (bad, r.output)
    assert not list(tmp_path.glob("*.html")) and not (tmp_path / "rep").exists()
    r = runner.invoke(
        app, ["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep"), "--markdown", str(tmp_path)]
    )
    assert r.exit_code == 2 and "is a directory" in r.output


@pytest.mark.slow
def test_labels_with_math_text_render(test_engines, tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text(
        TINY.replace(
            "engines: [{name: hf}]", "engines: [{name: hf, label: '$\\undefined$'}, {name: scripted, label: 'a$b'}]"
        )
    )
    r = runner.invoke(app, ["run", str(p), "--results", str(tmp_path / "res"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "$\\undefined$" in (tmp_path / "rep" / "tiny.html").read_text()


def test_a_broken_json_file_among_records_is_skipped_with_a_one_line_warning(tmp_path):
    from factories import make_record
    from rooflens.results.store import write_record

    write_record(tmp_path / "res", make_record())
    (tmp_path / "res" / "latin1.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    for args in (
        ["show", str(tmp_path / "res")],
        ["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep")],
        ["compare", str(tmp_path / "res"), str(tmp_path / "res")],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code in (0, 3), (args, r.output)  # the other records still count (compare: inconclusive)
        out = " ".join(r.output.split())
        assert "warning: skipped" in out and "latin1.json: not readable JSON" in out and "Traceback" not in out


def test_roofline_without_ceilings_prints_flops_and_bytes(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path))  # no saved probe: this CPU has no ceilings
    r = runner.invoke(app, ["roofline", "smollm2-135m", "--batch", "1", "--prompt", "16", "--gen", "8"])
    assert r.exit_code == 0, r.output
    assert "analytic cost per phase" in r.output and "GFLOP" in r.output and "rooflens hw probe" in r.output
    r = runner.invoke(app, ["roofline", "smollm2-135m", "--prompt", "16", "--gen", "8", "--json"])
    data = json.loads(r.stdout)
    assert data["ceilings"] is None and data["costs"][0]["decode"]["flops"] > 0
    assert "tokens_per_s" not in data["costs"][0]["decode"]  # nothing to divide by: no invented time


def test_roofline_kv_bits_follow_the_activations(tmp_path):
    import json

    def kv(*args):
        r = runner.invoke(
            app, ["roofline", "llama-2-7b", "--hw", "a100-80g-sxm", "--prompt", "64", "--gen", "2", "--json", *args]
        )
        return json.loads(r.stdout)["projections"][0]["decode"]["totals"]["kv_bytes"]

    assert kv("--bits", "32") == pytest.approx(2 * kv("--bits", "16"))
    assert kv("--bits", "32", "--kv-bits", "16") == pytest.approx(kv("--bits", "16"))
    r = runner.invoke(app, ["roofline", "llama-2-7b", "--hw", "a100-80g-sxm", "--png", str(tmp_path)])
    assert r.exit_code == 2 and "--png" in r.output and "is a directory" in r.output


def test_hw_device_options_are_checked():
    for cmd in (["hw", "detect", "--device", "bogus"], ["hw", "probe", "--device", "cuda:²", "--no-save"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2 and "allowed auto, cpu, cuda, cuda:N" in r.output and "Traceback" not in r.output


def test_train_early_exit_caches_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path))
    args = [
        "train",
        "early-exit",
        "shape:tiny-llama",
        "--prompts",
        "3",
        "--prompt-len",
        "6",
        "--gen-len",
        "4",
        "--draft-vocab",
        "64",
        "--predictor-epochs",
        "5",
        "--draft-epochs",
        "1",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "trained and saved" in first.output and "candidate_hit_rate_validation" in first.output
    assert list((tmp_path / "early-exit").glob("shape-tiny-llama-*.pt"))
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already cached" in again.output
    for bad, says in (
        (["--draft", "eagle"], "--draft: draft 'eagle' does not exist"),
        (["--k", "0"], "--k: Input should be"),
        (["--dtype", "int3"], "--dtype 'int3': allowed float32"),
        (["--prompts", "1"], "--prompts: Input should be"),  # the flag, not the option (train_prompts)
    ):
        result = runner.invoke(app, args + bad)
        assert result.exit_code == 2 and says in result.output, result.output
    walk = runner.invoke(app, ["train", "early-exit", "shape:tiny-gpt2"])
    assert walk.exit_code == 2 and "cannot walk the layer stack of model type 'gpt2'" in walk.output


def test_train_mixed_precision_tunes_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path))
    args = [
        "train",
        "mixed-precision",
        "shape:tiny-llama",
        "--group-size",
        "32",
        "--prompts",
        "4",
        "--prompt-len",
        "6",
        "--gen-len",
        "6",
        "--classifier-epochs",
        "3",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "tuned now" in first.output and "rouge_l_by_switch_8->4" in first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "cache " in again.output
    bad = runner.invoke(app, args + ["--ladder", "4,8"])
    assert bad.exit_code == 2 and "--ladder: ladder [4, 8]: bits must strictly decrease" in bad.output


def test_train_flags_come_from_the_engine_option_schemas():
    import typer.main

    from rooflens.cli.train import EARLY_EXIT_FLAGS, MIXED_PRECISION_FLAGS
    from rooflens.engines.options.early_exit import EarlyExitOptions
    from rooflens.engines.options.mixed_precision import MixedPrecisionOptions

    train = typer.main.get_command(app).commands["train"]
    for command, schema, flags in (
        ("early-exit", EarlyExitOptions, EARLY_EXIT_FLAGS),
        ("mixed-precision", MixedPrecisionOptions, MIXED_PRECISION_FLAGS),
    ):
        params = {p.name: p for p in train.commands[command].params}
        for flag in flags:
            field = schema.model_fields[flag.field]
            expected = ",".join(map(str, field.default)) if isinstance(field.default, list) else field.default
            assert params[flag.param].default == expected, (command, flag)
            assert params[flag.param].help == (flag.help or field.description), (command, flag)


@pytest.mark.slow
def test_run_strict_exits_4_on_an_invalid_cell_and_without_it_only_says_so(
    test_engines, virtual_time, quiet_machine, tmp_path
):
    noisy = tmp_path / "noisy.yaml"
    noisy.write_text(
        TINY.replace("engines: [{name: hf}]", "engines: [{name: paced, options: {token_s: [0.01, 0.002, 0.02]}}]")
        .replace("batch_sizes: [1, 2]", "batch_sizes: [1]")
        .replace("min_reps: 2", "min_reps: 3")
    )
    r = runner.invoke(app, ["run", str(noisy), "--results", str(tmp_path / "a"), "-q"])
    assert r.exit_code == 0, r.output
    assert "1 cell(s) invalid (--strict fails on them): paced p8-g4 b1 (cv " in r.output
    assert "Not ranked, measurement invalid: paced at batch 1 (cv " in r.output
    r = runner.invoke(app, ["run", str(noisy), "--results", str(tmp_path / "b"), "-q", "--strict"])
    assert r.exit_code == 4, r.output
    quiet = tmp_path / "quiet.yaml"
    quiet.write_text(noisy.read_text().replace("[0.01, 0.002, 0.02]", "[0.01]"))
    r = runner.invoke(app, ["run", str(quiet), "--results", str(tmp_path / "c"), "-q", "--strict"])
    assert r.exit_code == 0 and "cell(s) invalid" not in r.output and "│ valid │" in r.output, r.output
