"""Task quality: each item of a prompt set answered by the engine up to EOS, scored against its reference and
against the baseline engine's answer; the baseline's answers reach the jobs after its own."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from factories import ScriptedEngine, tiny_experiment
from rooflens.bench import task_quality as tq
from rooflens.bench.job import Finished
from rooflens.bench.runner import ExperimentRunner
from rooflens.bench.validate import validate_experiment
from rooflens.config import Workload
from rooflens.data.prompt_sets import PromptItem
from rooflens.engines.decoding import eos_allowed, greedy_config, mask_eos
from rooflens.results.store import load_records

CPU = torch.device("cpu")


def test_eos_is_masked_outside_the_task_pass_and_free_inside_it(tiny_llama):
    logits = torch.tensor([[1.0, 5.0, 2.0]])
    assert mask_eos(logits, [1]).argmax().item() == 2
    assert greedy_config(tiny_llama.model, 7).min_new_tokens == 7
    with eos_allowed():
        assert mask_eos(logits, [1]).argmax().item() == 1
        assert greedy_config(tiny_llama.model, 7).min_new_tokens is None
    assert mask_eos(logits, [1]).argmax().item() == 2  # restored on the way out


class _Fixed(ScriptedEngine):
    """Returns ``row`` (and records whether EOS was allowed when it ran)."""

    name = "fixed"
    row: list[int] = []

    def generate(self, input_ids, max_new_tokens, clock):
        from rooflens.engines.decoding import eos_masked

        self.masked = eos_masked()
        for _ in range(max_new_tokens):
            clock.tokens(1)
        return torch.tensor([self.row[:max_new_tokens]])


def _fixed(tiny_llama, row):
    engine = _Fixed(_Fixed.Options(), tiny_llama)
    engine.row = row
    return engine


def test_an_answer_ends_at_its_first_eos_and_is_cut_at_gen_len_without_one(tiny_llama):
    engine = _fixed(tiny_llama, [5, 6, 2, 7, 2, 8])
    assert tq.answer(engine, [1, 2, 3], 6, [2], CPU) == [5, 6]
    assert engine.masked is False  # the task pass lets the engine choose EOS
    assert tq.answer(engine, [1, 2, 3], 6, [9], CPU) == [5, 6, 2, 7, 2, 8]
    assert tq.answer(engine, [1, 2, 3], 3, [8], CPU) == [5, 6, 2]


class _WordTokenizer:
    """Token id i is the word ``w<i>``; id 0 is a special token (dropped by ``skip_special_tokens``)."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(w[1:]) for w in text.split()]}

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i == 0))


def _model(tiny_llama, tokenizer=None, context=None):
    config = SimpleNamespace(max_position_embeddings=context or 2048)
    return SimpleNamespace(
        model=SimpleNamespace(config=config), tokenizer=tokenizer or _WordTokenizer(), device=CPU, info=tiny_llama.info
    )


