"""Executors: inline and subprocess agree; a worker that dies fails only its own cells; Ray is optional."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from rooflens.bench.executors import Executor, ExecutorError, make_executor
from rooflens.bench.executors.base import describe_exit
from rooflens.bench.executors.ray_tasks import MISSING_RAY
from rooflens.bench.executors.remote import GroupDriver
from rooflens.bench.executors.worker import run_job
from rooflens.bench.preflight import PreflightError
from rooflens.bench.runner import ExperimentRunner, SilentObserver
from rooflens.cli import app
from rooflens.config import ConfigError, Experiment, validate_experiment
from rooflens.results.store import load_records

PLUGIN = Path(__file__).parent / "plugins" / "rooflens_abort_engine"


def tiny(engines: list[dict], validate: bool = True, **extra) -> Experiment:
    data = {
        "name": "x",
        "model": "shape:tiny-llama",
        "engines": engines,
        "workloads": [{"prompt_len": 8, "gen_len": 4, "batch_sizes": [1, 2]}],
        "repetitions": {"warmup": 0, "min_reps": 1, "min_seconds": 0},
        "device": "cpu",
        "energy": False,
        **extra,
    }
    # an engine only a worker can see (the abort plug-in) is not validated in the test process
    return validate_experiment(data) if validate else Experiment.model_validate(data)


TWO_HF = [{"name": "hf"}, {"name": "hf", "label": "hf-static", "options": {"cache": "static"}}]


def keys(record) -> dict[str, list[str]]:
    """The record's schema as its keys: top level, metrics, environment, repetitions."""
    d = record.model_dump(mode="json")
    return {
        "top": sorted(d),
        "metrics": sorted(d["metrics"]),
        "environment": sorted(d["environment"]),
        "repetitions": sorted(d["repetitions"] or {}),
    }


def by_cell(records) -> dict:
    return {(r.cell.engine_label, r.cell.batch_size): r for r in records}


# ---------------------------------------------------------------------------- choosing an executor


def test_executor_defaults_to_inline_and_is_left_out_of_the_config_hash():
    exp = tiny(TWO_HF)
    assert exp.executor == "inline"
    sub = tiny(TWO_HF, executor="subprocess")
    assert sub.executor == "subprocess" and sub.config_hash() == exp.config_hash()
    with pytest.raises(ConfigError, match="executor"):
        tiny(TWO_HF, executor="threads")
    with pytest.raises(ExecutorError, match="unknown executor 'threads'"):
        make_executor("threads")


def test_missing_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ExecutorError) as err:
        make_executor("ray")
    assert str(err.value) == MISSING_RAY == "executor 'ray' needs the ray package: pip install 'rooflens[ray]'"
    with pytest.raises(ExecutorError, match=r"rooflens\[ray\]"):
        ExperimentRunner(tiny(TWO_HF, executor="ray"), results_root=tmp_path).run()
    yaml = tmp_path / "x.yaml"
    yaml.write_text(
        textwrap.dedent("""
        name: x
        model: shape:tiny-llama
        engines: [{name: hf}]
        workloads: [{prompt_len: 8, gen_len: 4}]
        device: cpu
    """)
    )
    r = CliRunner().invoke(app, ["run", str(yaml), "--executor", "ray", "--results", str(tmp_path)])
    assert r.exit_code == 2 and "pip install 'rooflens[ray]'" in r.output
    assert not list(tmp_path.rglob("*.json"))


def test_cli_refuses_unknown_executors_and_a_stray_ray_address(tmp_path):
    yaml = tmp_path / "x.yaml"
    yaml.write_text(
        "name: x\nmodel: shape:tiny-llama\nengines: [{name: hf}]\nworkloads: [{prompt_len: 8, gen_len: 4}]\n"
    )
    r = CliRunner().invoke(app, ["run", str(yaml), "--executor", "threads"])
    assert r.exit_code == 2 and "allowed inline, subprocess, ray" in r.output
    r = CliRunner().invoke(app, ["run", str(yaml), "--ray-address", "auto"])
    assert r.exit_code == 2 and "--ray-address applies to executor 'ray' only" in r.output


def test_exit_status_is_described_by_signal_or_code():
    assert describe_exit(-6) == "worker killed by signal 6 (SIGABRT)"
    assert describe_exit(-9).startswith("worker killed by signal 9 (SIGKILL); the kernel's out-of-memory killer")
    assert describe_exit(3) == "worker exited with code 3"


# ---------------------------------------------------------------------------- subprocess


