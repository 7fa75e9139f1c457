"""Executors: inline and subprocess agree; a worker that dies fails only its own cells; Ray is optional."""

from __future__ import annotations

import itertools
import os
import pickle
import re
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from factories import TESTS_DIR, overlap, task_spans
from rooflens.bench.executors import Executor, ExecutorError, make_executor
from rooflens.bench.executors.base import describe_exit, one_by_one
from rooflens.bench.executors.ray_executor import MISSING_RAY
from rooflens.bench.job import GroupJob, decode_event, encode_event
from rooflens.bench.measure import measure_group
from rooflens.bench.preflight import PreflightError
from rooflens.bench.runner import ExperimentRunner, SilentObserver
from rooflens.bench.validate import validate_experiment
from rooflens.cli import app
from rooflens.config import ConfigError, Experiment
from rooflens.device.lock import lock_path
from rooflens.results.store import load_records

PLUGIN = TESTS_DIR / "plugins" / "rooflens_abort_engine"


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


# ---------------------------------------------------------------------------- the job and the measuring function


def test_a_group_job_round_trips_through_json_and_pickle(tmp_path):
    runner = ExperimentRunner(tiny(TWO_HF, threads=1, dtype="float32"), source="x.yaml", results_root=tmp_path)
    runner.references = {"0:1": [[1, 2, 3, 4]]}
    job = runner.job([2, 3], "subprocess")
    assert job.group == [2, 3] and job.threads == 1 and job.dtype.name == "float32"
    assert job.references == {"0:1": [[1, 2, 3, 4]]} and job.experiment is runner.exp
    again = GroupJob.model_validate_json(job.model_dump_json())
    assert again == job and again.experiment.config_hash() == runner.exp.config_hash()
    assert pickle.loads(pickle.dumps(job)) == job


def test_executors_get_jobs_and_a_function_never_the_driver():
    """No executor module imports the driver (the runner) or the measuring code: both are handed to them."""
    import rooflens.bench.executors as executors

    imports = re.compile(r"^\s*(from|import) rooflens\.bench\.(runner|measure)\b", re.MULTILINE)
    for path in Path(executors.__file__).parent.glob("*.py"):
        assert not imports.search(path.read_text()), path.name


@pytest.mark.slow
def test_measure_group_with_an_inline_emit_gives_the_records_of_the_runner(tmp_path):
    exp = tiny(TWO_HF)
    runner = ExperimentRunner(exp, source="x.yaml", results_root=tmp_path / "runner")
    expected = by_cell(runner.run().records)
    measured = ExperimentRunner(exp, source="x.yaml", results_root=tmp_path / "direct")
    events = []
    for group in ([0, 1], [2, 3]):  # the baseline's group, then the other (one process keeps the model)
        measure_group(measured.job(group, "inline"), events.append)
    kinds = [e.event for e in events if e.event != "rep"]
    assert kinds == ["ready", "loading", *["started", "record"] * 2, "ready", *["started", "record"] * 2]
    records = by_cell(e.record for e in events if e.event == "record")
    assert list(records) == list(expected)
    for cell, record in records.items():
        assert record.status == expected[cell].status == "ok" and keys(record) == keys(expected[cell])
        assert record.environment["placement"] == {
            "executor": "inline",
            "pid": os.getpid(),
            "exclusive": [f"machine lock {lock_path()}"],
        }
        assert record.record_id.startswith(measured.run_id + "/") and record.experiment["file"] == "x.yaml"
    assert not (tmp_path / "direct").exists()  # measuring writes nothing: the driver writes records


# ---------------------------------------------------------------------------- subprocess


@pytest.mark.slow
def test_inline_and_subprocess_give_the_same_cells_statuses_and_schema(tmp_path):
    exp = tiny(TWO_HF, schedule="blocks")  # a job per engine (interleaved: one job, test_interleave.py)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def install_abort_plugin(site: Path) -> None:
    """The abort engine as an installed distribution with an entry point, in ``site``: its package and a
    ``.dist-info`` (from its pyproject.toml). Only processes with ``site`` on their PYTHONPATH see it."""
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


def with_site(site: Path) -> str:
    return os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))


