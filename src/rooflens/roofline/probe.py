"""Empirical ceilings of the running machine (`rooflens hw probe`, and ``probe: auto`` in a run).

Two micro-benchmarks, in the spirit of the Berkeley Empirical Roofline Toolkit but with the
kernels LLM inference actually runs:

* **memory bandwidth**: a large device-to-device ``dst.copy_(src)``; bytes moved = read + write
  = 2 x buffer size. The buffer is far larger than any cache: on CPU 512 MiB, or 4x the
  last-level cache where that is larger (read from ``/sys``); 1 GiB on CUDA.
* **GEMM throughput** per dtype: a large square matmul of fresh random (``randn``) matrices,
  2 n^3 FLOPs per call (int8: OPs). fp8 and int8 go through ``torch._scaled_mm`` /
  ``torch._int_mm`` when torch supports them on the device and are listed in ``skipped``
  otherwise.

Every rep is timed on its own (CUDA events on CUDA, ``time.perf_counter`` on CPU) after
warm-up; a :class:`ProbeStat` keeps the median and spread as well as the best rep (``max``),
the conventional "ceiling". On CPU a dtype without a fast GEMM path (fp16 on most CPUs runs at
a few GFLOP/s) would take minutes at the default size: a short pre-check (n=256, doubled while
cheap) estimates its speed and the dtype is then measured at a smaller n that fits a time
budget, noted in ``how``.

**Valid or refused.** Each attempt first watches the machine for :data:`QUIET_WINDOW_S` seconds,
then measures while watching it, and is judged by :mod:`rooflens.roofline.probe_rules` (spread of
every statistic, copy size against the cache, load average and other processes' CPU time). An
invalid attempt is retried after :data:`RETRY_PAUSE_S` seconds, up to :data:`ATTEMPTS` attempts;
then :func:`probe` raises :class:`ProbeRefused`, naming what failed in each attempt and the load
seen: nothing is returned to save. The automatic probe of a run (``probe: auto``) measures the
same sizes as ``rooflens hw probe``.

How long it takes: on a CPU one attempt is about 1 s of watching, a few seconds of copies and up
to :data:`GEMM_BUDGET_S` seconds per GEMM dtype (four on most CPUs): 10-40 s; a refusal after
three attempts, about 1-2 minutes. On a GPU an attempt takes a few seconds.

Results are saved per device and thread count by :mod:`rooflens.roofline.probe_file`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from rooflens.device import activity
from rooflens.device.cpu import last_level_cache_bytes
from rooflens.device.detect import device_name
from rooflens.device.lock import holds_machine_lock
from rooflens.device.spec import DeviceUnavailableError, pinned_device
from rooflens.roofline import probe_rules
from rooflens.roofline.hardware import _normalize_dtype, match_profile
from rooflens.roofline.probe_file import AttemptLoad, ProbeAttempt, ProbeResult, ProbeStat, describe_attempt
from rooflens.text import first_line

__all__ = [
    "ATTEMPTS",
    "GEMM_DTYPES",
    "ProbeError",
    "ProbeRefused",
    "probe",
]

#: GEMM dtypes a probe knows, in the order they are measured.
GEMM_DTYPES: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")

_MiB = 2**20
_GiB = 2**30

# Default sizes: (full, quick).
_COPY_BYTES = {"cpu": (512 * _MiB, 64 * _MiB), "cuda": (1 * _GiB, 64 * _MiB)}
_GEMM_N = {"cpu": (2048, 512), "cuda": (8192, 2048)}
_REPS = (20, probe_rules.MIN_REPS)  # a spread needs at least MIN_REPS reps, quick or not
_WARMUP = {"cpu": (2, 1), "cuda": (5, 2)}  # GPUs need a few calls to reach boost clocks

#: CPU only: seconds one dtype's GEMM warm-up + reps may take before n is reduced.
GEMM_BUDGET_S = 8.0
#: The same budget for ``quick=True``.
QUICK_GEMM_BUDGET_S = 1.5
#: First size of the CPU pre-check GEMM that estimates a dtype's speed (doubled while cheap).
PRECHECK_N = 256
_PRECHECK_TRIES = 3  # the pre-check keeps the fastest of up to this many calls ...
_PRECHECK_CONFIRM_MAX_S = 0.5  # ... while the calls so far took less than this
_N_STEP = 64  # a reduced n is a multiple of this

#: Attempts a probe makes before it refuses.
ATTEMPTS = 3
#: Seconds between attempts (a passing burst of load may be over).
RETRY_PAUSE_S = 10.0
#: Seconds the machine is watched, idle, before each attempt measures.
QUIET_WINDOW_S = 1.0

Clock = Callable[[], float]
Timer = Callable[[Callable[[], object]], float]  # seconds one call takes


class ProbeError(RuntimeError):
    """The probe cannot run as asked (e.g. CUDA requested but not available)."""


class ProbeRefused(ProbeError):
    """No attempt was valid: the ceilings are not to be used or saved. ``attempts`` holds every one."""

    def __init__(self, message: str, attempts: list[ProbeAttempt]):
        super().__init__(message)
        self.attempts = attempts


# --------------------------------------------------------------------------- timing


def _sync(dev: Any) -> None:
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)


def _make_timer(dev: Any, clock: Clock | None) -> tuple[Timer, str]:
    """A function timing one call in seconds, and a description of it."""
    if dev.type == "cuda" and clock is None:
        import torch

        def time_cuda_events(fn: Callable[[], object]) -> float:
            stream = torch.cuda.current_stream(dev)  # the stream ops on ``dev`` run on
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(dev)
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return time_cuda_events, "CUDA events"

    tick = clock if clock is not None else time.perf_counter

    def time_clock(fn: Callable[[], object]) -> float:
        _sync(dev)
        t0 = tick()
        fn()
        _sync(dev)
        return tick() - t0

    return time_clock, "time.perf_counter" if clock is None else "injected clock"


def _rates(
    fn: Callable[[], object],
    work: float,
    timer: Timer,
    warmup: int,
    reps: int,
) -> list[float]:
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(reps):
        elapsed = timer(fn)
        if not elapsed > 0:
            raise ProbeError(f"timer returned a non-positive duration ({elapsed!r} s)")
        rates.append(work / elapsed)
    return rates


# --------------------------------------------------------------------------- helpers


def _pick(table: dict[str, tuple[Any, Any]], dev: Any, quick: bool) -> Any:
    full, small = table["cuda" if dev.type == "cuda" else "cpu"]
    return small if quick else full


def _fmt_bytes(n: float) -> str:
    return f"{n / _GiB:.2f} GiB" if n >= _GiB else f"{n / _MiB:.0f} MiB"


def _available_bytes(dev: Any) -> int | None:
    try:
        if dev.type == "cuda":
            import torch

            return int(torch.cuda.mem_get_info(dev)[0])
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - a missing figure only disables the size cap
        return None


# --------------------------------------------------------------------------- bandwidth


def _probe_bandwidth(
    dev: Any,
    size: int,
    timer: Timer,
    timer_name: str,
    warmup: int,
    reps: int,
) -> tuple[ProbeStat, int]:
    import torch

    numel = max(1, size // 4)
    src = torch.empty(numel, dtype=torch.float32, device=dev)
    src.fill_(1.5)  # touch every page (an untouched buffer would read the shared zero page)
    dst = torch.empty_like(src)
    nbytes = numel * 4
    rates = _rates(lambda: dst.copy_(src), 2.0 * nbytes, timer, warmup, reps)  # noqa: F821 (del below)
    del src, dst
    how = (
        f"copy of {nbytes / 1e9:.3g} GB ({_fmt_bytes(nbytes)}) fp32 tensor on {dev}, "
        f"bytes read + written / time, {reps} reps after {warmup} warm-up, {timer_name}"
    )
    return ProbeStat.from_samples(rates, "B/s", how), nbytes


# --------------------------------------------------------------------------- GEMM


def _gemm_call(dtype: str, n: int, dev: Any, gen: Any) -> Callable[[], object]:
    """Fresh random n x n operands for ``dtype`` and a function running one GEMM."""
    import torch

    def randn(dt: Any) -> Any:
        return torch.randn(n, n, generator=gen, device=dev, dtype=dt)

    if dtype in ("fp32", "tf32", "bf16", "fp16"):
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
        a, b, out = randn(dt), randn(dt), torch.empty(n, n, device=dev, dtype=dt)
        return lambda: torch.mm(a, b, out=out)
    if dtype == "fp8":
        fp8 = getattr(torch, "float8_e4m3fn", None)
        if fp8 is None or not hasattr(torch, "_scaled_mm"):
            raise RuntimeError("this torch has no float8_e4m3fn / torch._scaled_mm")
        a = randn(torch.float32).to(fp8)
        b = randn(torch.float32).to(fp8).t()  # column-major second operand, as cuBLASLt wants
        scale = torch.ones((), device=dev, dtype=torch.float32)
        return lambda: torch._scaled_mm(a, b, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)
    if dtype == "int8":
        if not hasattr(torch, "_int_mm"):
            raise RuntimeError("this torch has no torch._int_mm")
        a = torch.randint(-128, 128, (n, n), generator=gen, device=dev, dtype=torch.int8)
        b = torch.randint(-128, 128, (n, n), generator=gen, device=dev, dtype=torch.int8)
        return lambda: torch._int_mm(a, b)
    raise ValueError(f"unknown GEMM dtype {dtype!r}")


def _precheck_rate(fn: Callable[[], object], flops: float, timer: Timer, slow: Callable[[float], bool]) -> float:
    """Best rate of up to :data:`_PRECHECK_TRIES` calls of ``fn``.

    The first call may include one-off setup (JIT, packing) and any call a preemption by
    another process, so a "slow" verdict is confirmed with more calls while they are cheap.
    """
    best = spent = timer(fn)  # the first call doubles as the support check
    tries = 1
    while tries < _PRECHECK_TRIES and spent < _PRECHECK_CONFIRM_MAX_S:
        if not slow(flops / best if best > 0 else math.inf):
            break
        again = timer(fn)
        spent, tries = spent + again, tries + 1
        if again > 0:
            best = min(best, again) if best > 0 else again
    return flops / best if best > 0 else math.inf


def _reduced_n(
    dtype: str,
    n: int,
    dev: Any,
    gen: Any,
    timer: Timer,
    calls: int,
    budget_s: float,
) -> tuple[int, str | None]:
    """CPU pre-check: the n to measure at (``n`` or smaller) and why it was reduced.

    Starts at :data:`PRECHECK_N` and doubles the pre-check size while one call at the next
    size still fits the per-call budget, since small GEMMs underrate a fast path (most so on
    a busy CPU). ``n`` is kept when ``calls`` calls at ``n`` fit ``budget_s``.
    """
    per_call = budget_s / calls

    def too_slow(rate: float) -> bool:
        return 2.0 * n**3 / rate > per_call

    n_try = PRECHECK_N
    while True:
        flops = 2.0 * n_try**3
        rate = _precheck_rate(_gemm_call(dtype, n_try, dev, gen), flops, timer, too_slow)
        if not too_slow(rate):
            return n, None
        if 2 * n_try >= n or 8.0 * flops / rate > per_call:
            break
        n_try *= 2
    fit = (per_call * rate / 2.0) ** (1.0 / 3.0)
    n_eff = min(n, max(_N_STEP, int(fit // _N_STEP) * _N_STEP))
    est = calls * 2.0 * n**3 / rate
    unit = "GOP/s" if dtype == "int8" else "GFLOP/s"
    why = (
        f"measured at n={n_eff} instead of {n} to fit a {budget_s:g} s budget: "
        f"{rate / 1e9:.3g} {unit} in a {n_try}^3 pre-check (no fast GEMM path, or a busy "
        f"CPU), so n={n} would take ~{est:.0f} s"
    )
    return n_eff, why


def _set_fp32_precision(value: str) -> None:
    import torch

    torch.set_float32_matmul_precision(value)


def _probe_gemm(
    dtype: str,
    n: int,
    dev: Any,
    gen: Any,
    timer: Timer,
    timer_name: str,
    warmup: int,
    reps: int,
    budget_s: float,
) -> tuple[ProbeStat, int]:
    import torch

    note: str | None = None
    if dev.type == "cpu" and n > PRECHECK_N:
        n, note = _reduced_n(dtype, n, dev, gen, timer, warmup + reps, budget_s)
    fn = _gemm_call(dtype, n, dev, gen)
    kernel = {"fp8": "torch._scaled_mm (e4m3, bf16 out)", "int8": "torch._int_mm (int32 out)"}
    what = kernel.get(dtype, "torch.mm")
    matrices = f"{n}x{n} random {dtype} matrices"
    if dtype in ("fp32", "tf32"):
        precision = "high" if dtype == "tf32" else "highest"
        matrices += f" (float32_matmul_precision={precision!r})"
    unit = "OP/s" if dtype == "int8" else "FLOP/s"
    rates = _rates(fn, 2.0 * n**3, timer, warmup, reps)
    threads = f", {torch.get_num_threads()} threads" if dev.type == "cpu" else ""
    how = f"{what} of {matrices} on {dev}, 2n^3 / time, {reps} reps after {warmup} warm-up, {timer_name}{threads}"
    if note:
        how += f"; {note}"
    return ProbeStat.from_samples(rates, unit, how), n


# --------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class _Plan:
    """What one probe measures, and at which sizes."""

    dtypes: list[str]
    copy_bytes: int
    gemm_n: int
    reps: int
    warmup: int
    budget_s: float  # CPU only: seconds one dtype's GEMM may take before n is reduced
    llc_bytes: int | None  # CPU only: the last-level cache the copy must dwarf


def _probe_device(device: str) -> Any:
    """The torch device to probe (a bare ``cuda`` pinned to the current GPU); raises :class:`ProbeError`
    when it is not here and ValueError for a malformed device string."""
    try:
        return pinned_device(device)
    except DeviceUnavailableError as err:
        import torch

        hint = "" if torch.cuda.is_available() else "; probe the CPU with device='cpu'"
        raise ProbeError(f"{err}{hint}") from None


def _plan(
    dev: Any,
    dtypes: Sequence[str] | None,
    quick: bool,
    copy_bytes: int | None,
    gemm_n: int | None,
    reps: int | None,
) -> _Plan:
    """The dtypes (known ones, each once) and the sizes: the defaults for ``dev`` and ``quick``, or as given."""
    wanted = list(GEMM_DTYPES) if dtypes is None else [_normalize_dtype(d) for d in dtypes]
    unknown = [d for d in wanted if d not in GEMM_DTYPES]
    if unknown:
        raise ValueError(f"unknown dtype(s) {unknown}; known: {', '.join(GEMM_DTYPES)}")
    llc = last_level_cache_bytes() if dev.type == "cpu" else None
    size = int(copy_bytes) if copy_bytes is not None else _copy_size(dev, quick, llc)
    n = int(gemm_n) if gemm_n is not None else _pick(_GEMM_N, dev, quick)
    n_reps = int(reps) if reps is not None else (_REPS[1] if quick else _REPS[0])
    if size < 4 or n < 1 or n_reps < 1:
        raise ValueError("copy_bytes must be >= 4, gemm_n >= 1 and reps >= 1")
    if copy_bytes is None:  # never ask for more than a quarter of the free memory
        free = _available_bytes(dev)
        while free is not None and size > 16 * _MiB and 4 * size > free:
            size //= 2
    return _Plan(
        dtypes=list(dict.fromkeys(wanted)),
        copy_bytes=size,
        gemm_n=n,
        reps=n_reps,
        warmup=_pick(_WARMUP, dev, quick),
        budget_s=QUICK_GEMM_BUDGET_S if quick else GEMM_BUDGET_S,
        llc_bytes=llc,
    )


def _copy_size(dev: Any, quick: bool, llc_bytes: int | None) -> int:
    """The default copy: the device's size, and on a CPU at least MIN_COPY_TO_LLC x its last-level cache."""
    size = _pick(_COPY_BYTES, dev, quick)
    if llc_bytes:
        floor = math.ceil(probe_rules.MIN_COPY_TO_LLC * llc_bytes / _MiB) * _MiB
        size = max(size, floor)
    return int(size)


