"""A measured record the results folder cannot take (a full disk, a file-size limit) is never lost: it is
written to the rescue folder, or kept for the run's summary, and the exit code says so (2)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rooflens.cli import app
from rooflens.results.store import load_records

EXPERIMENT = """
name: full
model: shape:tiny-llama
engines: [{name: hf}]
workloads: [{prompt_len: 8, gen_len: 4, batch_sizes: [1, 2]}]
repetitions: {warmup: 0, min_reps: 1, min_seconds: 0}
device: cpu
energy: false
"""


def test_a_full_results_disk_sends_the_records_to_the_rescue_folder(tmp_path, monkeypatch):
    from rooflens.results import store

    results, rescue = tmp_path / "results", tmp_path / "rescue"
    real = store.write_atomic

    def full_disk(path, data, **kw):
        if Path(path).is_relative_to(results) and Path(path).suffix == ".json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data, **kw)

    monkeypatch.setattr(store, "write_atomic", full_disk)
    monkeypatch.setenv("ROOFLENS_RESCUE", str(rescue))
    (tmp_path / "x.yaml").write_text(EXPERIMENT)
    r = CliRunner().invoke(app, ["run", str(tmp_path / "x.yaml"), "-q", "--results", str(results)])
    assert r.exit_code == 2, r.output
    out = " ".join(r.output.split())
    assert "could not be written (no space left on device); written to" in out and str(rescue) in out
    assert sorted(x.cell.batch_size for x in load_records(rescue)) == [1, 2]  # both measured cells kept
    assert "hf" in out and "b2" in out  # the summary still shows them


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_under_a_file_size_limit_the_records_are_kept_for_the_summary(tmp_path):
    (tmp_path / "x.yaml").write_text(EXPERIMENT)

    def small_files() -> None:  # as `ulimit -f 4`: a write past 4 KiB fails with EFBIG (SIGXFSZ ignored)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    env = {**os.environ, "ROOFLENS_RESCUE": str(tmp_path / "rescue")}
    cmd = [sys.executable, "-m", "rooflens.cli", "run", str(tmp_path / "x.yaml"), "-q"]
    cmd += ["--results", str(tmp_path / "results")]
    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_files, env=env, timeout=600)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, out
    assert "File too large" in out or "file too large" in out
    assert "kept only in this run's memory" in out
    assert "Traceback" not in out
    assert textwrap.shorten("hf", 10) in out
