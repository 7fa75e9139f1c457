"""Schema errors: each bad input gives a message naming the file, the field path and what is allowed."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from factories import REPO_ROOT
from rooflens.bench.validate import load_experiment, validate_experiment
from rooflens.config import ConfigError, builtin_experiment_path

GOOD = {
    "name": "t",
    "model": "shape:tiny-llama",
    "engines": [{"name": "hf"}],
    "workloads": [{"prompt_len": 8, "gen_len": 4, "batch_sizes": [1, 2]}],
}


def with_(**changes):
    d = {**GOOD, **changes}
    return d


def error_of(data) -> str:
    with pytest.raises(ConfigError) as exc:
        validate_experiment(data, "exp.yaml")
    return str(exc.value)


def test_good_experiment_and_defaults():
    exp = validate_experiment(GOOD, "exp.yaml")
    assert exp.model.source == "shape" and exp.model.id == "tiny-llama"
    assert exp.repetitions.warmup == 1 and exp.repetitions.min_reps == 3 and exp.repetitions.min_seconds == 1.0
    assert exp.baseline_label == "hf"
    assert exp.device == "auto" and exp.hardware == "auto"


def test_model_shorthands():
    assert validate_experiment(with_(model="smollm2-135m")).model.source == "builtin"
    m = validate_experiment(with_(model="hf:org/name")).model
    assert (m.source, m.id) == ("hf", "org/name")
    m = validate_experiment(with_(model={"source": "hf", "id": "./local", "trust_remote_code": True})).model
    assert m.trust_remote_code is True


def test_unknown_top_level_key_lists_allowed():
    msg = error_of(with_(engins=[]))
    assert msg.startswith("exp.yaml: engins: unknown key (allowed: name, description, model, engines,")


def test_unknown_nested_key_lists_allowed():
    msg = error_of(with_(repetitions={"warmups": 2}))
    assert msg == "exp.yaml: repetitions.warmups: unknown key (allowed: warmup, min_reps, min_seconds, max_reps)"


def test_unknown_key_in_list_item():
    msg = error_of(with_(workloads=[{"prompt_len": 8, "gen_len": 4, "batch": 2}]))
    assert (
        "exp.yaml: workloads[0].batch: unknown key (allowed: name, prompt_len, prompt_lengths, gen_len, batch_sizes, prompt, chat_template, task_items)"
        in msg
    )


def test_wrong_type():
    msg = error_of(with_(workloads=[{"prompt_len": "long", "gen_len": 4}]))
    assert (
        "exp.yaml: workloads[0].prompt_len: must be a number of tokens from 1 to 131072, or from-data (got 'long')"
        in msg
    )
    assert "'long'" in msg


def test_impossible_values():
    msg = error_of(with_(workloads=[{"prompt_len": 8, "gen_len": 1, "batch_sizes": [1, 0]}]))
    assert "workloads[0].gen_len: Input should be greater than or equal to 2 (got 1)" in msg
    assert "workloads[0].batch_sizes: batch sizes must be >= 1 (got 0)" in msg
    msg = error_of(with_(repetitions={"min_reps": 5, "max_reps": 2}))
    assert "repetitions: max_reps (2) must be >= min_reps (5)" in msg


def test_literal_lists_allowed_values():
    msg = error_of(with_(dtype="fp8"))
    assert "exp.yaml: dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16'" in msg
    msg = error_of(with_(device="tpu"))
    assert msg == "exp.yaml: device: must be one of auto, cpu, cuda, cuda:N (N = 0, 1, ...) (got 'tpu')"


def test_missing_required():
    d = dict(GOOD)
    del d["workloads"]
    assert "exp.yaml: workloads: required field is missing" in error_of(d)


def test_engine_name_and_options_are_validated():
    msg = error_of(with_(engines=[{"name": "warp-drive"}]))
    assert msg.startswith("exp.yaml: engines[0].name: unknown engine 'warp-drive' (registered: ")
    assert "hf" in msg
    msg = error_of(with_(engines=[{"name": "hf", "options": {"cache": "static", "turbo": True}}]))
    assert (
        msg
        == "exp.yaml: engines[0].options.turbo: unknown option for engine 'hf' (allowed: cache, compile, compile_mode, compile_gemv)"
    )
    msg = error_of(with_(engines=[{"name": "hf", "options": {"compile": True}}]))
    assert "engines[0].options: compile: true needs cache: static" in msg


def test_duplicate_labels_and_baseline():
    msg = error_of(with_(engines=[{"name": "hf"}, {"name": "hf"}]))
    assert "engine labels must be unique" in msg and "hf" in msg
    exp = validate_experiment(
        with_(
            engines=[{"name": "hf"}, {"name": "hf", "label": "hf-static", "options": {"cache": "static"}}],
            baseline="hf-static",
        )
    )
    assert exp.baseline_label == "hf-static"
    assert "baseline 'nope' is not one of the engines' labels (hf)" in error_of(with_(baseline="nope"))


def test_hf_only_options_rejected_elsewhere():
    msg = error_of(with_(model={"source": "shape", "id": "tiny-llama", "trust_remote_code": True}))
    assert "model: revision and trust_remote_code apply to source 'hf' only" in msg


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_experiment(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list.yaml: the document must be a mapping"):
        load_experiment(listy)
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        textwrap.dedent("""
        name: t
        model: shape:tiny-llama
        engines: [{name: hf}]
        workloads: [{prompt_len: 8, gen_len: 4}]
        repetitons: {warmup: 0}
    """)
    )
    with pytest.raises(ConfigError, match=r"typo.yaml: repetitons: unknown key"):
        load_experiment(typo)


def test_config_hash_is_stable_and_sensitive():
    a = validate_experiment(GOOD)
    b = validate_experiment(dict(reversed(list(GOOD.items()))))
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != validate_experiment(with_(seed=1)).config_hash()


def test_shipped_experiments_validate():

    load_experiment(builtin_experiment_path())
    for p in sorted((REPO_ROOT / "experiments").glob("*.yaml")):
        load_experiment(p)


def test_unknown_hardware_profile():
    msg = error_of(with_(hardware="h100-sxm-turbo"))
    assert msg.startswith("exp.yaml: hardware: unknown profile 'h100-sxm-turbo' (allowed: auto, ")
    assert "h100-sxm" in msg and "cpu-generic" in msg
    assert validate_experiment(with_(hardware="h100-sxm")).hardware == "h100-sxm"


# ---------------------------------------------------------------------------- hostile files
# Every bad file ends in one ConfigError naming the file (and the line or field) - never another exception.

BASE = textwrap.dedent("""\
    name: t
    model: shape:tiny-llama
    engines: [{name: hf}]
    workloads: [{prompt_len: 8, gen_len: 4}]
