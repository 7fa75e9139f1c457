"""Synthetic records (no model runs) and scripted engines for tests."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch

from rooflens.bench.energy import EnergyMeter, _Measured
from rooflens.bench.validate import validate_experiment
from rooflens.config import Experiment
from rooflens.engines import base
from rooflens.engines.base import Engine, EngineOptions, TokenClock
from rooflens.models.loader import ModelInfo
from rooflens.results.record import (
    CeilingRef,
    CellSpec,
    EnergyResult,
    ErrorInfo,
    MemoryResult,
    Metric,
    PhasePosition,
    QualityResult,
    Quantity,
    Record,
    RepetitionInfo,
    RooflineResult,
    Validity,
    ValidityReason,
)
from rooflens.results.stats import summarize

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

CPU_ENV = {
    "hardware": {"cpu_model": "Test CPU", "cpu_cores_logical": 2, "gpus": []},
    "libraries": {"torch": "2.13.0"},
    "rooflens_version": "0.1.0",
    "rooflens_git": {"commit": "abc", "dirty": False},
    "torch_threads": 2,
}


def metric(samples, unit="tok/s", source="measured"):
    return Metric(unit=unit, source=source, how="synthetic", samples=list(samples), **summarize(samples))


def noisy(center: float, n: int, rel_sd: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [center * (1 + rng.gauss(0, rel_sd)) for _ in range(n)]


def make_record(
    engine="hf",
    batch=1,
    decode=100.0,
    n=10,
    rel_sd=0.02,
    seed=0,
    run_id="run1",
    status="ok",
    weights="real",
    baseline="hf",
    agreement=None,
    tok_per_j=None,
    env=None,
    experiment="exp",
    stats=None,
) -> Record:
    model = ModelInfo(
        source="builtin" if weights == "real" else "shape",
        id="m",
        label="m" if weights == "real" else "shape:m",
        weights=weights,
        weights_note="test",
        model_type="llama",
        architecture="LlamaForCausalLM",
        n_params=1000,
        param_bytes=4000,
        dtype="float32",
        num_layers=2,
        hidden_size=8,
        vocab_size=32,
        has_tokenizer=weights == "real",
    )
    base = dict(
        record_id=f"{run_id}/{engine}/b{batch}",
        experiment={"name": experiment, "run_id": run_id, "baseline": baseline, "config_hash": "h"},
        cell=CellSpec(
            engine=engine.split("-")[0],
            engine_label=engine,
            engine_options={},
            workload="w",
            prompt_len=16,
            gen_len=8,
            batch_size=batch,
            prompt_source="synthetic",
        ),
        model=model,
        device="cpu",
        hardware_profile={"name": "cpu-generic", "display_name": "Test CPU", "reason": "test"},
        environment=env or CPU_ENV,
        started_at=f"2026-01-01T00:00:{seed % 60:02d}",
        finished_at="2026-01-01T00:01:00",
    )
    if status != "ok":
        return Record(status=status, reason=ErrorInfo(type="RuntimeError", message=f"{engine} broke"), **base)
    dec = noisy(decode, n, rel_sd, seed)
    ttft = noisy(0.05, n, rel_sd, seed + 1)
    tpot = [1.0 / d for d in dec]
    energy = (
        EnergyResult(
            measured=True,
            meter="fake",
            tokens_per_joule=Quantity(value=tok_per_j, unit="tok/J", source="derived", how="t"),
        )
        if tok_per_j
        else EnergyResult(measured=False, meter="unavailable", reason="no counter on the test machine")
    )
    quality = None
    if agreement is not None:
        quality = QualityResult(
            reference="baseline greedy",
            agreement=Quantity(value=agreement, unit="fraction", source="measured", how="t"),
        )
    return Record(
        status="ok",
        metrics={
            "decode_tok_s": metric(dec),
            "ttft_s": metric(ttft, "s"),
            "tpot_s": metric(tpot, "s", "derived"),
            "prefill_tok_s": metric([batch * 16 / t for t in ttft], source="derived"),
            "e2e_tok_s": metric([d * 0.9 for d in dec], source="derived"),
        },
        energy=energy,
        memory=MemoryResult(
            kind="process_rss",
            peak_bytes=Quantity(value=2e8, unit="B", source="measured", how="t"),
            baseline_bytes=Quantity(value=1e8, unit="B", source="measured", how="t"),
            how="t",
        ),
        engine_stats=stats or {},
        quality=quality,
        repetitions=RepetitionInfo(warmup=1, measured=n, measured_seconds=1.0, stopped_by="min_reps_and_seconds"),
        **base,
    )


def judged(record: Record, *messages: str) -> Record:
    """``record`` judged: ``valid`` without messages, else ``invalid`` with one CV-style reason per message."""
    reasons = [
        ValidityReason(check="cv", value=0.14, limit=0.10, unit="fraction", source="derived", message=m)
        for m in messages
    ]
    record.validity = Validity(status="invalid" if reasons else "valid", reasons=reasons)
    return record


def tiny_experiment(engines, batch_sizes=(1, 2), **extra) -> Experiment:
    """A validated experiment on the random tiny Llama: prompt 8, gen 5, 1 warm-up, 2+ reps, CPU, float32.

    The dtype is pinned: ``auto`` resolves to bfloat16 on a CPU with native bf16 (AVX512_BF16/AMX) and to
    float32 elsewhere, and the tests must not depend on which CPU they get (``choose_dtype``'s two branches
    are tested by forcing them, in test_models.py). The per-operator attribution is off (one more profiled
    repetition per cell); tests/bench/test_attribution.py turns it on."""
    return validate_experiment(
        {
            "name": "t",
            "model": "shape:tiny-llama",
            "engines": engines,
            "workloads": [{"prompt_len": 8, "gen_len": 5, "batch_sizes": list(batch_sizes)}],
            "repetitions": {"warmup": 1, "min_reps": 2, "min_seconds": 0.0},
            "device": "cpu",
            "dtype": "float32",
            "attribution": False,
            **extra,
        }
    )


# ---------------------------------------------------------------------------- scripted engines


class ScriptedEngine(Engine):
    """Emits token ids without a model; fails or interrupts on request (per batch size)."""

    name = "scripted"
    summary = "test engine"

    class Options(EngineOptions):
        fail_on_batch: int | None = None
        interrupt_on_batch: int | None = None
        short_by: int = 0

    def generate(self, input_ids, max_new_tokens, clock):
        b = input_ids.shape[0]
        if b == self.options.fail_on_batch:
            raise RuntimeError(f"boom at batch {b}")
        if b == self.options.interrupt_on_batch:
            raise KeyboardInterrupt
        n = max_new_tokens - self.options.short_by
        for _ in range(n):
            clock.tokens(1)
        return torch.zeros(b, n, dtype=torch.long)


class CudaOnlyEngine(ScriptedEngine):
    name = "cuda-only"
    devices = ("cuda",)


class BrokenPrepareEngine(ScriptedEngine):
    name = "broken-prepare"

    def prepare(self):
        raise ValueError("no draft model")


class OptionUnavailableEngine(ScriptedEngine):
    name = "option-unavailable"

    def prepare(self):
        raise base.EngineUnavailable("format int4 needs CUDA")


class StepMeter(EnergyMeter):
    """A fake energy counter: every window measures exactly 2 J."""

    def __init__(self):
        super().__init__(name="fake-counter", domain="test", min_window_s=0.0)

    def _begin(self):
        pass

    def _end(self):
        return _Measured(2.0)


class VirtualClock:
    """A clock that moves only when told: token timestamps that do not depend on the machine's speed."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


