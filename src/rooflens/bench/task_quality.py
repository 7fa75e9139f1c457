"""Task quality of a measured cell: each item of its prompt set that has a reference answer, answered greedily by
the cell's engine after the timed repetitions (untimed), and scored against the reference and against the
baseline engine's answer to the same item (:mod:`rooflens.data.task_scores`).

- An answer is the engine's greedy tokens up to its first EOS, at most ``gen_len``: the pass runs inside
  :func:`rooflens.engines.decoding.eos_allowed` (timed runs mask EOS so that each has exactly ``gen_len`` tokens).
- Each item's prompt is taken whole, at its own length: the timed prompts are fitted to ``prompt_len``, which can
  cut the task's text or put corpus text before it. Only a prompt longer than the model's context minus
  ``gen_len`` loses its middle (the fit rule of :mod:`rooflens.data.prompt_sets`).
- Items are answered one at a time (batch 1, no padding): every engine can run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rooflens.bench.preflight import context_limit
from rooflens.bench.prompt_lengths import length_percentiles
from rooflens.config import GENERATED_PROMPTS, Workload
from rooflens.data.prompt_sets import PromptItem, encode, fit, load_prompt_set
from rooflens.data.task_scores import SCORES, mean_interval
from rooflens.engines.base import Engine, TokenClock
from rooflens.engines.decoding import eos_allowed, eos_token_ids
from rooflens.models.loader import LoadedModel
from rooflens.results.record import TaskItem, TaskQuality, TaskScore

TaskAnswers = list[list[int]]
"""The baseline engine's answers (token ids up to EOS), item by item: the second reference of lossy engines."""

HOW = (
    "each item with a reference answer, prompted whole at its own length, answered greedily by the engine after its "
    "timed repetitions (untimed, batch 1): the tokens up to its first EOS, at most gen_len; scored against the "
    "reference (ROUGE-L F1 over words, token F1 and exact match after SQuAD normalisation) and against the baseline "
    "engine's answer; means with 95 % percentile-bootstrap intervals over the items"
)


@dataclass(frozen=True)
class TaskSet:
    """The items a cell answers and their prompts as token ids."""

    name: str
    items: list[PromptItem]
    prompts: list[list[int]]


def task_set(model: LoadedModel, workload: Workload) -> TaskSet | None:
    """The workload's scored items (None: generated prompts, no references, no tokenizer or ``task_items: 0``)."""
    if workload.prompt in GENERATED_PROMPTS or workload.task_items == 0 or model.tokenizer is None:
        return None
    items = [i for i in load_prompt_set(workload.prompt) if i.reference is not None][: workload.task_items]
    if not items:
        return None
    limit = context_limit(model.model.config)
    room = limit[0] - workload.gen_len if limit else None
    prompts = []
    for item in items:
        ids = encode(item, model.tokenizer, workload.chat_template)
        prompts.append(fit(ids, room, []) if room is not None and len(ids) > room else ids)
    return TaskSet(workload.prompt, items, prompts)


def answer(engine: Engine, prompt: list[int], gen_len: int, eos: Sequence[int], device: torch.device) -> list[int]:
    """The engine's greedy answer to one prompt: its tokens before the first EOS (at most ``gen_len``)."""
    clock = TokenClock(device)
    with eos_allowed(), torch.inference_mode():
        clock.start()
        out = engine.generate(torch.tensor([prompt], dtype=torch.long, device=device), gen_len, clock)
        clock.stop()
    row = [int(t) for t in out[0].tolist()[:gen_len]]
    stops = set(eos)
    return next((row[:j] for j, t in enumerate(row) if t in stops), row)


def answers_of(engine: Engine, model: LoadedModel, tasks: TaskSet, gen_len: int) -> TaskAnswers:
    eos = eos_token_ids(model.model)
    return [answer(engine, p, gen_len, eos, model.device) for p in tasks.prompts]


def _scores(answer_text: str, reference: str) -> dict[str, float]:
    return {name: score(answer_text, reference) for name, score in SCORES.items()}


def _summary(per_item: list[dict[str, float]]) -> dict[str, TaskScore]:
    out = {}
    for name in SCORES:
        mean, low, high = mean_interval([s[name] for s in per_item])
        out[name] = TaskScore(mean=mean, low=low, high=high)
    return out


def task_quality(
    tasks: TaskSet, answers: TaskAnswers, gen_len: int, tokenizer: object, baseline: TaskAnswers | None
) -> TaskQuality:
    """The scores of ``answers`` (one per item of ``tasks``) against the references and, when given, against the
    baseline engine's answers to the same items."""
    decode = tokenizer.decode  # type: ignore[attr-defined]
    texts = [decode(a, skip_special_tokens=True).strip() for a in answers]
    base_texts = [decode(a, skip_special_tokens=True).strip() for a in baseline] if baseline is not None else None
    items = []
    for j, (item, text) in enumerate(zip(tasks.items, texts)):
        items.append(
            TaskItem(
                id=item.id,
                prompt_tokens=len(tasks.prompts[j]),
                answer=text,
                answer_tokens=len(answers[j]),
                ended=len(answers[j]) < gen_len,
                vs_reference=_scores(text, item.reference or ""),
                vs_baseline=_scores(text, base_texts[j]) if base_texts is not None else None,
            )
        )
    cut = sum(not i.ended for i in items)
    return TaskQuality(
        prompt_set=tasks.name,
        how=HOW,
        items=items,
        prompt_tokens=length_percentiles([i.prompt_tokens for i in items]),
        vs_reference=_summary([i.vs_reference for i in items]),
        vs_baseline=_summary([i.vs_baseline for i in items if i.vs_baseline is not None]) if base_texts else None,
        note=f"{cut} of {len(items)} answers reached gen_len without EOS and were cut there" if cut else None,
    )
