"""Fuzzing the experiment loader: thousands of mutated experiment files, each one either loads or is a ConfigError.

import pytest

The files are the shipped ``experiments/*.yaml`` mutated at random (seeded, so a failure reproduces):
byte-level (flipped, inserted, deleted bytes, truncation, stray unicode or non-UTF-8 bytes, duplicated
or swapped lines, a value replaced by an extreme one, anchors and aliases) and structure-level (delete
a key, change a value's type, add an unknown key, copy a value over another, then dump). The whole run
must end within WALL_LIMIT_S (about 10 s on 2 slow cores), each file within MAX_FILE_BYTES.
"""

from __future__ import annotations

import copy
import random
import re
import signal
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from factories import REPO_ROOT
from rooflens.bench.validate import load_experiment
from rooflens.config import ConfigError

SEEDS = sorted((REPO_ROOT / "experiments").glob("*.yaml"))
N_FILES = 3000
MAX_FILE_BYTES = 300_000
WALL_LIMIT_S = 120
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

EXTREME_VALUES = [
    "9" * 5000,
    "-1",
    "0",
    "1e309",
    "-.inf",
    ".nan",
    '""',
    "~",
    "x" * 10_000,
    "[" * 3000,
    "{a: " * 1000,
    "!!python/object/apply:os.system [echo pwned]",
    "!!python/name:os.system",
    "!!binary /w==",
    "!!set {a, b}",
    "&a [*a]",
    "*nowhere",
    "&b x",
    "2024-02-30",
    "2024-01-01 10:00:00",
    '"\\xff\\0"',
    "cuda:\u00b2",
    "cuda:00",
    "..",
    "a__b",
    "_a",
    "a/b",
    "\U0001f600" * 50,
    "'unterminated",
    "{",
    "]",
    "- x",
    "? [a]\n: b",
    "<<: *nowhere",
    "true",
    "0x1F",
    "0o17",
    "1_000",
    "-0.0",
    "4294967296",
    "[1, 1]",
    "{}",
    "[]",
    "@",
    "`",
    "%TAG ! tag:x,2000:",
    "---",
    "...",
]
TREE_VALUES: list[Any] = [
    None,
    0,
    -1,
    2**64,
    10**100,
    1e308,
    float("inf"),
    float("nan"),
    "",
    "x" * 2000,
    True,
    [],
    {},
    [1, 2, 2],
    {"a": {"b": []}},
    "shape:../../x",
    "cuda:01",
    ".hidden",
    "a__b",
    "p8-g4",
]


# ---------------------------------------------------------------------------- byte-level mutations


def _flip(rng: random.Random, b: bytes) -> bytes:
    i = rng.randrange(len(b))
    return b[:i] + bytes([b[i] ^ (1 << rng.randrange(8))]) + b[i + 1 :]


def _insert_bytes(rng: random.Random, b: bytes) -> bytes:
    i = rng.randrange(len(b) + 1)
    return b[:i] + rng.randbytes(rng.randint(1, 8)) + b[i:]


def _delete(rng: random.Random, b: bytes) -> bytes:
    i = rng.randrange(len(b))
    return b[:i] + b[i + rng.randint(1, 40) :]


def _truncate(rng: random.Random, b: bytes) -> bytes:
    return b[: rng.randrange(len(b))]


def _insert_unicode(rng: random.Random, b: bytes) -> bytes:
    i = rng.randrange(len(b) + 1)
    ranges = [(0, 0x7F), (0x80, 0xD7FF), (0xE000, 0x10FFFF)]  # any code point but a surrogate
    text = "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 4)))
    return b[:i] + text.encode() + b[i:]


def _insert_non_utf8(rng: random.Random, b: bytes) -> bytes:
    i = rng.randrange(len(b) + 1)
    return b[:i] + rng.choice([b"\xff", b"\xfe\xff", b"\xc3", b"\xe9", b"\xed\xa0\x80", b"\x00"]) + b[i:]


def _duplicate_line(rng: random.Random, b: bytes) -> bytes:
    lines = b.split(b"\n")
    i = rng.randrange(len(lines))
    return b"\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :])