@pytest.fixture
def abort_plugin(tmp_path, monkeypatch) -> None:
    """The abort engine, visible to worker processes only (on their PYTHONPATH)."""
    install_abort_plugin(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", with_site(tmp_path / "site"))


@pytest.mark.slow
def test_a_worker_killed_by_a_signal_fails_its_own_cells_and_the_sweep_goes_on(abort_plugin, tmp_path):
    # in blocks, the abort group runs first, in a worker of its own
    exp = tiny([{"name": "abort"}, {"name": "hf"}], validate=False, baseline="abort", schedule="blocks")
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


@pytest.mark.slow
def test_interleaved_engines_share_one_worker_and_its_crash_fails_all_their_unfinished_cells(abort_plugin, tmp_path):
    exp = tiny([{"name": "abort"}, {"name": "hf"}], validate=False, baseline="abort")
    result = ExperimentRunner(exp, results_root=tmp_path, executor=make_executor("subprocess")).run()
    records = by_cell(load_records(result.folder))
    assert sorted(records) == [("abort", 1), ("abort", 2), ("hf", 1), ("hf", 2)]
    assert all(r.status == "failed" and r.reason.type == "WorkerDied" for r in records.values())


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_worker_never_imports_from_the_working_directory(tmp_path, monkeypatch):
    # files planted where a user runs a downloaded experiment: under ``python -m`` both would run in the worker
    planted = tmp_path / "downloads"
    (planted / "rooflens").mkdir(parents=True)
    for name in ("json.py", "random.py", "rooflens/__init__.py"):
        (planted / name).write_text("raise SystemExit('planted code ran')\n")
    monkeypatch.chdir(planted)
    exp = tiny([{"name": "hf"}])
    result = ExperimentRunner(exp, results_root=tmp_path / "out", executor=make_executor("subprocess")).run()
    assert [r.status for r in result.records] == ["ok", "ok"], [r.reason for r in result.records]


# ---------------------------------------------------------------------------- hung engines, killed drivers


@pytest.mark.slow
def test_a_hung_engine_is_stopped_at_the_cell_timeout_and_the_sweep_goes_on(abort_plugin, tmp_path):
    exp = tiny([{"name": "hang"}, {"name": "hf"}], validate=False, baseline="hang", schedule="blocks", cell_timeout_s=3)
    result = ExperimentRunner(exp, results_root=tmp_path, executor=make_executor("subprocess")).run()
    records = by_cell(load_records(result.folder))
    assert [records[k].status for k in sorted(records)] == ["failed", "failed", "ok", "ok"]  # hang, then hf
    for b in (1, 2):
        reason = records[("hang", b)].reason
        assert reason.type == "Timeout" and reason.message.startswith("timeout after 3 s without progress")
        assert "cell_timeout_s" in reason.message


def test_the_default_watch_gives_preparation_900_s_then_ten_times_the_slowest_repetition(monkeypatch):
    from rooflens.bench.executors import base
    from rooflens.bench.job import Rep, Started

    clock = [100.0]
    monkeypatch.setattr(base.time, "monotonic", lambda: clock[0])
    watch = base.Watch()
    assert watch.allowed == 900  # the interpreter, the imports, the model's loading
    for t, event in [(110, Started(index=0)), (400, Rep(index=0, measured=0, warmup=True))]:
        clock[0] = t
        watch.saw(event)
    assert watch.allowed == 900  # the first repetition also held the preparation: not a repetition's length
    clock[0] = 402.5
    watch.saw(Rep(index=0, measured=1, warmup=False))
    assert watch.allowed == pytest.approx(120 + 10 * 2.5) and watch.remaining() == pytest.approx(145)
    clock[0] = 402.5 + 146
    assert watch.remaining() < 0 and watch.reason().message.startswith("timeout after 145 s without progress (cell 0)")
    limited = base.Watch(limit=5)
    assert limited.allowed == 900  # before the first cell: starting a worker is not a cell's work
    limited.saw(Started(index=3))
    assert limited.allowed == 5


def test_a_cell_timeout_moves_the_default_executor_to_subprocess_and_refuses_inline(tmp_path):
    from rooflens.bench.sweep import Sweep, SweepError

    default = tiny([{"name": "hf"}])
    assert Sweep.plan([(default, "x.yaml")], cell_timeout=30).experiments[0][0].executor == "subprocess"
    with pytest.raises(SweepError, match="executor 'inline' runs cells in this process"):
        Sweep.plan([(tiny([{"name": "hf"}], executor="inline"), "x.yaml")], cell_timeout=30)
    with pytest.raises(SweepError, match="--cell-timeout -1: must be a number of seconds above 0"):
        Sweep.plan([(default, "x.yaml")], cell_timeout=-1)
    with pytest.raises(SweepError, match="x.yaml: executor 'inline' runs cells in this process"):
        Sweep.plan([(tiny([{"name": "hf"}], executor="inline", cell_timeout_s=30), "x.yaml")])
    assert tiny([{"name": "hf"}], cell_timeout_s=30).config_hash() == default.config_hash()  # not what is measured


def workers_of(pid: int) -> list[int]:
    """The subprocess executor's workers whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == pid and b"subprocess_worker" in cmdline:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_run_with_a_hung_worker(tmp_path: Path):
    """``rooflens run`` (a process of its own) of hf then a hung engine, each in a worker; returns the driver
    once the hung engine is stuck in its worker (hf's record written)."""
    import subprocess
    import time

    yaml = tmp_path / "x.yaml"
    yaml.write_text(
        textwrap.dedent("""
        name: x
        model: shape:tiny-llama
        engines: [{name: hf}, {name: hang}]
        workloads: [{prompt_len: 8, gen_len: 4}]
        repetitions: {warmup: 0, min_reps: 1, min_seconds: 0}
        device: cpu
        executor: subprocess
        schedule: blocks
        energy: false
    """)
    )
    cmd = [sys.executable, "-m", "rooflens.cli", "run", str(yaml), "-q", "--results", str(tmp_path / "out")]
    hanging = tmp_path / "hanging"
    env = {**os.environ, "ROOFLENS_TEST_HANGING": str(hanging)}
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if hanging.exists() and workers_of(driver.pid):
            return driver
        assert driver.poll() is None, driver.communicate()[0]
        time.sleep(0.2)
    driver.kill()
    raise AssertionError("the hung engine's worker never started")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_driver_stops_its_worker_keeps_the_records_and_exits_143(abort_plugin, tmp_path):
    import signal

    driver = start_run_with_a_hung_worker(tmp_path)
    (worker,) = workers_of(driver.pid)
    driver.send_signal(signal.SIGTERM)
    output = driver.communicate(timeout=60)[0]
    assert driver.returncode == 143, output
    assert "interrupted: the sweep stopped after 1 of 2 cell(s)" in output
    assert not alive(worker)
    statuses = {r.cell.engine_label: r.status for r in load_records(tmp_path / "out")}
    assert statuses == {"hf": "ok", "hang": "failed"}  # the finished cell kept, the hung one recorded


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_with_a_driver_killed_outright(abort_plugin, tmp_path):
    import time

    driver = start_run_with_a_hung_worker(tmp_path)
    (worker,) = workers_of(driver.pid)
    driver.kill()  # SIGKILL: no handler runs in the driver
    driver.wait()
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker)


class InProcessWorkers(Executor):
    """The subprocess executor's protocol without the processes: each job and each event through JSON, the
    jobs measured by the function handed over, here (real weights load in seconds; per-engine perplexity on
    the held-out text would take a minute per worker on a small CPU)."""

    name = "subprocess"

    def __init__(self):
        self.jobs: list[GroupJob] = []

    def run(self, runs, measure, emit):
        for run in runs:
            for job in one_by_one(run):
                job = GroupJob.model_validate_json(job.model_dump_json())
                self.jobs.append(job)
                measure(job, lambda event, job=job: emit(job, decode_event(encode_event(event))))


@pytest.mark.slow
def test_quality_against_the_baseline_crosses_groups(smollm2, tmp_path, monkeypatch):
    monkeypatch.setattr(
        "rooflens.bench.group.measure_perplexity", lambda engine, model, shared: "not measured in this test"
    )
    monkeypatch.setattr("rooflens.bench.workbench.load_model", lambda *args, **kwargs: smollm2)  # once per session
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
            "schedule": "blocks",
        }
    )
    workers = InProcessWorkers()
    records = by_cell(ExperimentRunner(exp, results_root=tmp_path, executor=workers).run().records)
    assert workers.jobs[0].references == {} and sorted(workers.jobs[1].references) == ["0:1", "0:2"]
    assert [len(row) for row in workers.jobs[1].references["0:2"]] == [4, 4]
    for b in (1, 2):
        static = records[("hf-static", b)].quality
        assert static.agreement.value == 1.0 and static.rouge_l.value == 1.0  # static cache = dynamic, greedy
        assert records[("hf", b)].quality.agreement.value == 1.0  # the baseline against itself