VIRTUAL_TIME = VirtualClock()
"""What :class:`PacedEngine` advances; the ``virtual_time`` fixture makes the timed loop's clocks read it."""


class PacedEngine(ScriptedEngine):
    """A scripted engine whose tokens take ``token_s[i]`` virtual seconds each in its i-th generation
    (warm-ups included, cycling): a steady list is a quiet engine, an uneven one a noisy engine. A drifting
    machine: from virtual time ``drift_at_s`` on, every token takes ``drift_factor`` times as long."""

    name = "paced"

    class Options(ScriptedEngine.Options):
        token_s: list[float] = [0.01]
        drift_at_s: float | None = None
        drift_factor: float = 1.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def generate(self, input_ids, max_new_tokens, clock):
        step = self.options.token_s[self.calls % len(self.options.token_s)]
        o = self.options
        if o.drift_at_s is not None and VIRTUAL_TIME.t >= o.drift_at_s:
            step *= o.drift_factor
        self.calls += 1
        for _ in range(max_new_tokens):
            VIRTUAL_TIME.advance(step)
            clock.tokens(1)
        return torch.zeros(input_ids.shape[0], max_new_tokens, dtype=torch.long)


TEST_ENGINES = (ScriptedEngine, CudaOnlyEngine, BrokenPrepareEngine, OptionUnavailableEngine, PacedEngine)
"""Engines without a model, registered for a test by the ``test_engines`` fixture (conftest.py)."""


def clocked_generate(engine, prompts: torch.Tensor, n: int) -> torch.Tensor:
    """``engine.generate`` of ``n`` tokens on the CPU, with a started and stopped TokenClock."""
    clock = TokenClock(torch.device("cpu"))
    clock.start()
    out = engine.generate(prompts, n, clock)
    clock.stop()
    return out


