"""Commands that do not run a model answer without importing torch or transformers (seconds each)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from factories import REPO_ROOT

ROOT = REPO_ROOT
BASELINE = ROOT / "benchmarks" / "baselines" / "ci-smoke"

# In a fresh interpreter: invoke the CLI in-process, then report its exit code and the heavy modules loaded.
PROBE = """
import json, sys
from typer.testing import CliRunner
from rooflens.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "rooflens.engines.base", "rooflens.models.loader") if m in sys.modules)
print(json.dumps({"exit": result.exit_code, "heavy": heavy, "output": result.output[-400:]}))
"""


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ("roofline", "llama-2-7b", "--hw", "h100-sxm"),
        ("roofline", "llama-2-7b", "--hw", "all", "--batch", "1,8"),
        ("validate", "experiments/quickstart.yaml"),
        ("validate", "experiments/mixed-precision-smollm2-cpu.yaml"),
        ("hw", "list"),
        ("hw", "show", "h100-sxm"),
        ("show", str(BASELINE)),
        ("compare", str(BASELINE), str(BASELINE), "--allow-hardware-mismatch", "--allow-inconclusive"),
        ("engines", "--help"),
    ],
    ids=lambda a: " ".join(a[:2]) if isinstance(a, tuple) else str(a),
)
@pytest.mark.slow
def test_command_answers_without_torch(args):
    result = _run(*args)
    assert result["exit"] == 0, result["output"]
    assert result["heavy"] == [], f"`rooflens {' '.join(args)}` imported {result['heavy']}"


@pytest.mark.slow
def test_report_renders_without_torch(tmp_path):
    result = _run("report", str(BASELINE), "--out", str(tmp_path))
    assert result["exit"] == 0, result["output"]
    assert result["heavy"] == []
    assert list(tmp_path.glob("*.html"))


@pytest.mark.slow
def test_the_probe_sees_torch_when_a_command_does_load_it(tmp_path):
    """The check above can fail: an engine name that is not built in is looked up in the full registry."""
    text = (ROOT / "experiments" / "quickstart.yaml").read_text().replace("- name: hf", "- name: no-such-engine")
    (tmp_path / "x.yaml").write_text(text)
    result = _run("validate", str(tmp_path / "x.yaml"))
    assert result["exit"] == 2
    assert "unknown engine 'no-such-engine'" in result["output"]
    assert "torch" in result["heavy"]
