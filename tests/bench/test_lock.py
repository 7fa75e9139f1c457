"""One measurement per machine at a time, as a run sees it: a group holds the machine lock over its measured
windows; a second run waits for the holder, saying who it is, or with --no-wait exits 2 naming it; under Ray
every task asks for its node's measuring slot (``rooflens_measure``).

The other measurement is a child python holding the lock (factories.child_holding), released by the test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from factories import child_holding, tiny_experiment
from rooflens.bench.executors import ExecutorError
from rooflens.bench.executors.ray_executor import RayExecutor
from rooflens.bench.measure import measure_group
from rooflens.bench.runner import ExperimentRunner
from rooflens.cli import app
from rooflens.device import lock
from rooflens.device.lock import lock_path, read_holder, waiting
from rooflens.results.store import load_records

EXPERIMENT = """
name: x
model: shape:tiny-llama
engines: [{name: hf}]
workloads: [{prompt_len: 8, gen_len: 4}]
repetitions: {warmup: 0, min_reps: 1, min_seconds: 0}
device: cpu
dtype: float32
energy: false
"""


@pytest.fixture
def experiment_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(textwrap.dedent(EXPERIMENT))
    return path


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------- a group's window


@pytest.mark.slow
def test_a_group_holds_the_machine_lock_over_its_measured_windows_only(tmp_path):
    runner = ExperimentRunner(tiny_experiment([{"name": "hf"}], energy=False), results_root=tmp_path)
    seen: list[tuple[str, object]] = []
    measure_group(runner.job([0, 1], "inline"), lambda e: seen.append((e.event, read_holder())))
    holders = {h for _, h in seen if h is not None}
    (holder,) = holders  # one hold for the whole group
    assert holder.what == "experiment t, engine hf"
    # set-up and the model load come before the hold; the first cell takes it; it lasts to the group's end
    assert [(event, h is not None) for event, h in seen if event != "rep"] == [
        ("ready", False),
        ("loading", False),
        ("started", False),
        ("record", True),
        ("started", True),
        ("record", True),
    ]
    assert all(h is not None for event, h in seen if event == "rep")  # every repetition under the lock
    assert read_holder() is None  # given back when the group ends


def test_the_callers_policy_goes_with_each_job_to_the_measuring_process(tmp_path):
    runner = ExperimentRunner(tiny_experiment([{"name": "hf"}]), results_root=tmp_path)
    assert runner.job([0], "subprocess").wait_for_lock is True
    with waiting(wait=False):
        assert runner.job([0], "subprocess").wait_for_lock is False


# ---------------------------------------------------------------------------- a second run


@pytest.mark.slow
def test_run_no_wait_exits_2_naming_the_holder(tmp_path, experiment_file):
    results = tmp_path / "res"
    with child_holding(tmp_path) as (child, _):
        r = CliRunner().invoke(app, ["run", str(experiment_file), "--no-wait", "-q", "--results", str(results)])
    out = one_line(r.output)
    assert r.exit_code == 2, r.output
    assert f"another measurement holds the machine lock {lock_path()}: pid {child.pid}" in out
    assert "measuring a test's child since" in out and "--no-wait" in out
    assert not list(results.rglob("*.json"))  # nothing measured, nothing recorded


@pytest.mark.slow
def test_a_second_run_waits_for_the_holder_saying_once_who_it_is(tmp_path, experiment_file, monkeypatch):
    results = tmp_path / "res"
    with child_holding(tmp_path) as (child, release):
        told = lock._busy

        def busy_then_release(policy, path):  # the run says whom it waits for; then the holder ends
            told(policy, path)
            release.touch()

        monkeypatch.setattr(lock, "_busy", busy_then_release)
        r = CliRunner().invoke(app, ["run", str(experiment_file), "--results", str(results)])
    out = one_line(r.output)
    assert r.exit_code == 0, r.output
    assert out.count("waiting for the machine lock") == 1
    assert f"waiting for the machine lock {lock_path()}, held by pid {child.pid}" in out
    (record,) = load_records(results)
    assert record.status == "ok"
    assert record.environment["placement"]["exclusive"] == [f"machine lock {lock_path()}"]


def test_hw_probe_no_wait_exits_2_naming_the_holder_before_measuring(tmp_path, monkeypatch):
    from filelock import FileLock

    monkeypatch.setenv("ROOFLENS_LOCK_DIR", str(tmp_path / "lock"))  # its holder file stays this test's
    monkeypatch.setattr(lock, "HOLDER_READ_TRIES", 1)
    holder = lock.Holder(os.getppid(), "rooflens run big.yaml", "experiment big, engine hf", "2026-01-01T00:00:00")
    (lock_path().parent / lock.HOLDER_FILE).write_text(json.dumps(dataclasses.asdict(holder)))
    with FileLock(str(lock_path())):  # held by a live process, as the holder file says
        r = CliRunner().invoke(app, ["hw", "probe", "--device", "cpu", "--quick", "--no-save", "--no-wait"])
    assert r.exit_code == 2, r.output
    assert holder.describe() in one_line(r.output) and "bandwidth" not in r.output  # nothing measured


@pytest.mark.slow
def test_a_subprocess_worker_takes_the_lock_itself_and_honours_no_wait(tmp_path, experiment_file):
    """The driver holds nothing while its worker measures (else the worker would wait forever): the worker
    takes the lock, and --no-wait reaches it with its job."""
    results = tmp_path / "res"
    base = ["run", str(experiment_file), "--executor", "subprocess", "-q", "--results", str(results)]
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 0, r.output
    (record,) = load_records(results)
    assert record.environment["placement"]["exclusive"] == [f"machine lock {lock_path()}"]
    with child_holding(tmp_path) as (child, _):
        r = CliRunner().invoke(app, [*base, "--no-wait"])
    assert r.exit_code == 2 and f"pid {child.pid}" in one_line(r.output), r.output


# ---------------------------------------------------------------------------- Ray: a node's measuring slot


def fake_ray(*nodes: dict) -> RayExecutor:
    """The executor's placement against a cluster of ``nodes`` (their Resources), without Ray."""
    executor = RayExecutor.__new__(RayExecutor)
    executor.ray = SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": n} for n in nodes])
    executor.address = None
    return executor


def test_every_ray_task_asks_for_its_nodes_measuring_slot():
    slot = {"rooflens_measure": 1.0}
    cluster = fake_ray({"CPU": 8.0, **slot}, {"CPU": 4.0, **slot}, {"CPU": 2.0})  # the third measures nothing
    assert cluster.resources(tiny_experiment([{"name": "hf"}])) == {"CPU": 4, **slot}  # the smallest measuring node
    assert cluster.resources(tiny_experiment([{"name": "hf"}], threads=2)) == {"CPU": 2, **slot}
    gpus = fake_ray({"CPU": 8.0, "GPU": 2.0, **slot})
    assert gpus.resources(tiny_experiment([{"name": "hf"}], device="cuda")) == {"CPU": 1, "GPU": 1, **slot}


def test_a_ray_cluster_without_measuring_slots_is_refused_with_the_fix():
    with pytest.raises(ExecutorError) as err:
        fake_ray({"CPU": 8.0}, {"CPU": 8.0, "GPU": 1.0}).resources(tiny_experiment([{"name": "hf"}]))
    assert str(err.value) == (
        "experiment 't': no node of the Ray cluster declares the 'rooflens_measure' resource, which keeps two "
        "measurements off one node; start each node that measures with "
        "`ray start ... --resources='{\"rooflens_measure\": 1}'`"
    )
