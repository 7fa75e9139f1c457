"""The remote half of the ``ray`` executor: one job in a Ray task, its events streamed back as they come.

Ray streams what a generator task yields; the measuring function reports through a callback. So the
task measures in a thread of its own and yields each event that thread emits, the moment it does.
Only what the driver uses under ``ray`` is sent: progress (model loading, cells starting, repetitions)
stays on the node.
"""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

from rooflens.bench.job import GroupJob, MeasureFn, encode_event

SENT = ("ready", "note", "started", "record", "interrupted", "fatal")  # not "rep": no wake-up between repetitions
MEASURE_RESOURCE = "rooflens_measure"
"""The custom Ray resource of a node that measures: one unit per group measuring there (nodes declare 1)."""


def group_task(measure: MeasureFn, job_json: str) -> Iterator[str]:
    """Runs on a Ray worker: the job's events, as JSON lines. Torch's threads are the CPUs Ray granted the
    task, so tasks side by side on a node never run more measuring threads than it has cores."""
    import ray

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    context = ray.get_runtime_context()
    granted = context.get_assigned_resources()
    update: dict[str, Any] = {
        "placement": {
            "node_id": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            # hashed like the environment's own hostname_hash: records get shared; node_id/node_ip locate the node
            "hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
            "gpu_ids": list(ray.get_gpu_ids()),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "resources": granted,
            # what kept other measurements off the node during the task (the machine lock is added by the workbench)
            "exclusive": [f"{MEASURE_RESOURCE} resource on node {context.get_node_id()}"],
        }
    }
    if granted.get("CPU", 0) >= 1:
        update["threads"] = int(granted["CPU"])
    job = GroupJob.model_validate_json(job_json).model_copy(update=update)
    yield from _streamed(measure, job)


def _streamed(measure: MeasureFn, job: GroupJob) -> Iterator[str]:
    """``measure(job, ...)`` in a thread; its sent events here, as they come. The thread's error is raised here
    (a failed task). This thread only waits meanwhile: it wakes between cells, never inside a timed window."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    end = object()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            measure(job, lambda event: events.put(event) if event.event in SENT else None)
        except BaseException as err:
            errors.append(err)
        finally:
            events.put(end)

    threading.Thread(target=work, name="rooflens-measure", daemon=True).start()
    while (event := events.get()) is not end:
        yield encode_event(event)
    if errors:
        raise errors[0]
