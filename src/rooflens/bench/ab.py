"""``rooflens ab``: two revisions (or two experiment variants) measured on one machine, in one job, interleaved.

Each side is one long-lived worker process (:mod:`rooflens.bench.ab_worker`) started with an isolated path
and the side's source folder first: a git revision checked out into a temporary worktree, or the working
tree. Both load their model and prepare their engines once; then, cell by cell, the driver asks them in
turn for short blocks of repetitions, in rounds whose order flips each round (A B, B A, A B, ...), so the
machine's drift reaches both sides alike and only one side measures at a time (each block also holds the
machine lock). A cell gets at least ``rounds`` rounds, then more until the plan's ``enough`` says its
rounds so far are powered (:func:`rooflens.results.ab_verdict.powered`), at most ``max_rounds``. Each
side's records go to their own run folder (run id ending ``-base`` / ``-head``), the revision in
``environment.placement.ab``; the verdict pairs the two sides round by round
(:mod:`rooflens.results.ab_verdict`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rooflens.bench.executors.base import Silent, Watch, stderr_tail, watched_lines, worker_died
from rooflens.bench.job import Block, Ended, Event, Fatal, Finished, GroupJob, Ready, Started, decode_event
from rooflens.bench.runner import ExperimentRunner, RunObserver
from rooflens.config import Experiment
from rooflens.results.record import Record

BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from rooflens.bench.ab_worker import main; sys.exit(main(int(sys.argv[2])))"
"""What a worker runs (``python -I -c BOOT SRC FD``): the side's source folder first on an isolated path."""


class AbError(RuntimeError):
    """rooflens ab cannot run as asked (a revision that is not a commit, a worker that died); the message says why."""