def test_inline_and_subprocess_give_the_same_cells_statuses_and_schema(tmp_path):
    exp = tiny(TWO_HF)
    inline = ExperimentRunner(exp, results_root=tmp_path / "inline").run()
    sub = ExperimentRunner(exp, results_root=tmp_path / "sub", executor=make_executor("subprocess")).run()
    assert [p.name for p in sorted(inline.folder.iterdir())] == [p.name for p in sorted(sub.folder.iterdir())]
    a, b = by_cell(inline.records), by_cell(load_records(sub.folder))
    assert list(a) == list(by_cell(sub.records)) == [("hf", 1), ("hf", 2), ("hf-static", 1), ("hf-static", 2)]
    assert sorted(a) == sorted(b)
    for cell in a:
        assert a[cell].status == b[cell].status == "ok"
        assert keys(a[cell]) == keys(b[cell])
        assert b[cell].model.id == "tiny-llama" and b[cell].metrics["ttft_s"].n >= 1
        assert b[cell].record_id.startswith(sub.run_id + "/")
    # where each cell ran: the driver for inline, a fresh worker process per engine for subprocess
    assert {r.environment["placement"]["pid"] for r in inline.records} == {os.getpid()}
    assert {r.environment["placement"]["executor"] for r in sub.records} == {"subprocess"}
    pids = {
        label: {r.environment["placement"]["pid"] for r in sub.records if r.cell.engine_label == label}
        for label in ("hf", "hf-static")
    }
    assert all(len(p) == 1 for p in pids.values()) and pids["hf"] != pids["hf-static"]
    assert os.getpid() not in pids["hf"] | pids["hf-static"]


def test_a_run_stopping_error_in_a_worker_stops_the_driver(tmp_path):
    """A prompt longer than the context is found by the worker (it holds the model) and raised in the driver."""
    exp = validate_experiment(
        {
            "name": "long",
            "model": "shape:tiny-llama",
            "engines": [{"name": "hf"}],
            "device": "cpu",
            "workloads": [{"prompt_len": 1020, "gen_len": 8}],
        }
    )
    with pytest.raises(
        PreflightError, match=r"exceed the context of shape:tiny-llama \(max_position_embeddings = 1024\)"
    ):
        ExperimentRunner(exp, results_root=tmp_path, executor=make_executor("subprocess")).run()
    assert not list(tmp_path.rglob("*.json"))


class CtrlCAt(SilentObserver):
    """Ctrl-C in the driver during the first repetition of a cell with this batch size."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def repetition_done(self, cell, measured, warmup):
        if cell.batch_size == self.batch_size:
            raise KeyboardInterrupt


def test_ctrl_c_stops_the_worker_and_records_the_cell_in_progress(tmp_path):
    exp = tiny([{"name": "hf"}])
    runner = ExperimentRunner(exp, results_root=tmp_path, observer=CtrlCAt(2), executor=make_executor("subprocess"))
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    records = by_cell(load_records(tmp_path))
    assert records[("hf", 1)].status == "ok" and [r.cell.batch_size for r in runner.records] == [1]
    interrupted = records[("hf", 2)]
    assert interrupted.status == "failed" and interrupted.reason.type == "KeyboardInterrupt"
    worker = interrupted.environment["placement"]["pid"]  # the worker's own environment
    assert worker != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # stopped and reaped


@pytest.fixture
def abort_plugin(tmp_path, monkeypatch) -> None:
    """The abort engine as an installed distribution with an entry point, visible to worker processes only:
    its package and a ``.dist-info`` (from its pyproject.toml) in a folder on the workers' PYTHONPATH."""
    site = tmp_path / "site"
    shutil.copytree(PLUGIN / "rooflens_abort_engine", site / "rooflens_abort_engine")
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
        for group, eps in project["entry-points"].items()
    )
    (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))


def test_a_worker_killed_by_a_signal_fails_its_own_cells_and_the_sweep_goes_on(abort_plugin, tmp_path):
    exp = tiny([{"name": "abort"}, {"name": "hf"}], validate=False, baseline="abort")  # the abort group runs first
    result = ExperimentRunner(exp, results_root=tmp_path, executor=make_executor("subprocess")).run()
    records = by_cell(load_records(result.folder))
    assert [records[k].status for k in sorted(records)] == ["failed", "failed", "ok", "ok"]
    for b in (1, 2):
        reason = records[("abort", b)].reason
        assert reason.type == "WorkerDied" and reason.message == "worker killed by signal 6 (SIGABRT)"
        assert "Fatal Python error: Aborted" in reason.traceback  # the worker's stderr tail, with the stack
        assert "rooflens_abort_engine/__init__.py" in reason.traceback
        assert len(reason.traceback) <= 2048
    assert records[("hf", 2)].metrics["e2e_s"].n >= 1
    assert [r.cell.engine_label for r in result.records] == ["abort", "abort", "hf", "hf"]  # cell order