def _swap_lines(rng: random.Random, b: bytes) -> bytes:
    lines = b.split(b"\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _extreme_value(rng: random.Random, b: bytes) -> bytes:
    """Replace the value of one ``key: value`` (or one flow-style ``{key: value}`` item) by an extreme one."""
    spans = [m.span(1) for m in re.finditer(rb"[\w-]+: ([^,{}\[\]\n#]+)", b)]
    i, j = rng.choice(spans) if spans else (len(b), len(b))
    return b[:i] + rng.choice(EXTREME_VALUES).encode() + b[j:]


def _anchor_and_alias(rng: random.Random, b: bytes) -> bytes:
    """Anchor one value and use it in place of another (possibly inside itself)."""
    spans = [m.span(1) for m in re.finditer(rb"[\w-]+: ([^\n#]+)", b)]
    if len(spans) < 2:
        return b
    (i, _), (k, m) = sorted(rng.sample(spans, 2))
    return b[:i] + b"&z " + b[i:k] + b"*z" + b[m:]


BYTE_MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [
    _flip,
    _insert_bytes,
    _delete,
    _truncate,
    _insert_unicode,
    _insert_non_utf8,
    _duplicate_line,
    _swap_lines,
    _extreme_value,
    _extreme_value,
    _extreme_value,
    _anchor_and_alias,
]


# ---------------------------------------------------------------------------- structure-level mutations


def _containers(node: Any) -> list[dict | list]:
    out: list[dict | list] = []
    if isinstance(node, (dict, list)):
        out.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            out += _containers(child)
    return out


def _mutate_tree(rng: random.Random, doc: Any) -> Any:
    """Delete a key or item, give a value another type, add an unknown key, copy a value over another,
    or wrap the whole document."""
    doc = copy.deepcopy(doc)
    op = rng.choice(["delete", "retype", "retype", "add", "copy", "wrap"])
    if op == "wrap":
        return rng.choice([[doc], {"experiment": doc}])
    node = rng.choice(_containers(doc))
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if op == "add" or not keys:
        if isinstance(node, dict):
            key = rng.choice(["extra", "nmae", "options", "label", "batch", 7, None])
            node[key] = copy.deepcopy(rng.choice(TREE_VALUES))
        else:
            node.append(copy.deepcopy(rng.choice(TREE_VALUES)))
    elif op == "delete":
        del node[rng.choice(keys)]
    elif op == "retype":
        node[rng.choice(keys)] = copy.deepcopy(rng.choice(TREE_VALUES))
    else:
        node[rng.choice(keys)] = copy.deepcopy(node[rng.choice(keys)])
    return doc


def mutated_file(rng: random.Random, seeds: list[tuple[bytes, Any]]) -> tuple[bytes, list[str]]:
    """One mutated experiment file, and the names of the mutations applied (to reproduce a failure).

    ``seeds`` are (file content, parsed document) pairs: parsing them once, and dumping with libyaml
    where it is installed, keeps generating the files faster than loading them."""
    content, doc = rng.choice(seeds)
    done = []
    if rng.random() < 0.4:
        for _ in range(rng.randint(1, 3)):
            doc = _mutate_tree(rng, doc)
        content, done = yaml.dump(doc, Dumper=DUMPER, allow_unicode=True, sort_keys=False).encode(), ["tree"]
    for _ in range(rng.randint(0 if done else 1, 3)):
        mutation = rng.choice(BYTE_MUTATIONS)
        content = mutation(rng, content) if content else content
        done.append(mutation.__name__)
    return content, done


class Hang(BaseException):
    """Raised by SIGALRM wherever the loader is when the time is up (a BaseException: no ``except`` in it stops this)."""


def _time_is_up(signum: int, frame: Any) -> None:
    raise Hang(f"still running after {WALL_LIMIT_S} s")


@pytest.mark.slow
def test_mutated_experiments_load_or_give_a_config_error(tmp_path):
    rng = random.Random(20240611)
    seeds = [(p.read_bytes(), yaml.safe_load(p.read_bytes())) for p in SEEDS]
    assert len(seeds) >= 3
    loaded = refused = 0
    previous = signal.signal(signal.SIGALRM, _time_is_up)
    signal.alarm(WALL_LIMIT_S)  # a hang fails the test, naming the file it hangs on
    try:
        for i in range(N_FILES):
            content, mutations = mutated_file(rng, seeds)
            assert len(content) <= MAX_FILE_BYTES, f"case {i} ({mutations}) grew to {len(content)} bytes"
            path = tmp_path / f"case{i}.yaml"
            path.write_bytes(content)
            try:
                load_experiment(path).config_hash()  # the hash is what `rooflens validate` prints
                loaded += 1
            except ConfigError as err:
                refused += 1
                assert str(err).startswith(str(path)), f"case {i} ({mutations}): message without the file: {err}"
            except (Exception, Hang) as err:  # noqa: BLE001 - the point of the test
                raise AssertionError(
                    f"case {i} ({mutations}): {type(err).__name__}: {err}\n{content[:2000]!r}"
                ) from err
            path.unlink()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert loaded > 100 and refused > 1000, (loaded, refused)  # the mutations exercise both outcomes
