"""Two simulated Ray nodes, each with one measuring slot (``rooflens_measure: 1``) and room for two 1-CPU tasks:
four groups never measure side by side on one node, and both nodes measure.

Without the slot Ray would place two of the 1-CPU tasks on one 2-CPU node; with it, each node runs one task
at a time. The interval of each task is in its records: from its worker's setup (``environment.captured_at``)
to the end of its last cell, inside the time Ray reserved the node's slot for it.
"""

from __future__ import annotations

import itertools

import pytest

from factories import overlap, task_spans
from rooflens.bench.executors import make_executor
from rooflens.bench.runner import ExperimentRunner
from rooflens.bench.validate import validate_experiment
from rooflens.device.lock import lock_path

SLOT = {"rooflens_measure": 1}
NODE = {"num_cpus": 2, "resources": SLOT}


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``), kept to this module: its
    address is not published in /tmp/ray, where another test's ``ray.init()`` would find and join it."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'rooflens[ray]')")
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
        cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
            cluster.shutdown()


@pytest.mark.slow
def test_two_nodes_never_measure_two_groups_at_once_on_one_node(two_nodes, tmp_path):
    engines = [{"name": "hf", "label": f"hf-{i}"} for i in range(4)]
    exp = validate_experiment(
        {
            "name": "nodes",
            "model": "shape:tiny-llama",
            "engines": engines,
            "workloads": [{"prompt_len": 8, "gen_len": 4}],
            "repetitions": {"warmup": 0, "min_reps": 2, "min_seconds": 0.3},
            "device": "cpu",
            "dtype": "float32",
            "threads": 1,  # 1 CPU each: without the measuring slot, two would fit on one node
            "schedule": "blocks",  # a task per engine (interleaved: one task measures them all)
            "energy": False,
        }
    )
    result = ExperimentRunner(exp, results_root=tmp_path, executor=make_executor("ray")).run()
    assert [r.status for r in result.records] == ["ok"] * 4
    placements = {r.cell.engine_label: r.environment["placement"] for r in result.records}
    for p in placements.values():
        assert p["resources"] == {"CPU": 1, **SLOT}
        assert p["exclusive"] == [f"rooflens_measure resource on node {p['node_id']}", f"machine lock {lock_path()}"]
    by_node: dict[str, list[str]] = {}
    for label, p in placements.items():
        by_node.setdefault(p["node_id"], []).append(label)
    assert len(by_node) == 2  # both nodes measured
    spans = {label: span for (_, label), span in task_spans(result.records).items()}
    for labels in by_node.values():
        for a, b in itertools.combinations(labels, 2):
            assert not overlap(spans[a], spans[b]), f"{a} and {b} measured at once on one node"