""")


def load_error(tmp_path, content: str | bytes, name: str = "exp.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ConfigError) as exc:
        load_experiment(path)
    return str(exc.value)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("name: caf\u00e9\n".encode("latin-1"), "byte 0xe9 at offset 9"),
        (BASE.encode("utf-16"), "byte 0xff at offset 0"),  # with a BOM
        (bytes(range(256)), "byte 0x80 at offset 128"),
    ],
)
def test_file_that_is_not_utf8(tmp_path, content, detail):
    msg = load_error(tmp_path, content)
    assert msg == f"{tmp_path / 'exp.yaml'}: not UTF-8 text ({detail}); save it as UTF-8"


def test_directory_fifo_and_unreadable_file(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"^\S+: is a directory$"):
        load_experiment(tmp_path)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"fifo.yaml: not a regular file$"):
        load_experiment(fifo)  # never blocks waiting for a writer
    locked = tmp_path / "locked.yaml"
    locked.write_text(BASE)

    def no_permission(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", no_permission)  # tests run as root, where chmod 000 does not stop reads
    with pytest.raises(ConfigError) as exc:
        load_experiment(locked)
    assert str(exc.value) == f"{locked}: cannot read the file (Permission denied)"


def test_huge_file(tmp_path):
    msg = load_error(tmp_path, BASE + "description: " + "x" * 2_000_000 + "\n")
    assert msg.endswith("exp.yaml: larger than 1000000 bytes; an experiment file is a few KB")


@pytest.mark.parametrize(("content", "column"), [("[" * 100_000, 33), ("a: " + "{a: " * 5000, 132)])
def test_deep_brackets(tmp_path, content, column):
    msg = load_error(tmp_path, content)
    assert msg.endswith(
        f"exp.yaml: not valid YAML at line 1, column {column}: brackets nested more than 32 levels deep"
    )


def test_deep_indentation(tmp_path):
    msg = load_error(tmp_path, "- " * 10_000 + "x")
    assert msg.endswith("exp.yaml: not valid YAML: nested too deeply")


def test_integer_of_5000_digits(tmp_path):
    msg = load_error(tmp_path, BASE + "seed: " + "9" * 5000 + "\n")
    assert "exp.yaml: not valid YAML at line 5, column 7: cannot read this value (Exceeds the limit" in msg
    assert "integer string conversion" in msg and len(msg) < 300


def test_impossible_date_and_python_tag(tmp_path):
    msg = load_error(tmp_path, BASE + "description: 2024-02-30\n")
    assert (
        "exp.yaml: not valid YAML at line 5, column 14: cannot read this value (day is out of range for month)" in msg
    )
    msg = load_error(tmp_path, BASE + "description: !!python/object/apply:os.system [echo pwned]\n")
    assert "exp.yaml: not valid YAML at line 5, column 14: could not determine a constructor for the tag" in msg


def test_yaml_syntax_error_is_one_line_with_its_position(tmp_path):
    msg = load_error(tmp_path, BASE + "device: [cpu\n")
    assert msg.startswith(f"{tmp_path / 'exp.yaml'}: not valid YAML at line 6, column 1: while parsing a flow sequence")
    assert "\n" not in msg


def test_alias_bomb_and_self_reference(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    msg = load_error(tmp_path, bomb)
    assert msg.endswith("exp.yaml: more than 100000 values (counting each use of a YAML alias)")
    msg = load_error(tmp_path, BASE.replace("{name: hf}", "&e {name: hf, options: {x: *e}}"))
    assert msg.endswith("exp.yaml: nested more than 32 levels deep")


def test_duplicate_keys_are_an_error(tmp_path):
    msg = load_error(tmp_path, BASE + "name: u\n")
    assert msg.endswith("exp.yaml: not valid YAML at line 5, column 1: duplicate key 'name' (first at line 1)")
    msg = load_error(tmp_path, BASE.replace("{name: hf}", "{name: hf, options: {cache: static, cache: dynamic}}"))
    assert "at line 3, column 47: duplicate key 'cache' (first at line 3)" in msg


def test_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        BASE.replace(
            "workloads: [{prompt_len: 8, gen_len: 4}]", "workloads: [{<<: {prompt_len: 8, gen_len: 4}, gen_len: 6}]"
        )
    )
    assert load_experiment(path).workloads[0].gen_len == 6


def test_long_values_are_quoted_short(tmp_path):
    msg = load_error(tmp_path, BASE + "device: " + "y" * 5000 + "\n")
    assert msg.endswith(
        "exp.yaml: device: must be one of auto, cpu, cuda, cuda:N (N = 0, 1, ...) (got '" + "y" * 78 + "…)"
    )
    msg = load_error(tmp_path, BASE.replace("name: t", "name: " + "x" * 5000))
    assert "name: String should have at most 100 characters (got 'xxx" in msg and len(msg) < 250
    msg = load_error(tmp_path, BASE + "? " + "k" * 5000 + "\n: 1\n")  # an explicit key may be that long
    assert "exp.yaml: " + "k" * 79 + "…: unknown key (allowed: name," in msg and len(msg) < 400
    msg = load_error(tmp_path, BASE + "hardware: " + "h" * 5000 + "\n")
    assert "exp.yaml: hardware: unknown profile 'hhh" in msg and len(msg) < 600


def test_many_problems_are_capped(tmp_path):
    msg = load_error(tmp_path, BASE.replace("[{prompt_len: 8, gen_len: 4}]", "[" + "{}, " * 50 + "]"))
    assert msg.count("\n") == 20 and msg.endswith("exp.yaml: ... and 80 more problems")


@pytest.mark.parametrize(
    "device", ["cuda:\u00b2", "cuda:00", "cuda:01", "cuda:-1", "cuda:12345", "cuda: 1", "CPU", "cuda:1\n"]
)
def test_device_must_be_exact(device):
    assert "device: must be one of auto, cpu, cuda, cuda:N" in error_of(with_(device=device))


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "cuda:10", "cuda:9999"])
def test_devices_accepted(device):
    assert validate_experiment(with_(device=device)).device == device


def test_seed_range():
    assert validate_experiment(with_(seed=2**32 - 1)).seed == 2**32 - 1
    assert "seed: Input should be less than or equal to 4294967295 (got 4294967296)" in error_of(with_(seed=2**32))
    assert "seed: Input should be greater than or equal to 0 (got -1)" in error_of(with_(seed=-1))


@pytest.mark.parametrize("name", [".", "..", ".hidden", "-x", "_x", "a/b", "a b", "", "x" * 101])
def test_experiment_name_is_a_safe_folder_name(name):
    assert "exp.yaml: name: " in error_of(with_(name=name))


def test_experiment_name_rule_is_explained():
    msg = error_of(with_(name="../etc"))
    assert msg == (
        "exp.yaml: name: must start with a letter or digit and contain only letters, digits, '_', '.' and '-' "
        "(got '../etc')"
    )
    assert validate_experiment(with_(name="v1.2_run-3")).name == "v1.2_run-3"


def test_shape_model_must_be_shipped():
    msg = error_of(with_(model="shape:../../x"))
    assert msg.startswith("exp.yaml: model.id: unknown shape model '../../x' (allowed: gpt2, llama-2-7b,")
    assert "tiny-llama" in msg
    msg = error_of(with_(model={"source": "shape", "id": "llama-9000"}))
    assert "unknown shape model 'llama-9000'" in msg


def test_builtin_model_must_exist():
    msg = error_of(with_(model="llama-2-7b"))
    assert msg.startswith("exp.yaml: model.id: unknown builtin model 'llama-2-7b' (allowed: smollm2-135m;")
    assert "shape:<config> or hf:<id>" in msg
    assert validate_experiment(with_(model="hf:anything/at-all")).model.id == "anything/at-all"


def test_model_catalog_needs_no_torch():
    code = "import sys, rooflens.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_labels_that_share_a_record_file_name():
    msg = error_of(with_(engines=[{"name": "hf", "label": "a/b"}, {"name": "hf", "label": "a-b"}]))
    assert msg == (
        "exp.yaml: engines: engine labels must be unique; give each a distinct 'label' "
        "('a/b' and 'a-b' map to the same record file name part 'a-b')"
    )
    msg = error_of(with_(engines=[{"name": "hf", "label": "x."}, {"name": "hf", "label": "x"}]))
    assert "'x.' and 'x' map to the same record file name part 'x'" in msg


@pytest.mark.parametrize("label", ["a__b", "_a", "a_"])
def test_separator_is_reserved(label):
    msg = error_of(with_(engines=[{"name": "hf", "label": label}]))
    assert "exp.yaml: engines[0].label: must not contain '__' or start or end with '_'" in msg
    msg = error_of(with_(workloads=[{"name": label, "prompt_len": 8, "gen_len": 4}]))
    assert "exp.yaml: workloads[0].name: must not contain '__' or start or end with '_'" in msg


def test_workloads_that_share_a_record_file_name():
    same = {"prompt_len": 8, "gen_len": 4}
    msg = error_of(with_(workloads=[same, {**same, "prompt": "corpus"}]))
    assert msg == (
        "exp.yaml: workloads: workload names must be unique (an unnamed workload is called p<prompt_len>-g<gen_len>); "
        "give each a distinct 'name' (duplicated: 'p8-g4')"
    )
    msg = error_of(with_(workloads=[{**same, "name": "chat"}, {**same, "name": "chat", "gen_len": 8}]))
    assert "give each a distinct 'name' (duplicated: 'chat')" in msg
    msg = error_of(with_(workloads=[{**same, "name": "a b"}, {**same, "name": "a?b"}]))
    assert "'a b' and 'a?b' map to the same record file name part 'a-b'" in msg
    named = validate_experiment(
        with_(workloads=[{**same, "name": "synthetic"}, {**same, "name": "corpus", "prompt": "corpus"}])
    )
    assert [w.display for w in named.workloads] == ["synthetic", "corpus"]


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "text",
        3,
        1e309,
        [GOOD],
        {1: 2, None: 3},
        {"repetitions": {"min_seconds": float("nan")}},
        with_(model=None),
        with_(engines=[None]),
        with_(engines={"hf": {}}),
        with_(engines=[{"name": "hf", "options": None}]),
        with_(engines=[{"name": ["hf"]}]),
        with_(workloads=[[1]]),
        with_(workloads=[{"prompt_len": 8, "gen_len": 4, "batch_sizes": []}]),
        with_(repetitions=[]),
        with_(threads=float("inf")),
        with_(seed=1e300),
        with_(output={"results_dir": []}),
    ],
)
def test_any_parsed_value_gives_a_config_error(data):
    error_of(data)


def test_nan_is_not_a_number_of_seconds():
    assert "repetitions.min_seconds: Input should be a finite number (got nan)" in error_of(
        with_(repetitions={"min_seconds": float("nan")})
    )


def test_cli_prints_one_line_and_exits_2(tmp_path):
    from typer.testing import CliRunner

    from rooflens.cli import app

    cases = {
        "latin1.yaml": ("name: caf\u00e9\n".encode("latin-1"), "latin1.yaml: not UTF-8 text (byte 0xe9 at offset 9)"),
        "deep.yaml": (b"- " * 10_000, "deep.yaml: not valid YAML: nested too deeply"),
        "dup.yaml": (
            (BASE + "name: u\n").encode(),
            "dup.yaml: not valid YAML at line 5, column 1: duplicate key 'name'",
        ),
        "big.yaml": (
            (BASE + "seed: " + "9" * 5000).encode(),
            "big.yaml: not valid YAML at line 5, column 7: cannot read this value",
        ),
    }
    for name, (content, line) in cases.items():
        (tmp_path / name).write_bytes(content)
        r = CliRunner().invoke(app, ["validate", str(tmp_path / name)])
        assert r.exit_code == 2, r.output
        assert line in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert r.exit_code == 2 and f"{tmp_path}: is a directory" in r.output and "Traceback" not in r.output