@dataclass
class _GemmResults:
    gemm: dict[str, ProbeStat] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # gemm_n.<dtype>: the n each dtype was measured at


def _probe_gemms(
    plan: _Plan, dev: Any, gen: Any, timer: Timer, timer_name: str, say: Callable[[str], None]
) -> _GemmResults:
    """GEMM throughput of each planned dtype; one that torch cannot run here is skipped with the reason."""
    import torch

    out = _GemmResults()
    saved_precision = torch.get_float32_matmul_precision()
    try:
        for dtype in plan.dtypes:
            if dtype == "tf32" and dev.type != "cuda":
                out.skipped[dtype] = f"TensorFloat-32 is a CUDA tensor-core mode; not applicable on {dev}"
                continue
            if dtype in ("fp32", "tf32"):
                _set_fp32_precision("high" if dtype == "tf32" else "highest")
            say(f"gemm {dtype}: n={plan.gemm_n}, {plan.reps} reps")
            try:
                stat, n_used = _probe_gemm(
                    dtype, plan.gemm_n, dev, gen, timer, timer_name, plan.warmup, plan.reps, plan.budget_s
                )
            except (RuntimeError, NotImplementedError) as exc:
                if isinstance(exc, ProbeError):
                    raise
                out.skipped[dtype] = f"not supported by torch {torch.__version__} on {dev}: {first_line(exc)}"
                say(f"gemm {dtype}: skipped ({out.skipped[dtype]})")
                continue
            finally:
                _set_fp32_precision(saved_precision)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            out.gemm[dtype] = stat
            out.sizes[f"gemm_n.{dtype}"] = n_used
            unit = "GOP/s" if dtype == "int8" else "GFLOP/s"
            say(f"gemm {dtype}: {stat.max / 1e9:.1f} {unit} best, {stat.median / 1e9:.1f} median (n={n_used})")
    finally:
        _set_fp32_precision(saved_precision)
    return out