def test_the_cli_runs_the_experiment_in_workers_when_asked(tmp_path):
    yaml = tmp_path / "x.yaml"
    yaml.write_text(
        textwrap.dedent("""
        name: x
        model: shape:tiny-llama
        engines: [{name: hf}]
        workloads: [{prompt_len: 8, gen_len: 4}]
        repetitions: {warmup: 0, min_reps: 1, min_seconds: 0}
        device: cpu
    """)
    )
    r = CliRunner().invoke(app, ["run", str(yaml), "--executor", "subprocess", "-q", "--results", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (rec,) = load_records(tmp_path)
    assert rec.status == "ok" and rec.environment["placement"]["executor"] == "subprocess"
    assert rec.experiment["config"]["executor"] == "subprocess"


class InProcessWorkers(Executor):
    """The subprocess executor's protocol without the processes: each group through the worker's
    :func:`run_job`, every job and message through JSON (real weights load in seconds; per-engine
    perplexity on the held-out text would take a minute per worker on a small CPU)."""

    name = "subprocess"

    def __init__(self):
        self.jobs: list[dict] = []

    def run(self, runner, groups):
        references: dict = {}
        for group in groups:
            driver = GroupDriver(runner, group, references)
            job = json.loads(json.dumps(driver.job(self.name, same_machine=True)))
            self.jobs.append(job)
            for msg in run_job(job, lambda m: driver.handle(json.loads(json.dumps(m)))):
                if (result := driver.handle(json.loads(json.dumps(msg)))) is not None:
                    yield result


@pytest.mark.slow
def test_quality_against_the_baseline_crosses_groups(smollm2, tmp_path, monkeypatch):
    monkeypatch.setattr(
        ExperimentRunner, "_measure_perplexity", lambda self, engine, model: "not measured in this test"
    )
    monkeypatch.setattr("rooflens.bench.runner.load_model", lambda *args, **kwargs: smollm2)  # loaded once per session
    exp = validate_experiment(
        {
            "name": "q",
            "model": "smollm2-135m",
            "engines": TWO_HF,
            "dtype": "float32",
            "device": "cpu",
            "energy": False,
            "workloads": [{"prompt_len": 8, "gen_len": 4, "batch_sizes": [1, 2]}],
            "repetitions": {"warmup": 0, "min_reps": 1, "min_seconds": 0},
        }
    )
    workers = InProcessWorkers()
    records = by_cell(ExperimentRunner(exp, results_root=tmp_path, executor=workers).run().records)
    assert workers.jobs[0]["references"] == {} and sorted(workers.jobs[1]["references"]) == ["0:1", "0:2"]
    assert [len(row) for row in workers.jobs[1]["references"]["0:2"]] == [4, 4]
    for b in (1, 2):
        static = records[("hf-static", b)].quality
        assert static.agreement.value == 1.0 and static.rouge_l.value == 1.0  # static cache = dynamic, greedy
        assert records[("hf", b)].quality.agreement.value == 1.0  # the baseline against itself


# ---------------------------------------------------------------------------- ray


def test_ray_runs_groups_as_tasks_and_a_crashed_task_fails_its_cells(abort_plugin, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'rooflens[ray]')")
    # the local cluster's workers inherit PYTHONPATH, so they see the abort plug-in
    exp = tiny([{"name": "abort"}, *TWO_HF], validate=False, baseline="abort")
    try:
        result = ExperimentRunner(exp, results_root=tmp_path, executor=make_executor("ray")).run()
    finally:
        ray.shutdown()
    assert [(r.cell.engine_label, r.cell.batch_size, r.status) for r in result.records] == [
        ("abort", 1, "failed"),
        ("abort", 2, "failed"),
        ("hf", 1, "ok"),
        ("hf", 2, "ok"),
        ("hf-static", 1, "ok"),
        ("hf-static", 2, "ok"),
    ]
    reason = result.records[0].reason
    assert reason.type == "WorkerDied" and reason.message.startswith("ray task failed: ")
    ok = [r for r in result.records if r.status == "ok"]
    assert {r.environment["placement"]["executor"] for r in ok} == {"ray"}
    assert os.getpid() not in {r.environment["placement"]["pid"] for r in ok}
    assert len(load_records(result.folder)) == 6
    # the cells Ray measured have the statuses and record schema of the same cells run inline
    inline = by_cell(ExperimentRunner(tiny(TWO_HF), results_root=tmp_path / "inline").run().records)
    assert sorted(by_cell(ok)) == sorted(inline)
    for cell, record in by_cell(ok).items():
        assert inline[cell].status == "ok" and keys(record) == keys(inline[cell])