# ---------------------------------------------------------------------------- ray


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster of 2 CPUs, one measuring slot (rooflens_measure: 1), for the module's tests; its
    workers see the abort plug-in."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'rooflens[ray]')")
    site = tmp_path_factory.mktemp("ray-site")
    install_abort_plugin(site)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", with_site(site))  # the cluster's workers inherit the driver's environment at init
        ray.init(
            address="local",  # a cluster of its own, never one another test started
            num_cpus=2,
            resources={"rooflens_measure": 1},
            include_dashboard=False,
            log_to_driver=False,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_runs_groups_as_tasks_and_a_crashed_task_fails_its_cells(ray_cluster, tmp_path):
    # the local cluster's workers see the abort plug-in (on their PYTHONPATH)
    exp = tiny([{"name": "abort"}, *TWO_HF], validate=False, baseline="abort", schedule="blocks")
    result = ExperimentRunner(exp, results_root=tmp_path, executor=make_executor("ray")).run()
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
    # threads unset: each task asks for a whole node (2 CPUs) and runs that many torch threads, so the two
    # groups submitted together after the baseline's ran one after the other, never side by side
    for r in ok:
        assert r.environment["placement"]["resources"]["CPU"] == 2 and r.environment["torch_threads"] == 2
    spans = task_spans(ok)
    assert not overlap(spans[("x", "hf")], spans[("x", "hf-static")])
    # the cells Ray measured have the statuses and record schema of the same cells run inline
    inline = by_cell(ExperimentRunner(tiny(TWO_HF), results_root=tmp_path / "inline").run().records)
    assert sorted(by_cell(ok)) == sorted(inline)
    for cell, record in by_cell(ok).items():
        assert inline[cell].status == "ok" and keys(record) == keys(inline[cell])


@pytest.mark.slow
def test_ray_cancels_a_hung_task_at_the_cell_timeout_and_the_sweep_goes_on(ray_cluster, tmp_path):
    exp = tiny([{"name": "hang"}, {"name": "hf"}], validate=False, baseline="hang", schedule="blocks", cell_timeout_s=3)
    result = ExperimentRunner(exp, results_root=tmp_path, executor=make_executor("ray")).run()
    records = by_cell(result.records)
    assert [records[k].status for k in sorted(records)] == ["failed", "failed", "ok", "ok"]  # hang, then hf
    reason = records[("hang", 1)].reason
    assert reason.type == "Timeout" and reason.message.startswith("timeout after 3 s without progress")


@pytest.mark.slow
def test_ray_places_tasks_by_their_requests_and_refuses_what_no_node_has(ray_cluster, tmp_path):
    ray_exec = make_executor("ray")
    # threads unset: the smallest node, whole; always the node's measuring slot
    assert ray_exec.resources(tiny(TWO_HF)) == {"CPU": 2, "rooflens_measure": 1}
    assert ray_exec.resources(tiny(TWO_HF, threads=1)) == {"CPU": 1, "rooflens_measure": 1}
    with pytest.raises(
        ExecutorError,
        match=r"asks Ray for 64 CPU and 1 rooflens_measure, which no node of the cluster has \(nodes: 2 CPU",
    ):
        ExperimentRunner(tiny(TWO_HF, threads=64), results_root=tmp_path, executor=ray_exec).run()
    assert not list(tmp_path.rglob("*.json"))  # refused before anything was submitted, not left waiting
    with pytest.raises(ExecutorError, match="use device 'cuda', not 'cuda:1'"):
        ray_exec.resources(tiny(TWO_HF, device="cuda:1"))


TWO_FILES = {
    # the groups after the baseline's ask for 1 CPU each, which the 2-CPU node has, but also for its one
    # measuring slot (rooflens_measure): they run one after another, never side by side
    "par": "engines: [{name: hf}, {name: hf, label: hf-static, options: {cache: static}}, {name: hf, label: hf-again}]\n"
    "schedule: blocks\n"
    "workloads: [{prompt_len: 8, gen_len: 4, batch_sizes: [1, 2]}]\n"
    "repetitions: {warmup: 0, min_reps: 1, min_seconds: 0.5}\n",
    "solo": "engines: [{name: hf}]\nworkloads: [{prompt_len: 8, gen_len: 4}]\n"
    "repetitions: {warmup: 0, min_reps: 1, min_seconds: 0}\n",
}


@pytest.mark.slow
def test_two_experiment_files_in_one_ray_call(ray_cluster, tmp_path):
    files = []
    for name, lines in TWO_FILES.items():
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(f"name: {name}\nmodel: shape:tiny-llama\n{lines}threads: 1\ndevice: cpu\nenergy: false\n")
    res = tmp_path / "res"
    r = CliRunner().invoke(app, ["run", *map(str, files), "--executor", "ray", "-q", "--results", str(res)])
    assert r.exit_code == 0, r.output
    assert "6/6 cells ok; records in" in r.output and "1/1 cells ok; records in" in r.output
    # each experiment in its own folder, with its own run id
    par, solo = (load_records(res / name) for name in TWO_FILES)
    assert sorted((x.cell.engine_label, x.cell.batch_size, x.status) for x in par) == [
        (label, b, "ok") for label in ("hf", "hf-again", "hf-static") for b in (1, 2)
    ]
    assert [(x.cell.engine_label, x.status) for x in solo] == [("hf", "ok")]
    (par_run,) = {x.experiment["run_id"] for x in par}
    (solo_run,) = {x.experiment["run_id"] for x in solo}
    assert par_run != solo_run and [p.name for p in (res / "par").iterdir()] == [par_run]
    # where each ran: a fresh Ray worker per group, given 1 CPU and the node's measuring slot, 1 torch thread
    for x in par + solo:
        placement = x.environment["placement"]
        assert placement["executor"] == "ray" and placement["pid"] != os.getpid()
        assert placement["node_id"] and placement["node_ip"] and len(placement["hostname_hash"]) == 12
        assert placement["gpu_ids"] == []
        assert placement["resources"] == {"CPU": 1, "rooflens_measure": 1} and x.environment["torch_threads"] == 1
        node_slot, machine_lock = placement["exclusive"]
        assert node_slot == f"rooflens_measure resource on node {placement['node_id']}"
        assert machine_lock.startswith("machine lock ") and machine_lock.endswith("measure.lock")
    assert len({x.environment["placement"]["pid"] for x in par + solo}) == 4
    spans = task_spans(par + solo)
    # one node, one measuring slot: no two groups at work at once, par's baseline before its other groups
    assert not any(overlap(a, b) for a, b in itertools.combinations(spans.values(), 2))
    assert spans[("par", "hf")][1] < min(spans[("par", "hf-static")][0], spans[("par", "hf-again")][0])


@pytest.mark.slow
def test_several_files_inline_run_one_after_another_and_exit_with_the_worst(tmp_path):
    ok, long, other = tmp_path / "ok.yaml", tmp_path / "long.yaml", tmp_path / "other.yaml"
    body = "model: shape:tiny-llama\nengines: [{name: hf}]\ndevice: cpu\nenergy: false\n"
    body += "repetitions: {warmup: 0, min_reps: 1, min_seconds: 0}\n"
    ok.write_text(f"name: ok\n{body}workloads: [{{prompt_len: 8, gen_len: 4, batch_sizes: [1, 2]}}]\n")
    long.write_text(f"name: long\n{body}workloads: [{{prompt_len: 1020, gen_len: 8}}]\n")  # past the context
    res = tmp_path / "res"
    r = CliRunner().invoke(app, ["run", str(long), str(ok), "-q", "--results", str(res)])
    assert r.exit_code == 2, r.output  # the worst: one experiment could not start
    out = " ".join(r.output.split())
    assert f"{long}: " in out and "exceed the context of shape:tiny-llama" in out
    assert "2/2 cells ok; records in" in out  # the other experiment ran all the same
    records = load_records(res)
    assert {x.experiment["name"] for x in records} == {"ok"} and not list((res / "long").rglob("*.json"))
    assert {x.environment["placement"]["pid"] for x in records} == {os.getpid()}  # inline: in the driver
    other.write_text(f"name: other\nexecutor: subprocess\n{body}workloads: [{{prompt_len: 8, gen_len: 4}}]\n")
    r = CliRunner().invoke(app, ["run", str(ok), str(other), "-q", "--results", str(res)])
    assert (
        r.exit_code == 2 and "name different executors" in r.output and "pick one for all with --executor" in r.output
    )