@holds_machine_lock("a probe of the roofline ceilings")  # one measurement per machine at a time
def probe(
    device: str = "cpu",
    *,
    dtypes: Sequence[str] | None = None,
    quick: bool = False,
    copy_bytes: int | None = None,
    gemm_n: int | None = None,
    reps: int | None = None,
    progress: Callable[[str], None] | None = None,
    clock: Clock | None = None,
) -> ProbeResult:
    """Measure memory bandwidth and GEMM throughput of ``device`` ("cpu", "cuda[:i]", "auto"): a valid
    result, or :class:`ProbeRefused` after :data:`ATTEMPTS` invalid attempts.

    ``dtypes`` defaults to all of :data:`GEMM_DTYPES`; the ones that cannot run here (tf32
    off CUDA, fp8/int8 without torch support) land in ``skipped`` with the reason. ``quick``
    uses small GEMMs and :data:`~rooflens.roofline.probe_rules.MIN_REPS` reps (the copy stays
    beyond the cache). ``copy_bytes``, ``gemm_n`` and ``reps`` override the sizes.
    ``progress`` receives one line per step. ``clock`` (seconds) replaces the timer
    (``time.perf_counter`` on CPU, CUDA events on CUDA), e.g. a fake clock in tests.
    Raises :class:`ProbeError` when CUDA is requested but unavailable.
    """
    return _probe_until_valid(
        device,
        dtypes=dtypes,
        quick=quick,
        copy_bytes=copy_bytes,
        gemm_n=gemm_n,
        reps=reps,
        progress=progress,
        clock=clock,
    )


