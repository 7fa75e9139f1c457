"""The ``ray`` executor: each group of cells as a Ray task, on a local or an existing Ray cluster.

Tasks run one group at a time (the baseline's first, then each later group with its tokens), so
no two measuring tasks share a node; records stream back to the driver as each cell ends (a
streaming generator task) and the driver writes them. A task is never retried: a crash would
otherwise be measured again silently; it becomes ``failed`` records for the cells it had not
finished, as under ``subprocess``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rooflens.bench.executors.base import Executor, ExecutorError, Results, worker_died
from rooflens.bench.executors.remote import GroupDriver, References

if TYPE_CHECKING:
    from rooflens.bench.runner import ExperimentRunner

MISSING_RAY = "executor 'ray' needs the ray package: pip install 'rooflens[ray]'"
TRACE_TAIL = 2048


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(MISSING_RAY) from None
    return ray


def _group_task(job: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Runs on a Ray worker: the records (and ``ready``/``fatal``) of one group; progress is not sent."""
    import signal

    from rooflens.bench.executors.worker import run_job

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield from run_job(job)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, address: str | None = None):
        self.ray = import_ray()  # fail before anything is measured
        self.address = address

    def _init(self) -> None:
        if not self.ray.is_initialized():
            # address None: RAY_ADDRESS if set, else a new local cluster
            self.ray.init(address=self.address, include_dashboard=False, log_to_driver=False)

    def _task(self, runner: ExperimentRunner) -> Any:
        exp = runner.exp
        gpus = exp.device.startswith("cuda") or (
            exp.device == "auto" and self.ray.cluster_resources().get("GPU", 0) > 0
        )
        return self.ray.remote(
            num_cpus=exp.threads or 1,
            num_gpus=1 if gpus else 0,
            max_retries=0,
            retry_exceptions=False,
            max_calls=1,  # a fresh worker process per group: the model and engine are freed with it
            num_returns="streaming",
        )(_group_task)

    def run(self, runner: ExperimentRunner, groups: Sequence[Sequence[int]]) -> Results:
        self._init()
        task = self._task(runner)
        references: References = {}
        for group in groups:
            driver = GroupDriver(runner, group, references)
            refs = task.remote(driver.job(self.name, same_machine=False))
            try:
                for ref in refs:
                    result = driver.handle(self.ray.get(ref))
                    if result is not None:
                        yield result
            except self.ray.exceptions.RayError as err:
                text = str(err)
                what = f"ray task failed: {type(err).__name__}: {text.splitlines()[0] if text else ''}"
                yield from driver.lost(worker_died(what, text[-TRACE_TAIL:]))
                continue
            except KeyboardInterrupt:
                self._cancel(refs)
                driver.interrupted()
                raise
            except BaseException:  # the driver stopped early (GeneratorExit) or a fatal message
                self._cancel(refs)
                raise
            yield from driver.lost(worker_died("ray task ended before reporting every cell", ""))

    def _cancel(self, refs: Any) -> None:
        try:
            self.ray.cancel(refs, force=True)
        except Exception:  # already finished, or a Ray without cancel for streaming tasks
            pass
