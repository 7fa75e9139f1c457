"""Empirical ceilings of the running machine (`rooflens hw probe`).

Two micro-benchmarks, in the spirit of the Berkeley Empirical Roofline Toolkit but with the
kernels LLM inference actually runs:

* **memory bandwidth**: a large device-to-device ``dst.copy_(src)``; bytes moved = read + write
  = 2 x buffer size. The buffer is far larger than any cache (512 MiB on CPU, 1 GiB on CUDA).
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

Results are saved per device name in the user's directory (``$ROOFLENS_HOME`` or
``~/.config/rooflens``, sub-folder ``probes``), never inside the package.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rooflens.device.detect import device_name
from rooflens.device.lock import holds_machine_lock
from rooflens.device.spec import DeviceUnavailableError, pinned_device
from rooflens.fsutil import home_dir, slug, write_atomic
from rooflens.results.stats import summarize
from rooflens.roofline.hardware import HardwareProfile, ResolvedProfile, _normalize_dtype, match_profile
from rooflens.text import first_line

__all__ = [
    "GEMM_DTYPES",
    "ProbeError",
    "ProbeResult",
    "ProbeStat",
    "load_probe",
    "probe",
    "probe_path",
    "save_probe",
]

#: GEMM dtypes a probe knows, in the order they are measured.
GEMM_DTYPES: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")

_MiB = 2**20
_GiB = 2**30

# Default sizes: (full, quick).
_COPY_BYTES = {"cpu": (512 * _MiB, 64 * _MiB), "cuda": (1 * _GiB, 64 * _MiB)}
_GEMM_N = {"cpu": (2048, 512), "cuda": (8192, 2048)}
_REPS = (20, 5)
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

Clock = Callable[[], float]
Timer = Callable[[Callable[[], object]], float]  # seconds one call takes


class ProbeError(RuntimeError):
    """The probe cannot run as asked (e.g. CUDA requested but not available)."""


# --------------------------------------------------------------------------- models


class ProbeStat(BaseModel):
    """Per-rep rates of one measurement and their summary (``max`` = best rep = the ceiling)."""

    model_config = ConfigDict(extra="forbid")

    unit: str  # "B/s", "FLOP/s" (int8: "OP/s")
    median: float
    p10: float
    p90: float
    min: float
    max: float
    cv: float
    samples: list[float]
    how: str

    @classmethod
    def from_samples(cls, samples: Sequence[float], unit: str, how: str) -> ProbeStat:
        """Summarize per-rep rates (at least one)."""
        s = summarize(samples)
        return cls(
            unit=unit,
            median=float(s["median"]),
            p10=float(s["p10"]),
            p90=float(s["p90"]),
            min=float(s["min"]),
            max=float(s["max"]),
            cv=float(s["cv"]),
            samples=[float(x) for x in samples],
            how=how,
        )

    def value(self, stat: Literal["max", "median"] = "max") -> float:
        """The best rep (``"max"``, the conventional ceiling) or the median."""
        if stat == "max":
            return self.max
        if stat == "median":
            return self.median
        raise ValueError(f"stat must be 'max' or 'median', not {stat!r}")


class ProbeResult(BaseModel):
    """Measured ceilings of one device, as saved by :func:`save_probe`."""

    model_config = ConfigDict(extra="forbid")

    device: str  # "cpu" / "cuda:0"
    device_name: str
    profile: str | None  # matching datasheet profile, if any
    bandwidth: ProbeStat
    gemm: dict[str, ProbeStat] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    threads: int
    torch_version: str
    measured_at: str  # UTC ISO 8601
    sizes: dict[str, int] = Field(default_factory=dict)
    load_avg: list[float] | None = None  # os.getloadavg() when the probe started
    wall_s: float | None = None  # wall time of the whole probe

    def bandwidth_si(self, stat: Literal["max", "median"] = "max") -> float:
        """Measured memory bandwidth in bytes/s."""
        return self.bandwidth.value(stat)

    def peak_flops_si(self, dtype: str, stat: Literal["max", "median"] = "max") -> float | None:
        """Measured GEMM FLOP/s (OP/s for int8) for ``dtype``; ``None`` if not measured."""
        found = self.gemm.get(_normalize_dtype(dtype))
        return found.value(stat) if found is not None else None

    def ratios(
        self,
        profile: HardwareProfile | ResolvedProfile,
        *,
        stat: Literal["max", "median"] = "max",
    ) -> dict[str, float | None]:
        """Measured / datasheet for ``"bandwidth"`` and each measured dtype.

        ``None`` where the datasheet has no number. ``stat`` picks the best rep (default) or
        the median of the measurement.
        """
        if isinstance(profile, ResolvedProfile):
            profile = profile.profile
        out: dict[str, float | None] = {}
        sheet_bw = profile.bandwidth_si()
        out["bandwidth"] = self.bandwidth.value(stat) / sheet_bw if sheet_bw else None
        for dtype, measured in self.gemm.items():
            sheet = profile.peak_flops_si(dtype)
            out[dtype] = measured.value(stat) / sheet if sheet else None
        return out


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
    size = int(copy_bytes) if copy_bytes is not None else _pick(_COPY_BYTES, dev, quick)
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
    )


def _load_average(dev: Any, say: Callable[[str], None]) -> list[float] | None:
    """``os.getloadavg()`` (None where there is none); warns when a busy CPU will make the CPU ceilings read low."""
    try:
        load_avg = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
    if dev.type == "cpu":
        cpus = os.cpu_count() or 1
        if load_avg[0] > 0.5 * cpus:
            say(
                f"warning: load average {load_avg[0]:.2f} on {cpus} CPUs: other processes "
                "compete for cores and memory bandwidth, so the ceilings will read low"
            )
    return load_avg


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
    """Measure memory bandwidth and GEMM throughput of ``device`` ("cpu", "cuda[:i]", "auto").

    ``dtypes`` defaults to all of :data:`GEMM_DTYPES`; the ones that cannot run here (tf32
    off CUDA, fp8/int8 without torch support) land in ``skipped`` with the reason. ``quick``
    uses small sizes and 5 reps. ``copy_bytes``, ``gemm_n`` and ``reps`` override the sizes.
    ``progress`` receives one line per step. ``clock`` (seconds) replaces the timer
    (``time.perf_counter`` on CPU, CUDA events on CUDA), e.g. a fake clock in tests.
    Raises :class:`ProbeError` when CUDA is requested but unavailable.
    """
    import torch

    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    dev = _probe_device(device)
    plan = _plan(dev, dtypes, quick, copy_bytes, gemm_n, reps)
    load_avg = _load_average(dev, say)
    name = device_name(dev)
    timer, timer_name = _make_timer(dev, clock)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)

    say(f"bandwidth: copy {_fmt_bytes(plan.copy_bytes)} on {dev}, {plan.reps} reps")
    bandwidth, nbytes = _probe_bandwidth(dev, plan.copy_bytes, timer, timer_name, plan.warmup, plan.reps)
    say(f"bandwidth: {bandwidth.max / 1e9:.1f} GB/s best, {bandwidth.median / 1e9:.1f} median")
    gemms = _probe_gemms(plan, dev, gen, timer, timer_name, say)

    profile = match_profile(name)
    return ProbeResult(
        device=str(dev) if dev.type == "cpu" else f"cuda:{dev.index}",
        device_name=name,
        profile=profile.name if profile is not None else None,
        bandwidth=bandwidth,
        gemm=gemms.gemm,
        skipped=gemms.skipped,
        threads=torch.get_num_threads(),
        torch_version=str(torch.__version__),
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sizes={"copy_bytes": nbytes, "gemm_n": plan.gemm_n, "reps": plan.reps, "warmup": plan.warmup, **gemms.sizes},
        load_avg=load_avg,
        wall_s=round(time.perf_counter() - started, 3),
    )


# --------------------------------------------------------------------------- storage


def probe_path(device_name: str, root: Path | None = None) -> Path:
    """Where the probe of ``device_name`` is kept: ``<root>/probes/<slug>.json``.

    ``root`` defaults to ``$ROOFLENS_HOME`` or ``~/.config/rooflens`` (a user file, never the
    package).
    """
    return home_dir(root) / "probes" / f"{slug(device_name)}.json"


def save_probe(result: ProbeResult, root: Path | None = None) -> Path:
    """Write ``result`` to :func:`probe_path` atomically (temp file + ``os.replace``)."""
    path = probe_path(result.device_name, root)
    write_atomic(path, result.model_dump_json(indent=2) + "\n")
    return path


def load_probe(device_name: str, root: Path | None = None) -> ProbeResult | None:
    """The saved probe of ``device_name``, or ``None`` if there is none.

    Raises ValueError naming the file when it exists but is not a valid probe.
    """
    path = probe_path(device_name, root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return ProbeResult.model_validate_json(text)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"{path}: not a valid probe result ({first_line(exc)})") from exc
