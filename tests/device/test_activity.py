"""The machine's activity (load average, other processes' CPU time) and its last-level cache, read from fakes."""

from __future__ import annotations

from collections import namedtuple

import pytest

from rooflens.device import activity
from rooflens.device.cpu import last_level_cache_bytes


def _cache(root, cpu: int, index: int, level: int, kind: str, size: str, shared: str) -> None:
    d = root / f"cpu{cpu}" / "cache" / f"index{index}"
    d.mkdir(parents=True)
    for name, text in (("level", str(level)), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
        (d / name).write_text(text + "\n")


def test_last_level_cache_counts_every_instance(tmp_path):
    for cpu in range(4):  # two L3 instances of 32 MiB (two sockets or CCDs), private L1/L2
        _cache(tmp_path, cpu, 0, 1, "Data", "32K", str(cpu))
        _cache(tmp_path, cpu, 1, 1, "Instruction", "32K", str(cpu))
        _cache(tmp_path, cpu, 2, 2, "Unified", "1024K", str(cpu))
        _cache(tmp_path, cpu, 3, 3, "Unified", "32768K", "0-1" if cpu < 2 else "2-3")
    assert last_level_cache_bytes(tmp_path) == 64 * 2**20


def test_last_level_cache_unknown(tmp_path):
    assert last_level_cache_bytes(tmp_path) is None
    _cache(tmp_path, 0, 0, 2, "Unified", "garbage", "0")
    assert last_level_cache_bytes(tmp_path) is None


CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")
OwnTimes = namedtuple("OwnTimes", "user system")


def test_other_processes_cpu_time_is_system_busy_minus_our_own(monkeypatch):
    import psutil

    system = iter([CpuTimes(100, 0, 20, 500, 5, 0, 0, 0, 3, 0), CpuTimes(101.5, 0, 20.5, 500.5, 5, 0, 0, 0.5, 4, 0)])
    own = iter([OwnTimes(10, 1), OwnTimes(10.4, 1.1)])
    clock = iter([0.0, 2.0])
    monkeypatch.setattr(psutil, "cpu_times", lambda: next(system))
    monkeypatch.setattr(psutil.Process, "cpu_times", lambda self: next(own))
    monkeypatch.setattr(activity.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(activity, "logical_cores", lambda: 2)
    monkeypatch.setattr(activity, "load_average", lambda: (0.5, 0.4, 0.3))
    seen = activity.watch().stop()
    # busy: user 1.5 + system 0.5 + steal 0.5 (guest 1 is inside user) = 2.5; ours 0.5; over 2 s x 2 cores
    assert seen.other_cpu_s == pytest.approx(2.0)
    assert seen.other_share == pytest.approx(0.5)
    assert seen.load_avg == (0.5, 0.4, 0.3) and seen.cores == 2


def test_the_real_sampler_runs():
    seen = activity.watch().stop()
    assert seen.cores >= 1 and seen.other_cpu_s >= 0 and 0 <= seen.other_share
