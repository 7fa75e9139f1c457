"""One measurement per machine at a time: the machine lock, held around every measured window.

Two measurements side by side distort each other (they share memory bandwidth, caches, the GPU and the
RAPL package counter), and nothing in their figures shows it. So every window whose timings or energy
become a figure runs inside :func:`measuring`: a group's cells (``bench.measure``), a probe of the roofline
ceilings, a kernel calibration, the ``dtype: auto`` micro-benchmark. The lock is an OS file lock
(``filelock``: ``flock`` on Unix, ``LockFileEx`` on Windows) on ``measure.lock`` in :func:`rooflens.fsutil.lock_dir`;
the OS drops it when its process dies, so a crashed run never blocks the next one.

Who holds it (pid, command line, what, since when) is in ``measure.holder.json`` beside it, written by the
holder once it has the lock: a waiter reads it to say whom it waits for. (A separate file, because
filelock 3.x truncates the lock file at every attempt to take it.)

Within one process the lock is re-entrant (a probe inside a run's measurement does not wait for itself);
a second thread of the process waits for the first as another process would. Whether to wait, and how to
tell the user, is the caller's :func:`waiting` policy: ``rooflens run --no-wait`` fails fast with
:class:`MachineBusy` naming the holder.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from rooflens.fsutil import lock_dir, write_atomic
from rooflens.text import shorten

LOCK_FILE = "measure.lock"
HOLDER_FILE = "measure.holder.json"
COMMAND_LIMIT = 200
HOLDER_READ_TRIES = 20  # x 50 ms: the time a new holder has to write its name after taking the lock


@dataclass(frozen=True)
class Holder:
    """Who holds the machine lock, as the holder wrote it."""

    pid: int
    command: str
    what: str
    since: str  # ISO 8601, UTC

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command}), measuring {self.what} since {self.since}"


class MachineBusy(RuntimeError):
    """Another measurement holds the machine lock, and this process was told not to wait (``--no-wait``)."""


def _who(holder: Holder | None) -> str:
    return holder.describe() if holder else "a process that has not written its name yet"


def _tell_stderr(text: str) -> None:
    print(f"rooflens: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class WaitPolicy:
    """What :func:`measuring` does when another measurement holds the lock: wait (telling ``on_wait`` once
    who holds it), or raise :class:`MachineBusy`."""

    wait: bool = True
    on_wait: Callable[[str], None] = _tell_stderr


_DEFAULT_POLICY = WaitPolicy()
_POLICY: ContextVar[WaitPolicy | None] = ContextVar("rooflens_machine_lock_policy", default=None)


def wait_policy() -> WaitPolicy:
    """The policy of the calling context (a thread starts with the default: wait, telling stderr)."""
    return _POLICY.get() or _DEFAULT_POLICY


@contextmanager
def waiting(wait: bool = True, on_wait: Callable[[str], None] | None = None) -> Iterator[WaitPolicy]:
    """Within this block (this thread or task), :func:`measuring` waits or fails fast as ``wait`` says and
    tells ``on_wait`` (default: stderr) who it waits for."""
    policy = WaitPolicy(wait, on_wait or _tell_stderr)
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def lock_path() -> Path:
    """The machine lock's file (its folder is created if missing)."""
    return lock_dir() / LOCK_FILE


def read_holder(folder: Path | None = None) -> Holder | None:
    """Who holds the lock in ``folder`` (default: this user's), as written; None when nobody wrote it."""
    path = (folder if folder is not None else lock_dir()) / HOLDER_FILE
    try:
        return Holder(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


class _Hold:
    """This process's hold of the machine lock: taken by the outermost :func:`measuring`, given back by it."""

    guard = threading.RLock()  # one thread of the process at a time; re-entrant in that thread
    depth = 0
    lock: Any = None  # the FileLock while held
    path: Path | None = None

    @classmethod
    def forget(cls) -> None:
        """In a forked child: the parent's hold is the parent's (the child waits for it like anyone else)."""
        cls.guard, cls.depth, cls.lock, cls.path = threading.RLock(), 0, None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Hold.forget)


@contextmanager
def measuring(what: str) -> Iterator[Path]:
    """Hold the machine lock for a measured window (``what`` says which, for a waiter); yields the lock's
    path. Waits for another holder, or raises :class:`MachineBusy`, as :func:`waiting` says."""
    policy = wait_policy()
    if not _Hold.guard.acquire(blocking=False):  # another thread of this process measures
        _busy(policy, lock_path())
        _Hold.guard.acquire()
    try:
        if _Hold.depth == 0:
            _take(what, policy)
        _Hold.depth += 1
        try:
            assert _Hold.path is not None
            yield _Hold.path
        finally:
            _Hold.depth -= 1
            if _Hold.depth == 0:
                _give_back()
    finally:
        _Hold.guard.release()


F = TypeVar("F", bound=Callable[..., Any])


def holds_machine_lock(what: str) -> Callable[[F], F]:
    """Decorate a function that measures: it runs inside :func:`measuring`."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with measuring(what):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _take(what: str, policy: WaitPolicy) -> None:
    from filelock import FileLock, Timeout

    path = lock_path()
    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _busy(policy, path)
        lock.acquire(timeout=-1)
    try:
        holder = Holder(os.getpid(), _command(), what, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_atomic(path.parent / HOLDER_FILE, json.dumps(asdict(holder)) + "\n")
    except BaseException:
        lock.release()
        raise
    _Hold.lock, _Hold.path = lock, path


def _give_back() -> None:
    lock, path = _Hold.lock, _Hold.path
    _Hold.lock = _Hold.path = None
    try:
        if path is not None:
            (path.parent / HOLDER_FILE).unlink(missing_ok=True)
    finally:
        if lock is not None:
            lock.release()


def _busy(policy: WaitPolicy, path: Path) -> None:
    """The lock is held by someone else: raise (no waiting), or say once whom this process waits for."""
    holder = _current_holder(path.parent)
    if not policy.wait:
        raise MachineBusy(
            f"another measurement holds the machine lock {path}: {_who(holder)}; run again when it has ended "
            "(or without --no-wait, to wait for it)"
        )
    policy.on_wait(f"waiting for the machine lock {path}, held by {_who(holder)}")


def _current_holder(folder: Path) -> Holder | None:
    """The holder's name, once it has written it: a holder file of a dead process is an old one (its
    process died holding the lock, which the OS then released) and the new holder is about to write."""
    import psutil

    for _ in range(HOLDER_READ_TRIES):
        holder = read_holder(folder)
        if holder is not None and psutil.pid_exists(holder.pid):
            return holder
        time.sleep(0.05)
    return None


def _command() -> str:
    """This process's command line as ``ps`` shows it (a Ray worker shows its task), shortened."""
    import psutil

    try:
        argv = psutil.Process().cmdline()
    except psutil.Error:
        argv = sys.argv
    return shorten(" ".join(" ".join(argv).split()) or sys.executable, COMMAND_LIMIT)
