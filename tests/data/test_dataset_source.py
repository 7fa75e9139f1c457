"""Prompt sets from data sets (``dataset:SOURCE[:split[:field[:reference]]]``) and ``prompt_len: from-data``:
local data sets built in the test, each bad input a one-line error naming the field, before any measurement."""

from __future__ import annotations

import json
import statistics

import pytest

from rooflens.bench.prompt_lengths import resolve_prompt_lengths
from rooflens.bench.validate import validate_experiment
from rooflens.config import ConfigError
from rooflens.data.dataset_source import parse_spec
from rooflens.data.prompt_sets import PromptSetError, encode, load_prompt_set

datasets = pytest.importorskip("datasets")


@pytest.fixture
def qa_folder(tmp_path):
    """A save_to_disk DatasetDict: train and test splits, columns question / answer / id."""
    rows = {"question": ["What is 2+2?", "Name a colour.", "Capital of France?"], "answer": ["4", "", "Paris"]}
    train = datasets.Dataset.from_dict({**rows, "id": ["a", "b", "c"]})
    test = datasets.Dataset.from_dict({"question": ["Is ice cold?"], "answer": ["Yes"], "id": ["t"]})
    folder = tmp_path / "qa"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    return folder


def test_the_spec_names_source_split_field_and_reference():
    assert parse_spec("dataset:org/name") == parse_spec("dataset:org/name:::")
    spec = parse_spec("dataset:/d/x:validation:article:highlights")
    assert (spec.source, spec.split, spec.field, spec.reference, spec.is_path) == (
        "/d/x",
        "validation",
        "article",
        "highlights",
        True,
    )
    assert not parse_spec("dataset:abisee/cnn_dailymail").is_path


def test_a_save_to_disk_folder_gives_items_with_references(qa_folder):
    items = load_prompt_set(f"dataset:{qa_folder}:train:question:answer")
    assert [(i.id, i.prompt, i.reference) for i in items] == [
        ("a", "What is 2+2?", "4"),
        ("b", "Name a colour.", None),  # an empty answer: a prompt without a reference
        ("c", "Capital of France?", "Paris"),
    ]
    # no split named: test before train
    assert [i.id for i in load_prompt_set(f"dataset:{qa_folder}::question:answer")] == ["t"]


def test_a_jsonl_data_file_reads_the_default_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        {"prompt": "Say hi.", "reference": "Hi."},
        {"messages": None, "prompt": "Count to 3.", "reference": "1 2 3"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    items = load_prompt_set(f"dataset:{path}")
    assert [(i.id, i.prompt, i.reference) for i in items] == [("0", "Say hi.", "Hi."), ("1", "Count to 3.", "1 2 3")]


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":train:query", "has no field 'query' (fields: question, answer, id)"),
        (":train:question:gold", "has no field 'gold' (fields: question, answer, id)"),
        (":dev:question", "has no split 'dev' (splits: train, test)"),
        (":train", "name the prompt field (fields: question, answer, id)"),
    ],
)
def test_a_field_or_split_that_does_not_exist_is_named_with_what_exists(qa_folder, suffix, message):
    with pytest.raises(PromptSetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_prompt_set(f"dataset:{qa_folder}{suffix}")


def test_a_missing_path_and_an_unreachable_hub_id_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(PromptSetError, match="no such file or folder") as err:
        load_prompt_set(f"dataset:{tmp_path / 'nope'}")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network, as on CI: fails at once
    with pytest.raises(PromptSetError, match="could not be loaded from the Hugging Face hub") as err:
        load_prompt_set("dataset:no-such-org/no-such-set")
    assert "\n" not in str(err.value) and "local save_to_disk folder" in str(err.value)


def _exp(workload, model="smollm2-135m"):
    return {
        "name": "d",
        "model": model,
        "engines": [{"name": "hf"}],
        "workloads": [{"gen_len": 4, **workload}],
        "device": "cpu",
    }


def test_bad_data_workloads_are_refused_before_any_measurement(tmp_path):
    with pytest.raises(ConfigError, match=r"workloads\[0\]\.prompt: data set .* no such file or folder"):
        validate_experiment(_exp({"prompt_len": 8, "prompt": f"dataset:{tmp_path / 'nope'}"}))
    with pytest.raises(ConfigError, match="from-data needs a prompt set"):
        validate_experiment(_exp({"prompt_len": "from-data", "prompt": "corpus"}))
    with pytest.raises(ConfigError, match=r"workloads\[0\]\.prompt_len: from-data .* no tokenizer"):
        validate_experiment(_exp({"prompt_len": "from-data", "prompt": "chat"}, model="shape:tiny-llama"))
    with pytest.raises(ConfigError, match="prompt_len"):
        validate_experiment(_exp({"prompt_len": "median", "prompt": "chat"}))


@pytest.mark.slow
def test_from_data_takes_the_sets_median_length_and_keeps_its_spread(smollm2):
    exp = validate_experiment(_exp({"prompt_len": "from-data", "prompt": "summaries"}))
    (w,) = resolve_prompt_lengths(exp).workloads
    lengths = sorted(len(encode(i, smollm2.tokenizer, True)) for i in load_prompt_set("summaries"))
    assert w.prompt_len == round(statistics.median(lengths))
    assert w.prompt_lengths["p50"] == statistics.median(lengths)
    assert lengths[0] <= w.prompt_lengths["p10"] <= w.prompt_lengths["p50"] <= w.prompt_lengths["p90"] <= lengths[-1]
    fixed = validate_experiment(_exp({"prompt_len": 8, "prompt": "summaries"}))
    assert resolve_prompt_lengths(fixed) is fixed
