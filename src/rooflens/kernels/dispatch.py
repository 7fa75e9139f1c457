"""Heuristic dataflow for the low-bit linear (FlashDecoding++): GEMV, flat GEMM or dense, per ``(M, N, K)``.

:func:`rooflens.kernels.triton_lowbit.lowbit_linear` has three paths for ``x [M, K] @ dequant(W [N, K]).T``:
``"gemv"`` (CUDA cores, one row of ``x`` per program), ``"flat"`` (tensor cores, ``M`` padded to 16) and
``"dense"`` (dequantize the weight once into the activation dtype, then cuBLAS).  Which is fastest depends on
``M``, the shape and the GPU, so :func:`choose_path` decides from two crossover points per ``(N, K)`` bucket
(``N`` and ``K`` rounded up to powers of two): ``gemv`` for ``M <= gemv_max_m``, ``flat`` for
``M <= flat_max_m``, ``dense`` above.

* **Defaults** (:data:`DEFAULT_CROSSOVER`, until measured): ``gemv`` for ``M == 1``, ``flat`` for 2..16,
  ``dense`` above.
* **Measured**: :func:`calibrate` times the three paths on a GPU (CUDA graph of one call per copy of the
  weight, enough copies that every call reads it from HBM, not L2; CUDA events; warm-up; median) over ``M``
  in 1..32 for the given ``(N, K)`` shapes, and keeps, per bucket, the crossovers that minimise the summed
  slowdown against the fastest path over the measured ``M`` (:func:`fit_crossover`).  Above the largest
  measured ``M`` the rule goes on (``dense``).  The format measured is recorded (default 4-bit, group 128,
  symmetric, fp16 activations) and serves every format.

Cache: one JSON file per device *and* software, ``<home>/dispatch/<slug>.json`` with ``<home>`` =
``$ROOFLENS_HOME`` or ``~/.config/rooflens`` (as for ``rooflens hw probe``) and ``<slug>`` made of the device
name, the torch and the triton versions (:func:`cache_path`); contents: :class:`DispatchTable`
(``{"device_name", "torch_version", "triton_version", "buckets": {"4096x16384": {"gemv_max_m",
"flat_max_m", "measured_at", "format", "ms", "us": {"gemv": [...], ...}}}}``).  A file that does not parse
is ignored with a warning (the defaults apply).  Every :class:`Decision` says where it came from
(``"default"`` or ``"measured at <UTC time>"``), so a record can carry it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rooflens.device.detect import device_name
from rooflens.device.lock import measuring
from rooflens.device.spec import pinned_device
from rooflens.fsutil import home_dir, slug, write_atomic
from rooflens.kernels.lowbit import QuantizedWeight, quantize
from rooflens.kernels.triton_lowbit import PATHS, interpreting, lowbit_linear
from rooflens.text import first_line

__all__ = [
    "CALIBRATION_MS",
    "DEFAULT_CROSSOVER",
    "LLAMA2_7B_SHAPES",
    "CalibrationError",
    "Crossover",
    "Decision",
    "DispatchTable",
    "bucket",
    "cache_path",
    "calibrate",
    "choose_path",
    "decide",
    "fit_crossover",
    "load_table",
    "time_ms",
    "weight_copies",
]

KernelPath = Literal["gemv", "flat", "dense"]  # triton_lowbit.PATHS
#: ``(N, K)`` of Llama-2-7B's linear layers: q/k/v/o, fused qkv, gate/up, down.
LLAMA2_7B_SHAPES: tuple[tuple[int, int], ...] = ((4096, 4096), (12288, 4096), (11008, 4096), (4096, 11008))
#: The ``M`` values :func:`calibrate` measures by default (1..32; every M would autotune for minutes).
CALIBRATION_MS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 28, 32)


class CalibrationError(RuntimeError):
    """Crossovers can only be measured on a CUDA GPU."""


class Crossover(BaseModel):
    """The two crossover ``M`` of one ``(N, K)`` bucket, and the measurement behind them (if any)."""

    model_config = ConfigDict(extra="forbid")

    gemv_max_m: int = Field(ge=0)  # gemv for M <= this
    flat_max_m: int = Field(ge=0)  # flat for gemv_max_m < M <= this, dense above
    measured_at: Optional[str] = None  # UTC ISO 8601; None = the default
    format: str = ""  # what was measured, e.g. "4-bit g128 sym, float16 x"
    ms: list[int] = Field(default_factory=list)
    us: dict[str, list[float]] = Field(default_factory=dict)  # path -> median us per call, one per M

    @model_validator(mode="after")
    def _ordered(self) -> Crossover:
        if self.flat_max_m < self.gemv_max_m:
            raise ValueError(f"flat_max_m={self.flat_max_m} < gemv_max_m={self.gemv_max_m}")
        return self

    def path(self, m: int) -> KernelPath:
        return _rule(m, self.gemv_max_m, self.flat_max_m)

    @property
    def source(self) -> str:
        return "default" if self.measured_at is None else f"measured at {self.measured_at}"


DEFAULT_CROSSOVER = Crossover(gemv_max_m=1, flat_max_m=16)


class DispatchTable(BaseModel):
    """The cache file of one device + torch + triton: measured crossovers per ``(N, K)`` bucket."""

    model_config = ConfigDict(extra="forbid")

    device_name: str
    torch_version: str
    triton_version: str
    buckets: dict[str, Crossover] = Field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """A path and where its crossovers came from (for records)."""

    path: KernelPath
    source: str  # "default" or "measured at <UTC ISO time>"


def _rule(m: int, gemv_max_m: int, flat_max_m: int) -> KernelPath:
    return "gemv" if m <= gemv_max_m else "flat" if m <= flat_max_m else "dense"


def bucket(n: int, k: int) -> str:
    """The cache key of an ``(N, K)`` shape: both rounded up to powers of two, ``"<N>x<K>"``."""
    return f"{1 << max(0, n - 1).bit_length()}x{1 << max(0, k - 1).bit_length()}"


# ------------------------------------------------------------------------------------------ the cache


def _triton_version() -> str:
    try:
        import triton
    except Exception:  # noqa: BLE001 - triton is optional
        return "none"
    return str(triton.__version__)


@cache
def _identity(dev: torch.device) -> tuple[str, str]:
    """(device name, file slug of device name + torch + triton versions) -- looked up once per device."""
    name = device_name(dev)
    return name, slug(f"{name} torch {torch.__version__} triton {_triton_version()}")


def cache_path(device: Union[str, torch.device]) -> Path:
    """``<$ROOFLENS_HOME or ~/.config/rooflens>/dispatch/<device name, torch and triton versions>.json``."""
    return Path(_cache_file(pinned_device(device), os.environ.get("ROOFLENS_HOME")))


@lru_cache(maxsize=64)
def _cache_file(dev: torch.device, home_env: Optional[str]) -> str:
    """:func:`cache_path` as a string, built once per device and ``$ROOFLENS_HOME`` (the cache key only:
    :func:`rooflens.fsutil.home_dir` reads it) -- :func:`decide` runs on every forward."""
    return str(home_dir() / "dispatch" / f"{_identity(dev)[1]}.json")


@lru_cache(maxsize=16)
def _read(path: str, mtime_ns: int) -> Optional[DispatchTable]:
    """Parsed once per file version (so the warning for a bad file is given once)."""
    try:
        return DispatchTable.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        warnings.warn(
            f"{path}: ignoring the low-bit dispatch cache ({first_line(exc)}); the default crossovers "
            "apply until rooflens.kernels.dispatch.calibrate rewrites it",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def load_table(device: Union[str, torch.device]) -> Optional[DispatchTable]:
    """The cached table of ``device`` (re-read when the file changes); None when absent or invalid."""
    path = _cache_file(pinned_device(device), os.environ.get("ROOFLENS_HOME"))
    try:
        mtime = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None
    return _read(path, mtime)


# -------------------------------------------------------------------------------------------- decide


def decide(m: int, n: int, k: int, device: Union[str, torch.device]) -> Decision:
    """The path for ``x [m, k] @ W[n, k].T`` on ``device`` and where the crossovers came from."""
    table = load_table(device)
    cross = table.buckets.get(bucket(n, k), DEFAULT_CROSSOVER) if table is not None else DEFAULT_CROSSOVER
    return Decision(cross.path(m), cross.source)


def choose_path(m: int, n: int, k: int, device: Union[str, torch.device]) -> KernelPath:
    """``"gemv"``, ``"flat"`` or ``"dense"`` for ``(m, n, k)`` on ``device`` (see :func:`decide`)."""
    return decide(m, n, k, device).path


def fit_crossover(ms: Sequence[int], us: dict[str, Sequence[float]]) -> tuple[int, int]:
    """``(gemv_max_m, flat_max_m)``, each 0 or a measured M, minimising ``sum_M t(path(M)) / t_fastest(M)``.

    ``ms`` ascending; ``us[path][i]``: the time of ``path`` at ``ms[i]``.  Ties go to the smaller crossovers.
    """
    best = [min(us[p][i] for p in PATHS) for i in range(len(ms))]
    cuts = [0, *ms]

    def cost(cut: tuple[int, int]) -> float:
        return sum(us[_rule(m, *cut)][i] / best[i] for i, m in enumerate(ms))

    return min(((a, b) for a in cuts for b in cuts if b >= a), key=cost)


# ----------------------------------------------------------------------------------------- calibrate


def time_ms(fn: Callable[[], object], reps: int = 20, warmup: int = 3, graph: bool = True) -> float:
    """Median GPU time (ms) of ``fn()``: ``warmup`` eager calls (these also run Triton's autotuning), then
    ``reps`` runs each timed with CUDA events -- replays of a CUDA graph of ``fn`` (no CPU launch overhead)
    unless ``graph=False``."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    run = fn
    if graph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # graph-capture warm-up on a side stream, as recommended
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            fn()
        run = cuda_graph.replay
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def weight_copies(qw: QuantizedWeight, min_bytes: float) -> list[QuantizedWeight]:
    """``qw`` and clones of it, at least two and ``min_bytes`` in all: calling through them in turn makes
    every call read its weight from memory rather than from the L2 cache."""
    count = max(2, math.ceil(min_bytes / qw.storage_bytes))
    return [qw] + [
        dataclasses.replace(
            qw, packed=qw.packed.clone(), scales=qw.scales.clone(), zeros=None if qw.zeros is None else qw.zeros.clone()
        )
        for _ in range(count - 1)
    ]


def calibrate(
    device: Union[str, torch.device],
    shapes: Iterable[tuple[int, int]] = LLAMA2_7B_SHAPES,
    *,
    ms: Sequence[int] = CALIBRATION_MS,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = True,
    dtype: torch.dtype = torch.float16,
    reps: int = 20,
    warmup: int = 3,
    rotate_mb: float = 256.0,
) -> DispatchTable:
    """Measure gemv / flat / dense over ``ms`` for each ``(N, K)`` of ``shapes`` on the CUDA ``device``; store
    the fitted crossovers per bucket in :func:`cache_path` (merged into the file; of two shapes in one bucket
    the later wins) and return the table.  Raises :class:`CalibrationError` anywhere but on a GPU."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available() or interpreting():
        raise CalibrationError(
            f"crossovers are only measured on a CUDA GPU with compiled Triton kernels (device={dev}, CUDA "
            f"available={torch.cuda.is_available()}, TRITON_INTERPRET={int(interpreting())}); until then "
            "choose_path uses the defaults: gemv for M == 1, flat for M 2..16, dense above"
        )
    dev = pinned_device(dev)
    ms = sorted(set(ms))
    cached = load_table(dev)  # shared with decide(): measure into a copy
    table = (
        cached.model_copy(deep=True)
        if cached is not None
        else DispatchTable(
            device_name=_identity(dev)[0], torch_version=torch.__version__, triton_version=_triton_version()
        )
    )
    fmt = f"{bits}-bit g{group_size} {'sym' if symmetric else 'asym'}, {str(dtype).removeprefix('torch.')} x"
    gen = torch.Generator(device=dev).manual_seed(0)
    with measuring(f"a kernel calibration on {dev}"):
        for n, k in shapes:
            qws = weight_copies(
                quantize(torch.randn(n, k, device=dev, generator=gen) * 0.02, bits, group_size, symmetric),
                rotate_mb * 2**20,
            )
            us: dict[str, list[float]] = {p: [] for p in PATHS}
            for m in ms:
                x = torch.randn(m, k, device=dev, generator=gen).to(dtype)
                for p in PATHS:

                    def one_pass(p: str = p, x: torch.Tensor = x) -> None:
                        for q in qws:  # noqa: F821 (del below)
                            lowbit_linear(x, q, path=p)

                    us[p].append(time_ms(one_pass, reps, warmup) * 1e3 / len(qws))
            gemv_max_m, flat_max_m = fit_crossover(ms, us)
            table.buckets[bucket(n, k)] = Crossover(
                gemv_max_m=gemv_max_m,
                flat_max_m=flat_max_m,
                format=fmt,
                ms=ms,
                us=us,
                measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            del qws
            torch.cuda.empty_cache()
    write_atomic(cache_path(dev), table.model_dump_json(indent=2) + "\n")
    return table
