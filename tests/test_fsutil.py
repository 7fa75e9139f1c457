"""rooflens.fsutil: atomic writes leave the old file or the whole new one; the user folders follow the env."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rooflens.fsutil import atomic_folder, atomic_output, cache_dir, home_dir, slug, write_atomic


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_atomic_text_and_bytes(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_atomic(path, "café\n")
    assert path.read_bytes() == "café\n".encode()
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # an ordinary file, not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_a_failure_mid_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "a.txt"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_output(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk on fire")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_a_failing_replace_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    write_atomic(path, "old")

    def fail_replace(src, dst):
        raise OSError("no space left")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="no space"):
        write_atomic(path, "new")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_exclusive_never_replaces(tmp_path):
    path = tmp_path / "r.json"
    write_atomic(path, "first", exclusive=True)
    with pytest.raises(FileExistsError, match="exists already"):
        write_atomic(path, "second", exclusive=True)
    assert path.read_text() == "first" and list(tmp_path.iterdir()) == [path]


def test_exclusive_writes_work_on_a_file_system_without_hard_links(tmp_path, monkeypatch):
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")  # what FAT, many FUSE and SMB mounts answer

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "r.json"
    write_atomic(path, "first", exclusive=True)
    with pytest.raises(FileExistsError, match="exists already"):
        write_atomic(path, "second", exclusive=True)
    assert path.read_text() == "first" and list(tmp_path.iterdir()) == [path]


def test_a_tool_may_recreate_the_temp_file_with_its_own_mode(tmp_path):
    path = tmp_path / "lib.so"
    with atomic_output(path) as tmp:
        tmp.unlink()  # what a linker does before writing an executable
        tmp.write_bytes(b"ELF")
        tmp.chmod(0o755)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755 and path.read_bytes() == b"ELF"


def test_atomic_folder(tmp_path):
    target = tmp_path / "models" / "m"
    with pytest.raises(ValueError):
        with atomic_folder(target) as tmp:
            (tmp / "config.json").write_text("{}")
            raise ValueError("conversion failed")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with atomic_folder(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (target / "config.json").read_text() == "{}" and list(target.parent.iterdir()) == [target]


def test_cache_and_home_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("ROOFLENS_HOME", str(tmp_path / "h"))
    assert cache_dir() == tmp_path / "c" and cache_dir("kernels") == tmp_path / "c" / "kernels"
    assert home_dir() == tmp_path / "h" and home_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("ROOFLENS_CACHE")
    monkeypatch.delenv("ROOFLENS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert cache_dir("models") == tmp_path / "me" / ".cache" / "rooflens" / "models"
    assert home_dir() == tmp_path / "me" / ".config" / "rooflens"
    monkeypatch.setenv("ROOFLENS_HOME", "")  # empty: the default
    assert home_dir() == Path.home() / ".config" / "rooflens"


def test_slug():
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slug("Intel(R) Xeon(R)") == "intel-r-xeon-r"
    assert slug("???") == "unknown-device"
