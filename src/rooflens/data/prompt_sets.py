"""Prompts from data: JSON Lines files of prompts or chat messages, each with an optional reference answer.

A line is an object with ``prompt`` (text) or ``messages`` (a chat: a list of ``{"role", "content"}``), and
optionally ``reference`` (the expected answer, for task quality) and ``id``. Two sets of this project's own
writing ship with the package (``chat``: short questions; ``summaries``: one-sentence summaries of a paragraph),
so the feature runs offline and in tests; ``file:PATH`` reads any file of that form, and ``dataset:SOURCE``
a data set through the ``datasets`` library (:mod:`rooflens.data.dataset_source`).

A workload's prompts must all have ``prompt_len`` tokens (the engines take a ``[batch, length]`` tensor, no
padding mask), so each encoded prompt is fitted to that length by one stated rule (:func:`fit`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rooflens.config import SHIPPED_PROMPT_SETS
from rooflens.data.dataset_source import PREFIX as DATASET_PREFIX
from rooflens.data.dataset_source import DatasetSourceError, dataset_rows

SHIPPED_SETS = SHIPPED_PROMPT_SETS
MAX_FILE_BYTES = 200_000_000
FIT_RULE = (
    "longer prompts lose their middle (the instruction at the start and the turn the model answers at the end "
    "are kept); shorter ones are filled on the left with text of the shipped corpus (no padding token: the "
    "engines attend to every prompt token)"
)


class PromptSetError(ValueError):
    """A prompt file that cannot be read, named with the line and field at fault."""


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) pairs
    reference: str | None = None


def _item(obj: Any, where: str, index: int) -> PromptItem:
    if not isinstance(obj, dict):
        raise PromptSetError(f"{where}: must be a JSON object (got {type(obj).__name__})")
    unknown = sorted(set(obj) - {"id", "prompt", "messages", "reference"})
    if unknown:
        raise PromptSetError(
            f"{where}: unknown field(s) {', '.join(unknown)} (allowed: id, prompt, messages, reference)"
        )
    if ("prompt" in obj) == ("messages" in obj):
        raise PromptSetError(f"{where}: needs exactly one of 'prompt' (text) or 'messages' (a chat)")
    for key in ("prompt", "reference"):
        if key in obj and (not isinstance(obj[key], str) or not obj[key].strip()):
            raise PromptSetError(f"{where}: '{key}' must be a non-empty string")
    messages = None
    if "messages" in obj:
        raw = obj["messages"]
        ok = (
            isinstance(raw, list)
            and raw
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in raw
            )
        )
        if not ok:
            raise PromptSetError(f'{where}: \'messages\' must be a non-empty list of {{"role": ..., "content": ...}}')
        messages = tuple((m["role"], m["content"]) for m in raw)
    ident = obj.get("id", index)
    if not isinstance(ident, (str, int)):
        raise PromptSetError(f"{where}: 'id' must be a string or an integer")
    return PromptItem(str(ident), obj.get("prompt"), messages, obj.get("reference"))


def parse_jsonl(text: str, name: str) -> list[PromptItem]:
    """The items of a JSON Lines text (blank lines skipped); ``name`` is how errors name the file."""
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptSetError(f"{name}: line {n}: not JSON ({err.msg})") from None
        items.append(_item(obj, f"{name}: line {n}", len(items)))
    if not items:
        raise PromptSetError(f"{name}: no prompts (one JSON object per line)")
    _check_ids(items, name)
    return items


def _check_ids(items: list[PromptItem], name: str) -> None:
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise PromptSetError(f"{name}: id {dup!r} is used more than once")


def from_rows(rows: Sequence[Any], name: str) -> list[PromptItem]:
    """The items of a data set's rows (objects of the JSON Lines form); errors name the row."""
    items = [_item(obj, f"{name}: row {n}", n) for n, obj in enumerate(rows)]
    _check_ids(items, name)
    return items


def load_prompt_set(source: str) -> list[PromptItem]:
    """The items of a workload's ``prompt``: a shipped set (``chat``, ``summaries``), ``file:PATH`` or
    ``dataset:SOURCE[:split[:field[:reference]]]`` (:mod:`rooflens.data.dataset_source`)."""
    if source in SHIPPED_SETS:
        return parse_jsonl((resources.files(__package__) / f"{source}.jsonl").read_text(), f"shipped set {source}")
    if source.startswith(DATASET_PREFIX):
        try:
            return from_rows(dataset_rows(source), source)
        except DatasetSourceError as err:
            raise PromptSetError(str(err)) from None
    if not source.startswith("file:"):
        raise PromptSetError(
            f"prompt {source!r}: not a prompt set (one of {', '.join(SHIPPED_SETS)}, file:PATH or dataset:SOURCE)"
        )
    path = Path(source[len("file:") :]).expanduser()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PromptSetError(f"{path}: larger than {MAX_FILE_BYTES // 1_000_000} MB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PromptSetError(f"prompt file {path}: cannot be read ({err})") from None
    return parse_jsonl(text, str(path))


def has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def encode(item: PromptItem, tokenizer: Any, chat_template: bool) -> list[int]:
    """Token ids of one item: through the model's chat template (a plain prompt as one user turn, the assistant's
    turn opened) when asked and the tokenizer has one; else the text (a chat's turns joined by blank lines)."""
    if chat_template and has_chat_template(tokenizer):
        turns = item.messages or (("user", item.prompt or ""),)
        messages = [{"role": r, "content": c} for r, c in turns]
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return [int(i) for i in ids]
    text = item.prompt if item.prompt is not None else "\n\n".join(c for _, c in item.messages or ())
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]


def fit(ids: list[int], length: int, filler: list[int]) -> list[int]:
    """``ids`` at exactly ``length`` tokens by :data:`FIT_RULE`: the middle cut, or corpus text put before."""
    if len(ids) > length:
        head = length // 2
        return ids[:head] + ids[len(ids) - (length - head) :]
    short = length - len(ids)
    if short and not filler:
        raise PromptSetError(f"a prompt of {len(ids)} tokens cannot be filled to {length}: no filler text")
    fill = (filler * (short // max(len(filler), 1) + 1))[:short]
    return fill + ids
