"""The CI gate of .ci/run, run on the committed baseline: a broken engine must fail it."""

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from factories import REPO_ROOT
from rooflens.cli import app
from rooflens.results.record import ErrorInfo
from rooflens.results.store import load_records, write_record

ROOT = REPO_ROOT


def ci_compare_args(current: Path) -> list[str]:
    """The exact `rooflens compare ...` arguments .ci/run uses, with the smoke results folder filled in."""
    script = (ROOT / ".ci" / "run").read_text().replace("\\\n", " ")
    line = re.search(r"rooflens compare (.*?)\|\| gate=1", script).group(1)
    return ["compare", *(str(current) if a == "$smoke" else a for a in shlex.split(line))]


def smoke_run(tmp_path: Path, broken: str | None) -> Path:
    """The baseline's own records as a new run, with the ``broken`` engine's cell failed."""
    folder = tmp_path / "now"
    for r in load_records(ROOT / "benchmarks" / "baselines" / "ci-smoke"):
        if r.cell.engine_label == broken:
            r = r.model_copy(
                update={
                    "status": "failed",
                    "metrics": {},
                    "roofline": None,
                    "quality": None,
                    "reason": ErrorInfo(type="RuntimeError", message="static cache broke"),
                }
            )
        write_record(folder, r)
    return folder


def test_the_ci_gate_passes_an_unchanged_run_and_fails_a_broken_engine(tmp_path):
    runner = CliRunner()
    same = runner.invoke(app, ci_compare_args(smoke_run(tmp_path / "a", broken=None)))
    assert same.exit_code == 0, same.output
    broken = runner.invoke(app, ci_compare_args(smoke_run(tmp_path / "b", broken="hf-static")))
    assert broken.exit_code == 1, broken.output
    assert "ci-smoke/smollm2-135m/hf-static/short/b1" in broken.output and "static cache broke" in broken.output