# ---------------------------------------------------------------------------- records for reports


def two_runs():
    """fast slows down 160 -> 130 tok/s; 'broke' fails now; 'gone' and 'new' exist on one side only."""
    base = [
        make_record("hf", 1, 100.0, seed=1, agreement=1.0, run_id="a"),
        make_record("fast", 1, 160.0, seed=2, agreement=0.9, run_id="a"),
        make_record("broke", 1, 120.0, seed=3, run_id="a"),
        make_record("gone", 1, 110.0, seed=4, run_id="a"),
    ]
    current = [
        make_record("hf", 1, 100.0, seed=1, agreement=1.0, run_id="b"),
        make_record("fast", 1, 130.0, seed=2, agreement=0.9, run_id="b"),
        make_record("broke", 1, 0.0, status="failed", run_id="b"),
        make_record("new", 1, 90.0, seed=5, run_id="b"),
    ]
    return base, current


def _quantity(value, unit="", source="modelled"):
    return Quantity(value=value, unit=unit, source=source, how="test")


def _phase_position(phase, flops, nbytes, time_s, bits=32.0):
    return PhasePosition(
        phase=phase,
        weight_bits=bits,
        flops=_quantity(flops, "FLOP"),
        weight_bytes=_quantity(nbytes, "B"),
        kv_bytes=_quantity(0.0, "B"),
        act_bytes=_quantity(0.0, "B"),
        bytes=_quantity(nbytes, "B"),
        intensity=_quantity(flops / nbytes, "FLOP/B"),
        time_s=_quantity(time_s, "s", "measured"),
        achieved_flops=_quantity(flops / time_s, "FLOP/s", "derived"),
        achieved_bandwidth=_quantity(nbytes / time_s, "B/s", "derived"),
    )


TEST_CEILING = CeilingRef(
    source="datasheet",
    ref="test profile",
    dtype="fp32",
    bandwidth=_quantity(50e9, "B/s", "datasheet"),
    peak_flops=_quantity(1e12, "FLOP/s", "datasheet"),
)


def placed_record(record, decode_bytes, tpot, bits=32.0, tokens_per_pass=1.0, layers=30.0):
    """Give a synthetic record a roofline section: 2 GFLOP per decode token, ``decode_bytes`` per token."""
    record.roofline = RooflineResult(
        analytic_model="test",
        weight_bits=bits,
        tokens_per_pass=tokens_per_pass,
        layers_executed=layers,
        ceilings=[TEST_CEILING],
        prefill=_phase_position("prefill", 64e9, 4e9, 0.05, bits),
        decode=_phase_position("decode", 2e9 * layers / 30, decode_bytes, tpot, bits),
    )
    return record


# ---------------------------------------------------------------------------- probes


def probe_stat(value: float, unit: str = "FLOP/s", spread: float = 0.01, n: int = 20):
    """A tight (or, with a large ``spread``, noisy) probe statistic around ``value``, deterministic."""
    from rooflens.roofline.probe_file import ProbeStat

    samples = [value * (1 - spread * ((i * 7) % 5) / 4) for i in range(n)]
    return ProbeStat.from_samples(samples, unit, "hand-made")


def valid_probe(
    name: str = "Test CPU (R) @ 2.0GHz",
    threads: int = 2,
    measured_at: str | None = None,
    device: str = "cpu",
    bandwidth: float = 50e9,
):
    """A valid saved-probe result (one valid attempt) with fp32, bf16 and int8 ceilings, measured now by default."""
    from datetime import datetime, timezone

    from rooflens.roofline.probe_file import AttemptLoad, ProbeAttempt, ProbeResult
    from rooflens.roofline.probe_rules import RULES

    measured_at = measured_at or datetime.now(timezone.utc).isoformat(timespec="seconds")

    bw = probe_stat(bandwidth, "B/s")
    gemm = {"fp32": probe_stat(200e9), "bf16": probe_stat(800e9), "int8": probe_stat(1e12, "OP/s")}
    load = AttemptLoad(
        cores=2,
        load_avg_before=[0.1, 0.1, 0.1],
        load_avg_after=[0.9, 0.3, 0.1],
        load_judged=True,
        other_cpu_before=0.01,
        other_cpu_during=0.02,
        window_before_s=1.0,
        judged=device == "cpu",
    )
    attempt = ProbeAttempt(
        number=1, started_at=measured_at, bandwidth=bw, gemm=gemm, load=load, verdict="valid", reasons=[]
    )
    return ProbeResult(
        device=device,
        device_name=name,
        profile=None,
        bandwidth=bw,
        gemm=gemm,
        skipped={"tf32": "CUDA only"},
        threads=threads,
        torch_version="2.13.0",
        measured_at=measured_at,
        sizes={"copy_bytes": 512 * 2**20, "gemm_n": 2048, "llc_bytes": 32 * 2**20},
        attempts=[attempt],
        chosen=1,
        rules=RULES.as_dict(),
    )