@dataclass(frozen=True)
class _Rig:
    """What every attempt of one probe measures with."""

    dev: Any
    plan: _Plan
    timer: Timer
    timer_name: str
    gen: Any
    say: Callable[[str], None]


@dataclass(frozen=True)
class _Measured:
    """One attempt's figures."""

    bandwidth: ProbeStat
    copy_bytes: int
    gemms: _GemmResults


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _measure(rig: _Rig) -> _Measured:
    plan, dev, say = rig.plan, rig.dev, rig.say
    say(f"bandwidth: copy {_fmt_bytes(plan.copy_bytes)} on {dev}, {plan.reps} reps")
    bandwidth, nbytes = _probe_bandwidth(dev, plan.copy_bytes, rig.timer, rig.timer_name, plan.warmup, plan.reps)
    say(f"bandwidth: {bandwidth.max / 1e9:.1f} GB/s best, {bandwidth.median / 1e9:.1f} median")
    gemms = _probe_gemms(plan, dev, rig.gen, rig.timer, rig.timer_name, say)
    return _Measured(bandwidth=bandwidth, copy_bytes=nbytes, gemms=gemms)


def _attempt(number: int, rig: _Rig, *, judge_load: bool) -> tuple[ProbeAttempt, _Measured | None]:
    """Watch the machine, measure if it is quiet, judge: the attempt, and its figures when it measured.

    The load average is judged only while no attempt of this probe has measured (``judge_load``):
    its 1-minute average still counts the previous attempt's own threads. A GPU probe records the
    machine's load without judging it.
    """
    rules, cpu = probe_rules.RULES, rig.dev.type == "cpu"
    started_at, load_before = _now_iso(), activity.load_average()
    window = activity.watch()
    time.sleep(QUIET_WINDOW_S)
    before = window.stop()
    reasons: list[str] = []
    if cpu:
        reasons += probe_rules.load_reasons(load_before, before.cores, rules) if judge_load else []
        reasons += probe_rules.other_cpu_reasons(before.other_share, "before the measurement", rules)
    load = {
        "cores": before.cores,
        "load_avg_before": list(load_before) if load_before else None,
        "load_judged": cpu and judge_load,
        "other_cpu_before": round(before.other_share, 4),
        "window_before_s": round(before.wall_s, 3),
        "judged": cpu,
    }
    if reasons:  # busy already: measuring would only confirm it
        after = AttemptLoad(**load, load_avg_after=list(before.load_avg or []) or None, other_cpu_during=None)
        return ProbeAttempt(
            number=number, started_at=started_at, bandwidth=None, load=after, verdict="invalid", reasons=reasons
        ), None
    window = activity.watch()
    measured = _measure(rig)
    during = window.stop()
    if cpu:
        reasons += probe_rules.other_cpu_reasons(during.other_share, "during the measurement", rules)
        reasons += probe_rules.copy_reasons(measured.copy_bytes, rig.plan.llc_bytes, rules)
    reasons += probe_rules.spread_reasons(measured.bandwidth, measured.gemms.gemm, rules)
    after = AttemptLoad(
        **load,
        load_avg_after=list(during.load_avg) if during.load_avg else None,
        other_cpu_during=round(during.other_share, 4),
    )
    attempt = ProbeAttempt(
        number=number,
        started_at=started_at,
        bandwidth=measured.bandwidth,
        gemm=measured.gemms.gemm,
        load=after,
        verdict="invalid" if reasons else "valid",
        reasons=reasons,
    )
    return attempt, measured


