"""Fuzzing what reads records: mutated and crafted record files given to ``show``, ``compare`` and ``report``
end with a message and an exit code, never a traceback; a file that cannot be read is skipped with a warning
that names it, and the folder's other records still count.

The records are the CI smoke baseline's (real records of a real run) mutated at random (seeded): a key
deleted, a value of another type, a value copied over another, numbers made zero, negative, huge or NaN;
plus the crafted cases the audit found (``gpus: [{}]``, all-zero samples).
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest
from typer.testing import CliRunner

from factories import REPO_ROOT
from rooflens.cli import app

SEEDS = sorted((REPO_ROOT / "benchmarks" / "baselines" / "ci-smoke").glob("*.json"))
VALUES: list[Any] = [None, 0, -1, 1e308, float("nan"), "", "x" * 300, [], {}, [{}], {"a": [1]}, True, "[/]"]


def _nodes(doc: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            out += _nodes(v, (*path, i))
    return out


def _at(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def mutated(rng: random.Random, doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice([p for p in _nodes(doc) if p])
        parent, key = _at(doc, path[:-1]), path[-1]
        op = rng.choice(["delete", "retype", "retype", "zero", "copy"])
        if op == "delete" and isinstance(parent, dict):
            del parent[key]
        elif op == "zero" and isinstance(parent[key], list):
            parent[key] = [0.0 for _ in parent[key]]
        elif op == "copy":
            parent[key] = copy.deepcopy(_at(doc, rng.choice(_nodes(doc))))
        else:
            parent[key] = copy.deepcopy(rng.choice(VALUES))
    return doc


def crafted(doc: dict) -> list[dict]:
    """The records the audit crafted: an empty GPU entry, every sample zero, a metric without samples."""
    gpus = copy.deepcopy(doc)
    gpus["environment"]["gpus"] = [{}]
    zeros = copy.deepcopy(doc)
    for m in zeros["metrics"].values():
        m["samples"] = [0.0] * len(m["samples"])
        m.update({k: 0.0 for k in ("median", "p10", "p90", "mean", "std", "min", "max")})
    empty = copy.deepcopy(doc)
    for m in empty["metrics"].values():
        m["samples"], m["n"] = [], 0
    return [gpus, zeros, empty]


def no_traceback(result, case: str) -> None:
    assert result.exit_code in (0, 1, 2, 3, 4), f"{case}: exit {result.exit_code}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case}: {type(result.exception).__name__}: {result.exception}\n{result.output}"
    )


@pytest.mark.slow
def test_mutated_and_crafted_records_never_crash_show_compare_or_report(tmp_path):
    rng = random.Random(20261204)
    seeds = [json.loads(p.read_text()) for p in SEEDS]
    base = tmp_path / "base"
    base.mkdir()
    for p in SEEDS:
        (base / p.name).write_text(p.read_text())
    cases = [c for doc in seeds for c in crafted(doc)] + [mutated(rng, rng.choice(seeds)) for _ in range(60)]
    runner = CliRunner()
    for i, doc in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        other = seeds[1] if doc["cell"]["engine_label"] == seeds[0]["cell"]["engine_label"] else seeds[0]
        (folder / "case.json").write_text(json.dumps(doc, allow_nan=True))
        (folder / "other.json").write_text(json.dumps(other))
        no_traceback(runner.invoke(app, ["show", str(folder)]), f"show case {i}")
        no_traceback(runner.invoke(app, ["compare", str(base), str(folder)]), f"compare case {i}")
        if i < 3 or i % 10 == 0:  # a report renders plots: a sample of the cases
            out = tmp_path / "reports"
            no_traceback(runner.invoke(app, ["report", str(folder), "--out", str(out)]), f"report case {i}")


def test_an_unreadable_file_is_skipped_with_a_warning_naming_it(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "good.json").write_text(SEEDS[0].read_text())
    (folder / "broken.json").write_text('{"schema_version": ')  # a write cut short
    r = CliRunner().invoke(app, ["show", str(folder)])
    assert r.exit_code == 0, r.output
    assert f"skipped {folder / 'broken.json'}: not readable JSON" in r.output.replace("\n", "")
    assert json.loads(SEEDS[0].read_text())["cell"]["engine_label"] in r.output
    r = CliRunner().invoke(app, ["show", str(folder / "broken.json")])  # a file named on its own: an error
    assert r.exit_code == 2 and "not readable JSON" in r.output
