"""Schema errors: each bad input gives a message naming the file, the field path and what is allowed."""

import textwrap

import pytest

from rooflens.config import ConfigError, builtin_experiment_path, load_experiment, validate_experiment

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
    assert "exp.yaml: workloads[0].batch: unknown key (allowed: name, prompt_len, gen_len, batch_sizes, prompt)" in msg


def test_wrong_type():
    msg = error_of(with_(workloads=[{"prompt_len": "long", "gen_len": 4}]))
    assert "exp.yaml: workloads[0].prompt_len: Input should be a valid integer" in msg
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
    assert "exp.yaml: device: device must be one of auto, cpu, cuda, cuda:N (got 'tpu')" in msg


def test_missing_required():
    d = dict(GOOD)
    del d["workloads"]
    assert "exp.yaml: workloads: required field is missing" in error_of(d)


def test_engine_name_and_options_are_validated():
    msg = error_of(with_(engines=[{"name": "warp-drive"}]))
    assert msg.startswith("exp.yaml: engines[0].name: unknown engine 'warp-drive' (registered: ")
    assert "hf" in msg
    msg = error_of(with_(engines=[{"name": "hf", "options": {"cache": "static", "turbo": True}}]))
    assert msg == "exp.yaml: engines[0].options.turbo: unknown option for engine 'hf' (allowed: cache, compile, compile_mode)"
    msg = error_of(with_(engines=[{"name": "hf", "options": {"compile": True}}]))
    assert "engines[0].options: compile: true needs cache: static" in msg


def test_duplicate_labels_and_baseline():
    msg = error_of(with_(engines=[{"name": "hf"}, {"name": "hf"}]))
    assert "engine labels must be unique" in msg and "hf" in msg
    exp = validate_experiment(with_(engines=[{"name": "hf"}, {"name": "hf", "label": "hf-static", "options": {"cache": "static"}}], baseline="hf-static"))
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
    typo.write_text(textwrap.dedent("""
        name: t
        model: shape:tiny-llama
        engines: [{name: hf}]
        workloads: [{prompt_len: 8, gen_len: 4}]
        repetitons: {warmup: 0}
    """))
    with pytest.raises(ConfigError, match=r"typo.yaml: repetitons: unknown key"):
        load_experiment(typo)


def test_config_hash_is_stable_and_sensitive():
    a = validate_experiment(GOOD)
    b = validate_experiment(dict(reversed(list(GOOD.items()))))
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != validate_experiment(with_(seed=1)).config_hash()


def test_shipped_experiments_validate():
    from pathlib import Path

    load_experiment(builtin_experiment_path())
    for p in sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")):
        load_experiment(p)


def test_unknown_hardware_profile():
    msg = error_of(with_(hardware="h100-sxm-turbo"))
    assert msg.startswith("exp.yaml: hardware: unknown profile 'h100-sxm-turbo' (allowed: auto, ")
    assert "h100-sxm" in msg and "cpu-generic" in msg
    assert validate_experiment(with_(hardware="h100-sxm")).hardware == "h100-sxm"
