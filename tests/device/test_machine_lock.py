"""The machine lock: its folder, who holds it, re-entrancy, waiting or failing fast, and a holder that dies.

Another process holding the lock is a child python (factories.child_holding) that holds it until the test
lets it go (bounded): no test here depends on how fast anything runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from factories import BOUND_S, HOLDER_CHILD, child_env, child_holding, wait_for
from rooflens import fsutil
from rooflens.device import lock
from rooflens.device.lock import HOLDER_FILE, MachineBusy, lock_path, measuring, read_holder, waiting


@pytest.fixture
def own_lock_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "lock"
    monkeypatch.setenv("ROOFLENS_LOCK_DIR", str(folder))
    return folder


# ---------------------------------------------------------------------------- the folder


def test_the_lock_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOFLENS_LOCK_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert fsutil.lock_dir() == tmp_path / "explicit" and (tmp_path / "explicit").is_dir()
    assert lock_path() == tmp_path / "explicit" / "measure.lock"
    monkeypatch.delenv("ROOFLENS_LOCK_DIR")
    assert fsutil.lock_dir() == tmp_path / "rooflens"  # the user's runtime folder
    assert (tmp_path / "rooflens").stat().st_mode & 0o777 == 0o700


def test_without_a_writable_runtime_folder_the_lock_is_in_a_private_temp_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("ROOFLENS_LOCK_DIR")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    uid = os.getuid()
    for runtime in (None, str(tmp_path / "missing")):
        if runtime is None:
            monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        else:
            monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
        assert fsutil.lock_dir() == tmp_path / f"rooflens-{uid}"
    assert (tmp_path / f"rooflens-{uid}").stat().st_mode & 0o777 == 0o700
    # a folder of that name that is not this user's (another user made it first) is refused, never shared
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    (tmp_path / f"rooflens-{uid + 1}").mkdir()  # made by "another user": owned by the real uid
    with pytest.raises(PermissionError, match=r"owned by another user.*set ROOFLENS_LOCK_DIR"):
        fsutil.lock_dir()


# ---------------------------------------------------------------------------- one process


def test_the_holder_is_written_while_held_and_the_lock_is_reentrant(own_lock_dir):
    assert read_holder() is None
    with measuring("outer") as path:
        assert path == own_lock_dir / "measure.lock"
        holder = read_holder()
        assert holder.pid == os.getpid() and holder.what == "outer" and "python" in holder.command
        assert holder.since.endswith("+00:00")
        with measuring("a probe inside a run"):  # the same process: no deadlock, the outer holder stays
            assert read_holder() == holder
        assert read_holder() == holder  # still held after the inner window
        assert json.loads((own_lock_dir / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert read_holder() is None and not (own_lock_dir / HOLDER_FILE).exists()
    with waiting(wait=False), measuring("again"):  # given back: free for anyone
        pass


def test_another_thread_waits_for_the_holding_thread_or_fails_fast(own_lock_dir):
    told: list[str] = []
    taken, errors = threading.Event(), []

    def other_thread(wait: bool) -> None:
        try:
            with waiting(wait, told.append), measuring("the other thread"):
                taken.set()
        except MachineBusy as err:
            errors.append(str(err))

    with measuring("the main thread"):
        fast = threading.Thread(target=other_thread, args=(False,))
        fast.start()
        fast.join(BOUND_S)
        assert errors and f"pid {os.getpid()}" in errors[0] and "measuring the main thread" in errors[0]
        patient = threading.Thread(target=other_thread, args=(True,))
        patient.start()
        wait_for(lambda: told, "the waiting thread to say whom it waits for")
        assert not taken.is_set()  # it waits while this thread holds the lock
    patient.join(BOUND_S)
    assert taken.is_set() and len(told) == 1 and "held by pid" in told[0]


# ---------------------------------------------------------------------------- another process


@pytest.mark.slow
def test_a_second_process_waits_for_the_holder_saying_once_who_it_is(own_lock_dir, tmp_path):
    with child_holding(tmp_path) as (child, release):
        holder = read_holder()
        assert holder.pid == child.pid and holder.what == "a test's child" and HOLDER_CHILD.split()[0] in holder.command
        with pytest.raises(MachineBusy) as busy, waiting(wait=False):
            with measuring("this test"):
                pytest.fail("measured while another process held the lock")
        message = str(busy.value)
        assert f"pid {child.pid}" in message and "measuring a test's child since" in message
        assert "--no-wait" in message and str(own_lock_dir / "measure.lock") in message

        told: list[str] = []
        got = threading.Event()

        def wait_then_measure() -> None:
            with waiting(True, told.append), measuring("this test"):
                got.set()
                assert read_holder().pid == os.getpid()

        waiter = threading.Thread(target=wait_then_measure)
        waiter.start()
        wait_for(lambda: told, "the waiter to say whom it waits for")
        assert not got.is_set()  # blocked while the child holds it
        assert told == [f"waiting for the machine lock {own_lock_dir / 'measure.lock'}, held by {holder.describe()}"]
        release.touch()
        waiter.join(BOUND_S)
        assert got.is_set() and len(told) == 1  # said once, then measured


@pytest.mark.slow
def test_a_holder_that_dies_leaves_no_stale_lock(own_lock_dir, tmp_path):
    """filelock's OS lock (flock) goes with its process: a holder killed with SIGKILL blocks nobody, and the
    holder file it left behind is not taken for the holder of the lock."""
    held = tmp_path / "held"
    proc = subprocess.run(
        [sys.executable, "-c", HOLDER_CHILD, str(held), str(tmp_path / "release"), "die"],
        env=child_env(),
        timeout=BOUND_S,
    )
    assert proc.returncode == -signal.SIGKILL and held.exists()
    stale = read_holder()
    assert stale is not None and stale.what == "a test's child"  # the dead holder's file is still there
    with waiting(wait=False), measuring("after the crash"):  # not blocked
        assert read_holder().pid == os.getpid()


def test_a_holder_that_has_not_written_its_name_is_reported_as_such(own_lock_dir, monkeypatch):
    from filelock import FileLock

    monkeypatch.setattr(lock, "HOLDER_READ_TRIES", 1)
    # another holder of the OS lock (a second open file: flock keeps them apart even in one process), no name
    with FileLock(str(lock_path())), pytest.raises(MachineBusy, match="a process that has not written its name yet"):
        with waiting(wait=False), measuring("x"):
            pytest.fail("measured while the lock was held")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_of_the_holder_is_not_the_holder(own_lock_dir):
    with measuring("the parent"):
        pid = os.fork()
        if pid == 0:  # the child: the parent's hold is not its own, so it cannot measure now
            try:
                with waiting(wait=False), measuring("the child"):
                    os._exit(1)
            except MachineBusy:
                os._exit(0)
            os._exit(2)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
