"""Prompt sets: the shipped files, JSON Lines errors named by line and field, the fit rule, the chat template,
and a workload that measures them."""

from __future__ import annotations

import json

import pytest

from rooflens.bench.validate import validate_experiment
from rooflens.config import ConfigError
from rooflens.data.prompt_sets import (
    SHIPPED_SETS,
    PromptSetError,
    encode,
    fit,
    load_prompt_set,
    parse_jsonl,
)
from rooflens.data.prompts import corpus_ids, make_prompts


@pytest.mark.parametrize("name", SHIPPED_SETS)
def test_the_shipped_sets_have_a_dozen_prompts_each_with_a_reference(name):
    items = load_prompt_set(name)
    assert len(items) == 12
    assert all(i.reference for i in items)
    assert len({i.id for i in items}) == 12


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "a"}\nnot json\n', "line 2: not JSON"),
        ('{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "line 1: needs exactly one of"),
        ('{"text": "a"}', "line 1: unknown field(s) text"),
        ('{"messages": []}', "line 1: 'messages' must be a non-empty list"),
        ('{"messages": [{"role": "user"}]}', "line 1: 'messages' must be a non-empty list"),
        ('{"prompt": "a", "reference": 3}', "line 1: 'reference' must be a non-empty string"),
        ('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}', "id 'x' is used more than once"),
        ("[1, 2]", "line 1: must be a JSON object"),
        ("\n\n", "no prompts"),
    ],
)
def test_a_bad_line_is_named_with_what_is_wrong(text, message):
    with pytest.raises(PromptSetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_jsonl(text, "f.jsonl")


def test_items_read_prompts_chats_references_and_ids():
    text = "\n".join(
        json.dumps(o)
        for o in (
            {"prompt": "Hello", "reference": "Hi"},
            {"id": "q2", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]},
        )
    )
    a, b = parse_jsonl(text, "f.jsonl")
    assert (a.id, a.prompt, a.messages, a.reference) == ("0", "Hello", None, "Hi")
    assert (b.id, b.prompt, b.messages, b.reference) == ("q2", None, (("system", "Be brief."), ("user", "2+2?")), None)


def test_fit_cuts_the_middle_or_fills_the_left_with_the_filler():
    ids = list(range(10))
    assert fit(ids, 10, [99]) == ids
    assert fit(ids, 6, [99]) == [0, 1, 2, 7, 8, 9]  # head and tail kept
    assert fit(ids, 7, [99]) == [0, 1, 2, 6, 7, 8, 9]
    assert fit(ids, 13, [97, 98]) == [97, 98, 97] + ids
    with pytest.raises(PromptSetError, match="no filler"):
        fit(ids, 12, [])


def test_a_file_that_is_missing_is_named(tmp_path):
    with pytest.raises(PromptSetError, match="cannot be read"):
        load_prompt_set(f"file:{tmp_path / 'nope.jsonl'}")
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "one"}\n{"prompt": "two", "reference": "2"}\n')
    assert [i.prompt for i in load_prompt_set(f"file:{good}")] == ["one", "two"]


def _experiment(prompt: str) -> dict:
    return {
        "name": "x",
        "model": "shape:tiny-llama",
        "engines": [{"name": "hf"}],
        "workloads": [{"prompt": prompt, "prompt_len": 32, "gen_len": 4}],
    }


def test_the_schema_names_the_allowed_prompt_sources_and_validate_reads_the_file(tmp_path):
    with pytest.raises(
        ConfigError, match=r"workloads\[0\]\.prompt: .*synthetic, corpus, chat, summaries, file:PATH or dataset:SOURCE"
    ):
        validate_experiment(_experiment("shakespeare"), "e.yaml")
    with pytest.raises(ConfigError, match=r"workloads\[0\]\.prompt: .*cannot be read"):
        validate_experiment(_experiment(f"file:{tmp_path / 'missing.jsonl'}"), "e.yaml")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": 1}\n')
    with pytest.raises(ConfigError, match=r"workloads\[0\]\.prompt: .*line 2: 'prompt' must be a non-empty string"):
        validate_experiment(_experiment(f"file:{bad}"), "e.yaml")
    assert validate_experiment(_experiment("chat"), "e.yaml").workloads[0].chat_template


def test_a_prompt_set_needs_a_tokenizer(tiny_llama):
    with pytest.raises(ValueError, match="needs a tokenizer"):
        make_prompts(tiny_llama, "chat", 1, 16, seed=0)


@pytest.mark.slow
def test_chat_prompts_go_through_the_template_and_fit_the_length(smollm2):
    tok = smollm2.tokenizer
    item = load_prompt_set("chat")[0]
    templated = encode(item, tok, chat_template=True)
    plain = encode(item, tok, chat_template=False)
    assert templated != plain and len(templated) > len(plain)
    assert tok.decode(templated).rstrip().endswith("assistant")  # the answer's turn is opened
    rows = make_prompts(smollm2, "chat", 3, 48, seed=1)
    assert rows.shape == (3, 48)
    # each row ends with its own templated prompt, corpus text before it
    for i, row in enumerate(rows.tolist()):
        ids = encode(load_prompt_set("chat")[1 + i], tok, chat_template=True)
        assert row[-len(ids) :] == ids
        assert row[: 48 - len(ids)] == corpus_ids(tok)[: 48 - len(ids)]
    long = make_prompts(smollm2, "summaries", 1, 40, seed=0)[0].tolist()
    full = encode(load_prompt_set("summaries")[0], tok, chat_template=True)
    assert long == full[:20] + full[-20:]
