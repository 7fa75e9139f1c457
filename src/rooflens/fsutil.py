"""Files and folders rooflens writes: atomic writes, and the user's cache, home and runtime folders.

Every file rooflens keeps (records, reports, probes, dispatch tables, trained artifacts, compiled kernels,
converted models) is written beside its final path and moved into place, so a reader sees the old file or the
whole new one, never a partial one.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)  # read once at import: os.umask can only be read by setting it, which is not thread-safe
os.umask(_UMASK)


def cache_dir(kind: str = "") -> Path:
    """``$ROOFLENS_CACHE/<kind>`` (default ``~/.cache/rooflens``): what rooflens derives once per machine
    (converted models, trained predictors, compiled kernels, ...)."""
    root = Path(os.environ.get("ROOFLENS_CACHE", Path.home() / ".cache" / "rooflens"))
    return root / kind if kind else root


class UntrustedFolder(PermissionError):
    """A folder rooflens would load code from is not the user's own; the message names it and the fix."""


def own_folder(path: Path, why: str) -> Path:
    """``path``, created private (0700) if missing; refused with :class:`UntrustedFolder` (naming the folder and
    the fix) unless it belongs to this user and neither group nor others can write it. ``why``: what a file
    planted there would do (rooflens loads code from such folders)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not hasattr(os, "getuid"):
        return path
    st = path.stat()
    if st.st_uid != os.getuid():
        raise UntrustedFolder(
            f"{path}: owned by another user (uid {st.st_uid}), and {why}; use a folder of your own (set ROOFLENS_CACHE)"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedFolder(
            f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}), and {why}; "
            f"fix: chmod go-w {path}"
        )
    return path


def home_dir(root: Path | None = None) -> Path:
    """``root`` if given, else ``$ROOFLENS_HOME`` (default ``~/.config/rooflens``): what the user measured
    (probes, dispatch tables), never inside the package."""
    if root is not None:
        return Path(root)
    env = os.environ.get("ROOFLENS_HOME")
    return Path(env) if env else Path.home() / ".config" / "rooflens"


def lock_dir() -> Path:
    """The folder of the machine lock (:mod:`rooflens.device.lock`), created private (0700) if missing.

    ``$ROOFLENS_LOCK_DIR`` if set (tests isolate the lock with it; a folder shared by several users makes the
    lock theirs together); else ``$XDG_RUNTIME_DIR/rooflens`` when that runtime folder is set and writable
    (per user, on a RAM file system, emptied at logout); else ``rooflens-<uid>`` in the temp folder, which
    must be this user's own: a folder of that name made by another user is refused, not shared.
    """
    env = os.environ.get("ROOFLENS_LOCK_DIR")
    if env:
        path = Path(env)
        path.mkdir(parents=True, exist_ok=True)
        return path
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        path = Path(runtime) / "rooflens"
        path.mkdir(mode=0o700, exist_ok=True)
        return path
    path = Path(tempfile.gettempdir()) / f"rooflens-{_user_id()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
        raise PermissionError(
            f"{path}: owned by another user, so it cannot hold this user's machine lock; "
            "set ROOFLENS_LOCK_DIR to a folder of your own"
        )
    return path


def _user_id() -> str:
    return str(os.getuid()) if hasattr(os, "getuid") else slug(os.environ.get("USERNAME", "user"))


def slug(text: str) -> str:
    """Lower-case alphanumeric words joined by '-' ("NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3")."""
    return "-".join(re.findall(r"[a-z0-9]+", text.lower())) or "unknown-device"


@contextmanager
def atomic_output(path: Path, *, exclusive: bool = False) -> Iterator[Path]:
    """A temporary file beside ``path`` for the caller (or a tool: a compiler, ``torch.save``) to fill.

    On a clean exit it is fsynced and moved to ``path`` (``os.replace``); on an error it is removed and
    ``path`` is untouched. The file starts with the ordinary mode (``0666 & ~umask``); a writer that
    recreates it (a linker writing an executable ``.so``) keeps its own. ``exclusive=True`` never replaces
    an existing ``path``: ``os.link`` fails atomically on an existing target (where a check-then-rename
    would race) and raises :class:`FileExistsError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600
        yield tmp
        _fsync(tmp)
        if not exclusive:
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def _link_exclusive(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (FileExistsError). A hard link does it atomically; where
    the file system has none (some FUSE, SMB and FAT mounts), the name is reserved with ``O_EXCL`` and then
    replaced: still never two writers on one name, though a reader may see the empty reservation briefly."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise FileExistsError(f"{path}: exists already") from None
    except OSError as err:
        if err.errno not in NO_HARD_LINKS:
            raise
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK))
    except FileExistsError:
        raise FileExistsError(f"{path}: exists already") from None
    os.replace(tmp, path)


def write_atomic(path: Path, data: str | bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, exclusive=exclusive) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill, moved to ``path`` on a clean exit (``os.replace``, which
    fails when ``path`` exists and is not empty); removed with its contents on an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