def _probe_until_valid(
    device: str,
    *,
    dtypes: Sequence[str] | None,
    quick: bool,
    copy_bytes: int | None,
    gemm_n: int | None,
    reps: int | None,
    progress: Callable[[str], None] | None,
    clock: Clock | None,
) -> ProbeResult:
    """Up to :data:`ATTEMPTS` attempts, :data:`RETRY_PAUSE_S` apart: the first valid one, else ProbeRefused."""
    import torch

    started = time.perf_counter()
    dev = _probe_device(device)
    plan = _plan(dev, dtypes, quick, copy_bytes, gemm_n, reps)
    timer, timer_name = _make_timer(dev, clock)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    rig = _Rig(dev, plan, timer, timer_name, gen, progress or (lambda _msg: None))
    attempts: list[ProbeAttempt] = []
    for number in range(1, ATTEMPTS + 1):
        if attempts:
            rig.say(f"retrying in {RETRY_PAUSE_S:g} s (attempt {number} of {ATTEMPTS})")
            time.sleep(RETRY_PAUSE_S)
        attempt, measured = _attempt(number, rig, judge_load=all(a.bandwidth is None for a in attempts))
        attempts.append(attempt)
        rig.say(describe_attempt(attempt))
        if measured is not None and attempt.verdict == "valid":
            return _result(rig, attempts, measured, time.perf_counter() - started)
    raise ProbeRefused(_refusal(dev, attempts), attempts)