def test_scores_and_their_means_match_hand_computed_values():
    tasks = tq.TaskSet(
        "s",
        [PromptItem("a", prompt="w1", reference="w3 w4"), PromptItem("b", prompt="w1", reference="w5")],
        [[1], [1, 1]],
    )
    answers = [[3, 4, 0], [6, 7, 8, 9]]  # a: exactly the reference (the special id 0 dropped); b: nothing shared
    baseline = [[3, 9], [6, 7]]
    out = tq.task_quality(tasks, answers, 4, _WordTokenizer(), baseline)
    a, b = out.items
    assert a.answer == "w3 w4" and a.vs_reference == {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0}
    assert b.vs_reference == {"exact_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0}
    assert (a.ended, b.ended) == (
        True,
        False,
    ) and out.note == "1 of 2 answers reached gen_len without EOS and were cut there"
    assert out.vs_reference["exact_match"].mean == 0.5
    assert out.vs_reference["exact_match"].low == 0.0 and out.vs_reference["exact_match"].high == 1.0
    # against the baseline: a shares w3 with "w3 w9" (F1 = ROUGE-L = 0.5); b = "w6 w7 w8 w9" vs "w6 w7": P 1/2, R 1
    assert a.vs_baseline == {"exact_match": 0.0, "token_f1": 0.5, "rouge_l": 0.5}
    assert b.vs_baseline["token_f1"] == pytest.approx(2 / 3) and b.vs_baseline["rouge_l"] == pytest.approx(2 / 3)
    assert out.vs_baseline["token_f1"].mean == pytest.approx((0.5 + 2 / 3) / 2)
    assert out.prompt_tokens == {"p10": 1.1, "p50": 1.5, "p90": pytest.approx(1.9)}
    assert tq.task_quality(tasks, answers, 4, _WordTokenizer(), None).vs_baseline is None


def _workload(**kw):
    return Workload(prompt_len=8, gen_len=4, **kw)


def test_the_scored_items_are_those_with_references_whole_or_cut_to_the_context(tiny_llama, tmp_path):
    lines = [
        {"id": "x", "prompt": "w1 w2 w3", "reference": "w4"},
        {"id": "no-ref", "prompt": "w1"},
        {"id": "long", "prompt": " ".join(f"w{i}" for i in range(1, 31)), "reference": "w9"},
    ]
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    model = _model(tiny_llama, context=20)
    tasks = tq.task_set(model, _workload(prompt=f"file:{path}"))
    assert [i.id for i in tasks.items] == ["x", "long"]
    assert tasks.prompts[0] == [1, 2, 3]  # whole, not fitted to prompt_len 8
    assert tasks.prompts[1] == list(range(1, 9)) + list(range(23, 31))  # 20 - gen_len 4 = 16: the middle cut
    assert [i.id for i in tq.task_set(model, _workload(prompt=f"file:{path}", task_items=1)).items] == ["x"]
    assert tq.task_set(model, _workload(prompt=f"file:{path}", task_items=0)) is None
    assert tq.task_set(model, _workload(prompt="corpus")) is None
    no_tokenizer = SimpleNamespace(tokenizer=None)
    assert tq.task_set(no_tokenizer, _workload(prompt=f"file:{path}")) is None


def test_the_baselines_task_answers_travel_to_later_jobs(tmp_path):
    runner = ExperimentRunner(tiny_experiment([{"name": "hf"}]), results_root=tmp_path)
    state = SimpleNamespace(done=set(), model=None)
    runner.keep = lambda index, record: None
    record = SimpleNamespace(model=None)
    runner._finished(state, Finished.model_construct(index=0, record=record, reference=None, task_answers=[[4, 5]]))
    assert runner.job([1], "subprocess").task_answers == {"0": [[4, 5]]}


@pytest.mark.slow
def test_a_run_on_a_prompt_set_records_task_quality_against_references_and_the_baseline(tmp_path):
    """SmolLM2 on two chat items: a lossless engine's answers equal the baseline's (score 1 against them), the
    baseline itself has no second reference, and the summary names the model's pre-quantized weights."""
    exp = validate_experiment(
        {
            "name": "task",
            "model": "smollm2-135m",
            "engines": [
                {"name": "hf"},
                {"name": "speculative", "label": "lookup", "options": {"proposer": "prompt_lookup"}},
            ],
            "workloads": [{"prompt_len": 16, "gen_len": 12, "prompt": "chat", "task_items": 2}],
            "repetitions": {"warmup": 0, "min_reps": 1, "min_seconds": 0.0, "max_reps": 1},
            "device": "cpu",
            "dtype": "float32",
            "attribution": False,
            "probe": "never",
        }
    )
    ExperimentRunner(exp, results_root=tmp_path).run()
    records = {r.cell.engine_label: r for r in load_records(tmp_path)}
    base, lookup = records["hf"].quality.task, records["lookup"].quality.task
    assert [i.id for i in base.items] == ["chat-01", "chat-02"] and base.vs_baseline is None
    assert all(0 < i.answer_tokens <= 12 and i.answer for i in base.items)
    assert [i.answer for i in lookup.items] == [i.answer for i in base.items]
    assert lookup.vs_baseline["rouge_l"].mean == 1.0 and lookup.vs_reference == base.vs_reference
    assert 0.0 <= base.vs_reference["rouge_l"].low <= base.vs_reference["rouge_l"].mean <= 1.0
    assert records["hf"].model.weights_origin == "dequantized from GGUF Q4_1"