class FakeActivity:
    """Stands in for rooflens.device.activity: every window reports ``share`` of the CPU used by others."""

    def __init__(self, share: float = 0.0, load: tuple[float, float, float] = (0.05, 0.05, 0.05), cores: int = 2):
        self.share, self.load, self.cores, self.windows = share, load, cores, 0

    def watch(self):
        from rooflens.device.activity import CpuActivity

        self.windows += 1
        activity = CpuActivity(wall_s=1.0, cores=self.cores, other_cpu_s=self.share * self.cores, load_avg=self.load)
        return type("Window", (), {"stop": lambda _self: activity})()

    def install(self, monkeypatch) -> FakeActivity:
        from rooflens.device import activity
        from rooflens.roofline import probe

        monkeypatch.setattr(activity, "watch", self.watch)
        monkeypatch.setattr(activity, "load_average", lambda: self.load)
        monkeypatch.setattr(probe, "QUIET_WINDOW_S", 0.0)
        monkeypatch.setattr(probe, "RETRY_PAUSE_S", 0.0)
        return self


def lenient_probe_rules(monkeypatch) -> None:
    """Probe rules nothing fails (tests that measure tiny sizes for real, on a shared machine)."""
    from rooflens.roofline import probe_rules

    monkeypatch.setattr(
        probe_rules,
        "RULES",
        probe_rules.ProbeRules(
            bandwidth_max_cv=1e9,
            gemm_max_cv=1e9,
            min_median_to_best=0.0,
            min_reps=1,
            max_load_per_core=1e9,
            max_other_cpu_share=1e9,
            min_copy_to_llc=0.0,
            max_age_days=1e9,
        ),
    )


# ---------------------------------------------------------------------------- another process holding the machine lock

BOUND_S = 60  # the longest a child holds the lock, or a test waits for it, whatever happens

HOLDER_CHILD = f"""
import os, signal, sys, time
from pathlib import Path
from rooflens.device.lock import measuring
held, release, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with measuring("a test's child"):
    held.touch()
    if how == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # dies holding the lock: no release, the holder file stays
    deadline = time.monotonic() + {BOUND_S}
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
"""
"""A child python holding the machine lock: ``-c HOLDER_CHILD HELD RELEASE hold|die`` (touches HELD once it holds)."""


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def child_env() -> dict[str, str]:
    """The environment of a child python that imports this checkout's rooflens (and inherits the test's lock folder)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


@contextmanager
def child_holding(tmp_path: Path, how: str = "hold") -> Iterator[tuple[subprocess.Popen, Path]]:
    """A child process that holds the machine lock (of this test's ROOFLENS_LOCK_DIR) until ``release`` exists."""
    held, release = tmp_path / "held", tmp_path / "release"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER_CHILD, str(held), str(release), how], env=child_env())
    try:
        wait_for(lambda: held.exists() or proc.poll() is not None, "the child to take the lock")
        assert held.exists(), f"the child exited with {proc.returncode} before taking the lock"
        yield proc, release
    finally:
        release.touch()
        try:
            proc.wait(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------- when groups were at work


def task_spans(records) -> dict[tuple[str, str], tuple[datetime, datetime]]:
    """When each group's Ray task was at work: from its worker's setup (``environment.captured_at``, before
    the model load) to the end of its last cell, by (experiment, engine label)."""
    spans: dict[tuple[str, str], tuple[datetime, datetime]] = {}
    for r in records:
        key = (r.experiment["name"], r.cell.engine_label)
        start = datetime.fromisoformat(r.environment["captured_at"])
        end = datetime.fromisoformat(r.finished_at)
        if key in spans:
            start, end = min(start, spans[key][0]), max(end, spans[key][1])
        spans[key] = (start, end)
    return spans


def overlap(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> bool:
    return max(a[0], b[0]) < min(a[1], b[1])


def small_shape():
    """A small Llama-family shape for analytic costs: 2 layers, hidden 64, 4 heads over 2 KV heads, vocab 100."""
    from rooflens.roofline.analytic import ModelShape

    return ModelShape(
        family="llama",
        model_type="llama",
        num_layers=2,
        hidden=64,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate=128,
        vocab=100,
        tied_embeddings=False,
        qkv_bias=False,
        o_bias=False,
        mlp_bias=False,
    )