def _result(rig: _Rig, attempts: list[ProbeAttempt], measured: _Measured, wall_s: float) -> ProbeResult:
    """The saved form of a probe whose last attempt is valid (its figures are the ceilings)."""
    import torch

    dev, plan, chosen = rig.dev, rig.plan, attempts[-1]
    name = device_name(dev)
    profile = match_profile(name)
    llc = {"llc_bytes": plan.llc_bytes} if plan.llc_bytes else {}
    return ProbeResult(
        device=str(dev) if dev.type == "cpu" else f"cuda:{dev.index}",
        device_name=name,
        profile=profile.name if profile is not None else None,
        bandwidth=measured.bandwidth,
        gemm=measured.gemms.gemm,
        skipped=measured.gemms.skipped,
        threads=torch.get_num_threads(),
        torch_version=str(torch.__version__),
        measured_at=chosen.started_at,
        sizes={
            "copy_bytes": measured.copy_bytes,
            "gemm_n": plan.gemm_n,
            "reps": plan.reps,
            "warmup": plan.warmup,
            **llc,
            **measured.gemms.sizes,
        },
        load_avg=chosen.load.load_avg_before,
        wall_s=round(wall_s, 3),
        attempts=attempts,
        chosen=chosen.number,
        rules=probe_rules.RULES.as_dict(),
    )


def _refusal(dev: Any, attempts: list[ProbeAttempt]) -> str:
    """What failed in each attempt, the load seen, and how to probe later."""
    import torch

    threads = torch.get_num_threads()
    at = f"{dev}, {threads} thread{'s' * (threads != 1)}" if dev.type == "cpu" else str(dev)
    later = "`rooflens hw probe` on a quiet machine (other programs closed)"
    if dev.type == "cpu":
        later += f"; `rooflens hw probe --threads {threads}` for runs at {threads} threads"
    lines = [f"refused: no valid probe of {device_name(dev)} ({at}) in {len(attempts)} attempts; nothing saved"]
    lines += [f"  {describe_attempt(a)}" for a in attempts]
    lines.append(f"probe later: {later}")
    return "\n".join(lines)