@dataclass(frozen=True)
class SideSource:
    name: str  # "base" | "head"
    revision: str  # a commit, or "working tree"
    src: Path  # the folder put first on the worker's path


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)
    except OSError as err:
        raise AbError(f"git is needed to check revisions out: {err}") from None
    if out.returncode != 0:
        raise AbError(f"git {' '.join(args)} in {repo}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


@contextmanager
def checkouts(src: Path, base: str, head: str, same: bool = False) -> Iterator[tuple[SideSource, SideSource]]:
    """``src`` (a folder of a git repository) at revisions ``base`` and ``head``, each in a temporary worktree
    (one worktree for both with ``same``, the A/A test); removed afterwards."""
    src = src.resolve()
    root = Path(_git(src, "rev-parse", "--show-toplevel")).resolve()
    rel = src.relative_to(root)
    shas = {}
    for name, rev in (("base", base), ("head", head)):
        try:
            shas[name] = _git(root, "rev-parse", "--verify", f"{rev}^{{commit}}")
        except AbError:
            raise AbError(f"{name.upper()} {rev!r}: not a commit of {root}") from None
    with tempfile.TemporaryDirectory(prefix="rooflens-ab-") as tmp:
        made = []
        try:
            for name in ("base",) if same else ("base", "head"):
                where = Path(tmp) / name
                _git(root, "worktree", "add", "--detach", str(where), shas[name])
                made.append(where)
            sides = [
                SideSource(name, shas[name], made[0 if same else i] / rel) for i, name in enumerate(("base", "head"))
            ]
            yield sides[0], sides[1]
        finally:
            for where in made:
                subprocess.run(
                    ["git", "-C", str(root), "worktree", "remove", "--force", str(where)], capture_output=True
                )


@dataclass
class Side:
    """One side's worker process, its runner (the run folder it writes) and its job."""

    source: SideSource
    runner: ExperimentRunner
    job: GroupJob
    log: Path
    proc: subprocess.Popen | None = None
    fd: int | None = None  # the read end of the worker's event pipe
    lines: Iterator[str] | None = None
    watch: Watch = field(default_factory=Watch)  # a worker silent too long (a hung engine) is stopped
    records: list[Record] = field(default_factory=list)
    blocks: dict[int, dict[int, dict[str, list[float]]]] = field(default_factory=dict)  # cell -> round -> values
    failed: set[int] = field(default_factory=set)  # cells whose blocks stopped (refused, or one raised)

    def start(self, python: str) -> None:
        read_fd, write_fd = os.pipe()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [python, "-I", "-c", BOOT, str(self.source.src), str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                pass_fds=(write_fd,),
                text=True,
            )
        os.close(write_fd)
        self.fd, self.lines = read_fd, watched_lines(read_fd, self.watch)

    def ask(self, op: dict, until: type) -> None:
        """Send a command; relay events until one of type ``until`` (Fatal, a dead or hung worker: AbError)."""
        assert self.proc is not None and self.proc.stdin is not None
        if op["op"] == "block":  # a block is timed as a cell is (cell_timeout_s, else 900 s)
            self.watch.saw(Started(index=op["index"]))
        self.proc.stdin.write(json.dumps(op) + "\n")
        self.proc.stdin.flush()
        while (event := self._next()) is not None:
            self._relay(event)
            if isinstance(event, until):
                return
        self._died()

    def finish(self, cells: int) -> None:
        """Ask for the records (one per cell) and wait for the worker to exit."""
        self.ask({"op": "finish"}, Finished)
        while len(self.records) < cells:
            if (event := self._next()) is None:
                self._died()
            self._relay(event)  # type: ignore[arg-type]
        assert self.proc is not None
        self.proc.wait()

    def _next(self) -> Event | None:
        """The worker's next event; None when it closed its pipe; AbError when it stayed silent too long."""
        assert self.lines is not None
        try:
            line = next(self.lines, None)
        except Silent:
            self.stop()
            what = f"the {self.source.name} worker ({self.source.revision[:12]}) was stopped"
            reason = self.watch.reason()
            self.runner.handle(self.job, Ended(reason=reason))
            raise AbError(f"{what}: {reason.message}") from None
        if line is None:
            return None
        event = decode_event(line)
        self.watch.saw(event)
        return event

    def _relay(self, event: Event) -> None:
        if isinstance(event, Fatal):  # a model that cannot load, a prompt longer than the context, --no-wait
            raise AbError(f"the {self.source.name} worker ({self.source.revision[:12]}) stopped: {event.message}")
        if isinstance(event, Block):
            self.blocks.setdefault(event.index, {})[event.round] = event.values
            if event.failed:
                self.failed.add(event.index)
            return
        self.runner.handle(self.job, event)
        if isinstance(event, Finished):
            self.records.append(event.record)

    def _died(self) -> None:
        assert self.proc is not None
        code = self.proc.wait()
        what = f"the {self.source.name} worker ({self.source.revision[:12]}) exited with {code}"
        self.runner.handle(self.job, Ended(reason=worker_died(what, stderr_tail(self.log))))
        raise AbError(f"{what}; its log ends:\n{stderr_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


Rounds = dict[int, dict[str, list[float]]]  # a side's rounds of one cell: round -> metric -> its block's values


@dataclass(frozen=True)
class AbPlan:
    base: tuple[Experiment, str]  # the experiment each side runs, and its file
    head: tuple[Experiment, str]
    rounds: int = 8  # at least
    max_rounds: int = 8  # at most
    block_reps: int = 1
    results_root: Path | None = None
    enough: Callable[[Rounds, Rounds], bool] | None = None  # are a cell's rounds so far (base, head) enough?


def _side(source: SideSource, exp: Experiment, file: str, plan: AbPlan, observer: RunObserver, tmp: Path) -> Side:
    runner = ExperimentRunner(
        exp, source=file, results_root=plan.results_root, observer=observer, run_suffix=f"-{source.name}"
    )
    job = runner.job(range(len(runner.cells)), "ab")
    placement = {"ab": {"side": source.name, "revision": source.revision, "src": str(source.src)}}
    job = job.model_copy(update={"placement": placement})
    return Side(source, runner, job, tmp / f"{source.name}.log", watch=Watch(exp.cell_timeout_s))


def worker_job(job: GroupJob) -> dict:
    """The job as an ab worker gets it: the job and its experiment without the fields at their defaults (the
    worker's schema fills its own back) and without ``attribution`` (ab never profiles), so a base revision from
    before a field existed still takes the job (its schema forbids unknown fields) unless the job sets that field."""
    out = job.model_dump(mode="json", exclude={"experiment"}, exclude_defaults=True)
    out["experiment"] = job.experiment.model_dump(mode="json", exclude_defaults=True, exclude={"attribution"})
    return out


def check_same_cells(base: Experiment, head: Experiment) -> None:
    """Both sides must have the same cells, in the same order (they are paired cell by cell)."""
    from rooflens.bench.cells import expand_cells

    def names(exp: Experiment) -> list[str]:
        return [f"{c.engine.display} {c.workload.display} b{c.batch_size}" for c in expand_cells(exp)]

    a, b = names(base), names(head)
    if a != b:
        raise AbError(f"the two experiments have different cells: base {a}, head {b}")


def _measure_cell(index: int, a: Side, b: Side, plan: AbPlan) -> None:
    """Rounds of one cell until it has ``plan.rounds`` and is powered, or has ``plan.max_rounds``, or failed."""
    for r in range(max(plan.rounds, plan.max_rounds)):
        for side in (a, b) if r % 2 == 0 else (b, a):
            side.ask({"op": "block", "index": index, "round": r, "reps": plan.block_reps}, Block)
        if index in a.failed or index in b.failed:
            return
        if r + 1 >= plan.rounds and (plan.enough is None or plan.enough(a.blocks[index], b.blocks[index])):
            return


def run_ab(
    plan: AbPlan, sources: tuple[SideSource, SideSource], observer: RunObserver, python: str = sys.executable
) -> tuple[Side, Side]:
    """Measure both sides, interleaved; returns them with their records (written to their run folders)."""
    check_same_cells(plan.base[0], plan.head[0])
    with tempfile.TemporaryDirectory(prefix="rooflens-ab-logs-") as tmp:
        a = _side(sources[0], *plan.base, plan, observer, Path(tmp))
        b = _side(sources[1], *plan.head, plan, observer, Path(tmp))
        b.job = b.job.model_copy(update={"dtype": a.job.dtype})  # one dtype for both, chosen once
        try:
            for side in (a, b):
                side.start(python)
                side.ask({"op": "start", "job": worker_job(side.job)}, Ready)
            for index in range(len(a.runner.cells)):
                _measure_cell(index, a, b, plan)
            for side in (a, b):
                side.finish(len(side.runner.cells))
        finally:
            for side in (a, b):
                side.stop()
    return a, b
