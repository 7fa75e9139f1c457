"""The runner: expands engines x workloads x batch sizes into cells, measures each, writes its record.

Per cell: warm-up runs (discarded), then measured repetitions until both ``min_reps`` and
``min_seconds`` are met (capped at ``max_reps``), inside one energy window and one peak-memory
window. Each record is written atomically as soon as its cell ends, so an interrupted or
crashing sweep keeps every finished cell; a failing cell becomes a ``failed`` record and the
sweep goes on.
"""

from __future__ import annotations

import bisect
import gc
import os
import secrets
import time
import traceback
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from rooflens.bench.cells import Cell, cell_groups, expand_cells
from rooflens.bench.energy import EnergyMeter, EnergyReading, UnavailableMeter, select_meter
from rooflens.bench.environment import capture_environment, now_iso
from rooflens.bench.memory import PeakMemory
from rooflens.bench.preflight import cell_memory_need, check_context, memory_shortfall
from rooflens.bench.timing import RepTiming, rep_timing
from rooflens.config import EngineSpec, Experiment, Repetitions
from rooflens.data.prompts import make_prompts
from rooflens.data.quality import PPL_WINDOW, agreement, heldout_ids, perplexity, rouge_l
from rooflens.device.detect import detect_hardware
from rooflens.engines.base import Engine, EngineUnavailable, TokenClock
from rooflens.engines.registry import build_engine, get_engine
from rooflens.models.loader import TORCH_DTYPES, DtypeChoice, LoadedModel, choose_dtype, load_model, resolve_device
from rooflens.results.record import (
    EnergyResult,
    ErrorInfo,
    MemoryResult,
    Metric,
    QualityResult,
    Quantity,
    Record,
    RepetitionInfo,
)
from rooflens.results.stats import summarize
from rooflens.results.store import ensure_writable, write_record
from rooflens.roofline.hardware import resolve_profile
from rooflens.roofline.position import ceilings_for, roofline_position
from rooflens.roofline.probe import ProbeResult, load_probe
from rooflens.text import safe_name

if TYPE_CHECKING:
    from rooflens.bench.executors.base import Executor

MAX_SAMPLES = 10000


class FixedLengthError(RuntimeError):
    """An engine returned a different number of tokens than requested."""


class RunObserver(Protocol):
    def model_loading(self, label: str) -> None: ...
    def note(self, text: str) -> None: ...
    def cell_started(self, index: int, total: int, cell: Cell) -> None: ...
    def repetition_done(self, cell: Cell, measured: int, warmup: bool) -> None: ...
    def cell_finished(self, index: int, total: int, record: Record, path: Path) -> None: ...


class SilentObserver:
    def model_loading(self, label: str) -> None: ...
    def note(self, text: str) -> None: ...
    def cell_started(self, index: int, total: int, cell: Cell) -> None: ...
    def repetition_done(self, cell: Cell, measured: int, warmup: bool) -> None: ...
    def cell_finished(self, index: int, total: int, record: Record, path: Path) -> None: ...


# ---------------------------------------------------------------------------- one cell


@dataclass
class CellMeasurement:
    timings: list[RepTiming]
    warmup: int
    measured_seconds: float
    stopped_by: str
    energy: EnergyReading
    memory: Any
    stats: dict
    tokens: torch.Tensor  # new tokens of the first measured repetition


def run_once(engine: Engine, prompts: torch.Tensor, n_new: int, device: torch.device) -> tuple[RepTiming, torch.Tensor]:
    clock = TokenClock(device)
    clock.start()
    tokens = engine.generate(prompts, n_new, clock)
    clock.stop()
    expected = (prompts.shape[0], n_new)
    if tuple(tokens.shape) != expected:
        raise FixedLengthError(f"engine returned tokens of shape {tuple(tokens.shape)}, expected {expected}")
    timing = rep_timing(clock.t_start, clock.events, batch=prompts.shape[0], prompt_len=prompts.shape[1], n_new=n_new)
    return timing, tokens


def measure(
    engine: Engine,
    prompts: torch.Tensor,
    n_new: int,
    reps: Repetitions,
    meter: EnergyMeter,
    device: torch.device,
    on_rep: Callable[[int, bool], None] = lambda n, warm: None,
    now: Callable[[], float] = time.perf_counter,
) -> CellMeasurement:
    for i in range(reps.warmup):
        run_once(engine, prompts, n_new, device)
        on_rep(i + 1, True)
    engine.reset_stats()
    # an energy counter needs a window of at least its resolution: keep repeating until it is long enough
    min_seconds = max(reps.min_seconds, meter.min_window_s if meter.available else 0.0)
    timings: list[RepTiming] = []
    first_tokens = None
    with PeakMemory(device) as mem:
        meter.start()
        t0 = now()
        while True:
            timing, tokens = run_once(engine, prompts, n_new, device)
            timings.append(timing)
            if first_tokens is None:
                first_tokens = tokens.detach().cpu()
            elapsed = now() - t0
            on_rep(len(timings), False)
            if len(timings) >= reps.max_reps:
                stopped_by = "max_reps"
                break
            if len(timings) >= reps.min_reps and elapsed >= min_seconds:
                stopped_by = "min_reps_and_seconds"
                break
        reading = meter.stop()
    return CellMeasurement(timings, reps.warmup, elapsed, stopped_by, reading, mem.result, engine.stats(), first_tokens)


def _metric(values: list[float], unit: str, source: str, how: str) -> Metric:
    return Metric(
        unit=unit, source=source, how=how, samples=[float(v) for v in values[:MAX_SAMPLES]], **summarize(values)
    )


def metrics_of(timings: list[RepTiming]) -> dict[str, Metric]:
    t = timings
    return {
        "ttft_s": _metric(
            [x.ttft_s for x in t], "s", "measured", "generate start -> first new token (includes prefill)"
        ),
        "tpot_s": _metric([x.tpot_s for x in t], "s", "derived", "(e2e - TTFT) / tokens after the first emission"),
        "e2e_s": _metric([x.e2e_s for x in t], "s", "measured", "generate start -> last new token"),
        "itl_s": _metric(
            [g for x in t for g in x.itl_s], "s", "measured", "gaps between token emissions, pooled over repetitions"
        ),
        "prefill_tok_s": _metric([x.prefill_tok_s for x in t], "tok/s", "derived", "batch * prompt_len / TTFT"),
        "decode_tok_s": _metric(
            [x.decode_tok_s for x in t], "tok/s", "derived", "batch * tokens after the first / (e2e - TTFT)"
        ),
        "e2e_tok_s": _metric([x.e2e_tok_s for x in t], "tok/s", "derived", "batch * gen_len / e2e"),
    }


def energy_of(reading: EnergyReading, tokens: int, reps: int) -> EnergyResult:
    if reading.joules is None:
        return EnergyResult(
            measured=False, meter=reading.meter, domain=reading.domain, reason=reading.reason, window_s=reading.seconds
        )
    how = f"{reading.meter} over the window of all measured repetitions ({reading.domain})"
    return EnergyResult(
        measured=True,
        meter=reading.meter,
        domain=reading.domain,
        window_s=reading.seconds,
        short_window=reading.short_window,
        warnings=list(reading.warnings),
        joules=Quantity(value=reading.joules, unit="J", source="measured", how=how),
        joules_per_rep=Quantity(value=reading.joules / reps, unit="J", source="derived", how="joules / repetitions"),
        tokens_per_joule=Quantity(
            value=tokens / reading.joules if reading.joules > 0 else None,
            unit="tok/J",
            source="derived",
            how="generated tokens in the window / joules",
        ),
        mean_power_w=Quantity(value=reading.mean_power_w, unit="W", source="derived", how="joules / window seconds"),
    )


# ---------------------------------------------------------------------------- the sweep


def _remove_if_empty(folder: Path) -> None:
    """A run that ended before its first record leaves no empty run folder behind."""
    try:
        folder.rmdir()
    except OSError:
        pass


@dataclass
class RunResult:
    run_id: str
    folder: Path
    records: list[Record]


class ExperimentRunner:
    def __init__(
        self,
        exp: Experiment,
        source: str = "<experiment>",
        results_root: Path | None = None,
        observer: RunObserver | None = None,
        meter: EnergyMeter | None = None,
        executor: Executor | None = None,
        *,
        run_id: str | None = None,
        dtype_choice: DtypeChoice | None = None,
    ):
        """``executor``: where the cells run (default: the one the experiment names, ``inline`` unless set).
        ``run_id`` and ``dtype_choice`` are the driver's, handed to a worker that measures part of its run."""
        self.exp = exp
        self.source = source
        self.observer = observer or SilentObserver()
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
        root = Path(results_root) if results_root is not None else Path(exp.output.results_dir)
        self.folder = root / safe_name(exp.name) / self.run_id
        self.device = resolve_device(exp.device)
        self.dtype_choice = dtype_choice or choose_dtype(exp.dtype, self.device)
        self.dtype = self.dtype_choice.dtype
        self._meter = meter
        self.executor = executor
        self.records: list[Record] = []  # written so far (an interrupted sweep reports them)
        self._indices: list[int] = []  # the cell index of each of ``records``
        self.total_cells = len(expand_cells(exp))
        self._reference_tokens: dict[tuple[int, int], torch.Tensor] = {}
        self._perplexity: dict[str, Quantity | str] = {}
        self._shared_perplexity: dict[torch.nn.Module, Quantity] = {}  # by loaded model (one per dtype)

    def _experiment_info(self) -> dict[str, Any]:
        return {
            "name": self.exp.name,
            "file": self.source,
            "run_id": self.run_id,
            "config_hash": self.exp.config_hash(),
            "baseline": self.exp.baseline_label,
            "config": self.exp.model_dump(mode="json"),
        }

    def run(self) -> RunResult:
        """Measure every cell; checks that need no measurement (output folder, context) come first."""
        ensure_writable(self.folder, "results folder")
        try:
            return self._run()
        finally:
            if not self.records:
                _remove_if_empty(self.folder)

    def _run(self) -> RunResult:
        """The driver: hand the cells, by engine, to the executor; write and report each record as it arrives."""
        from rooflens.bench.executors import make_executor

        executor = self.executor or make_executor(self.exp.executor)
        self.setup(executor.name)
        cells = expand_cells(self.exp)
        results = executor.run(self, cell_groups(cells))
        try:
            for i, record in results:
                self.keep(i, record)
        finally:
            results.close()  # an executor stops its workers when the driver stops early
        return RunResult(self.run_id, self.folder, self.records)

    def keep(self, index: int, record: Record) -> Path:
        """Write the record of cell ``index`` atomically and tell the observer. Groups measured at the same
        time (``ray``) deliver records interleaved; ``records`` stays in cell order all the same."""
        path = write_record(self.folder, record)
        at = bisect.bisect(self._indices, index)
        self._indices.insert(at, index)
        self.records.insert(at, record)
        self.observer.cell_finished(index, self.total_cells, record, path)
        return path

    def setup(self, executor: str) -> None:
        """Threads, hardware profile, probe and environment of the process that calls it (the worker's own in a worker)."""
        exp = self.exp
        if exp.threads:
            torch.set_num_threads(exp.threads)
        detected = detect_hardware()
        profile = resolve_profile(exp.hardware, str(self.device), hardware=detected)
        self.profile = profile.profile
        self.probe = load_probe(profile.device_name) if profile.device_name else None
        dtype = str(self.dtype).removeprefix("torch.")
        if exp.probe == "auto" and profile.device_name and not ceilings_for(self.profile, dtype, self.probe):
            self.probe = self._first_probe(profile.device_name) or self.probe
        self.env = capture_environment(detected.model_dump(mode="json"))
        self.env["placement"] = {"executor": executor, "pid": os.getpid()}
        self.profile_info = {
            "name": profile.profile.name,
            "display_name": profile.profile.display_name,
            "matched": profile.matched,
            "reason": profile.reason,
            "profile": profile.profile.model_dump(mode="json"),
        }

    def _first_probe(self, device_name: str) -> ProbeResult | None:
        """``probe: auto`` on a device with no ceilings: measure them once (quick sizes) and save them for later
        runs, so that every record of this one has a roofline efficiency. Said on the console, never silent."""
        from rooflens.roofline.probe import ProbeError, probe, save_probe

        self.observer.note(
            f"no ceilings for {device_name}: measuring them once (`rooflens hw probe --quick`, a few seconds; "
            "saved and reused by later runs; `rooflens hw probe` measures them longer)"
        )
        try:
            result = probe(str(self.device), quick=True)
        except (ProbeError, ValueError, RuntimeError) as err:
            self.observer.note(f"the probe failed ({err}): records will have no roofline efficiency")
            return None
        self.observer.note(
            f"measured ceilings: {result.bandwidth.max / 1e9:.1f} GB/s, "
            + ", ".join(
                f"{k} {v.max / 1e12:.3g} {'TOP/s' if k == 'int8' else 'TFLOP/s'}" for k, v in result.gemm.items()
            )
            + f"; saved to {save_probe(result)}"
        )
        return result

    def measure_groups(self, groups: Sequence[Sequence[int]]) -> Generator[tuple[int, Record], None, None]:
        """Measure the cells (indices into :func:`expand_cells`) of ``groups`` in this process, yielding each
        record as its cell ends. The model is loaded once per dtype for all the groups; each group's engine is
        prepared once and released after its last cell, before the next one is prepared."""
        exp = self.exp
        if self._meter is not None:
            meter = self._meter
        elif exp.energy:
            meter = select_meter(str(self.device))
        else:
            meter = UnavailableMeter("energy measurement turned off in the experiment (energy: false)")
        cells = expand_cells(exp)
        models: dict[torch.dtype, LoadedModel] = {}
        if not groups:
            return
        first = cells[groups[0][0]].engine  # the baseline in a whole run; a worker loads only its group's dtype
        check_context(exp, self._model_for(first, models).model.config, exp.model.label)
        engines: dict[str, Engine | ErrorInfo] = {}
        for group in groups:
            for i in group:
                cell = cells[i]
                self.observer.cell_started(i, len(cells), cell)
                yield i, self._run_cell(cell, self._model_for(cell.engine, models), meter, engines)
            label = cells[group[-1]].engine.display
            if isinstance(engines.get(label), Engine):
                # free the engine (and any model copy it made) before the next one is prepared
                engines[label] = ErrorInfo(type="Released", message="engine released after its last cell")
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def lost_record(self, index: int, reason: ErrorInfo, model: Any = None, environment: dict | None = None) -> Record:
        """A ``failed`` record for a cell whose measuring process ended before it wrote one."""
        cell = expand_cells(self.exp)[index]
        return Record(
            status="failed",
            reason=reason,
            finished_at=now_iso(),
            **self._record_base(cell, model, environment or self.env),
        )

    def _record_base(self, cell: Cell, model: Any, environment: dict[str, Any]) -> dict[str, Any]:
        return {
            "record_id": f"{self.run_id}/{safe_name(cell.engine.display)}/{safe_name(cell.workload.display)}/b{cell.batch_size}",
            "experiment": self._experiment_info(),
            "cell": cell.spec(),
            "model": model,
            "device": str(self.device),
            "hardware_profile": self.profile_info,
            "environment": environment,
            "started_at": now_iso(),
        }

    def _model_for(self, spec: EngineSpec, models: dict[torch.dtype, LoadedModel]) -> LoadedModel:
        """The model in this engine's dtype (its own ``dtype``, else the experiment's), loaded once per dtype."""
        choice = (
            DtypeChoice(TORCH_DTYPES[spec.dtype], f"{spec.dtype}, set for engine '{spec.display}'")
            if spec.dtype
            else self.dtype_choice
        )
        if choice.dtype not in models:
            self.observer.model_loading(f"{self.exp.model.label} ({str(choice.dtype).removeprefix('torch.')})")
            models[choice.dtype] = load_model(
                self.exp.model, self.device, choice.dtype, seed=self.exp.seed, dtype_reason=choice.reason
            )
        return models[choice.dtype]

    def _engine_for(self, spec: EngineSpec, model: LoadedModel, engines: dict) -> Engine | ErrorInfo:
        """Build and prepare each engine once; remember why it could not run."""
        if spec.display not in engines:
            cls = get_engine(spec.name)
            reason = cls.unavailable_reason(self.device, model)
            if reason is not None:
                engines[spec.display] = ErrorInfo(type="EngineUnavailable", message=reason)
            else:
                try:
                    engine = build_engine(spec, model)
                    engine.prepare()
                    engines[spec.display] = engine
                    self._perplexity[spec.display] = self._measure_perplexity(engine, model)
                except EngineUnavailable as err:  # an option this device cannot run (found while preparing)
                    engines[spec.display] = ErrorInfo(type="EngineUnavailable", message=str(err))
                except Exception as err:
                    engines[spec.display] = ErrorInfo(
                        type=type(err).__name__, message=f"prepare failed: {err}", traceback=traceback.format_exc()
                    )
        return engines[spec.display]

    def _memory_shortfall(self, cell: Cell, model: LoadedModel, engines: dict) -> str | None:
        """Why this cell would not fit in the memory free now (None when it fits or its engine cannot run)."""
        if isinstance(engines.get(cell.engine.display), ErrorInfo):
            return None
        extra = (0, "")
        if cell.engine.display not in engines:  # not prepared yet: its own weights are still to come
            cls = get_engine(cell.engine.name)
            extra = cls.extra_weight_bytes(cls.Options.model_validate(cell.engine.options), model)
        w = cell.workload
        need = cell_memory_need(
            model.model.config,
            model.model.dtype,
            batch=cell.batch_size,
            prompt_len=w.prompt_len,
            gen_len=w.gen_len,
            real_weights=model.info.weights == "real",
            engine_weights=extra,
        )
        return memory_shortfall(need, self.device, batch=cell.batch_size, prompt_len=w.prompt_len, gen_len=w.gen_len)

    def _measure_perplexity(self, engine: Engine, model: LoadedModel) -> Quantity | str:
        """Perplexity of the engine's scoring model on the held-out text, or why there is none."""
        if model.info.weights != "real" or model.tokenizer is None:
            return "random weights or no tokenizer"
        scorer = engine.scoring_model()
        if scorer is None:
            return f"engine '{engine.name}' has no single scoring model"
        if scorer is model.model and model.model in self._shared_perplexity:
            return self._shared_perplexity[model.model]  # lossless engines score the loaded model itself: once
        ppl, count = perplexity(scorer, heldout_ids(model.tokenizer))
        result = Quantity(
            value=ppl,
            unit="",
            source="measured",
            how=f"exp(mean NLL) over {count} tokens of the shipped held-out text, windows of {PPL_WINDOW}",
        )
        if scorer is model.model:
            self._shared_perplexity[model.model] = result
        return result

    def _quality(self, cell: Cell, model: LoadedModel, tokens: torch.Tensor) -> QualityResult | None:
        """Agreement with the baseline engine's greedy tokens on the same prompts, and perplexity."""
        if model.info.weights != "real":
            return None  # random weights: output quality means nothing
        key = (cell.workload_index, cell.batch_size)
        baseline = self.exp.baseline_label
        if cell.engine.display == baseline:
            self._reference_tokens[key] = tokens
        ppl = self._perplexity.get(cell.engine.display)
        reference = self._reference_tokens.get(key)
        notes = []
        if isinstance(ppl, str):
            notes.append(f"perplexity n/a: {ppl}")
        if reference is None:
            notes.append(f"agreement n/a: the baseline engine '{baseline}' has no successful run of this cell")
        result = QualityResult(
            reference=f"greedy tokens of the baseline engine '{baseline}' on the same prompts (first measured repetition)",
            perplexity=ppl if isinstance(ppl, Quantity) else None,
            note="; ".join(notes) or None,
        )
        if reference is not None:
            a = agreement(tokens, reference)
            result.agreement = Quantity(
                value=a.fraction,
                unit="fraction",
                source="measured",
                how="matching tokens / all generated tokens, position by position",
            )
            result.first_divergence = Quantity(
                value=a.first_divergence,
                unit="token",
                source="measured",
                how=f"earliest position where any row differs ({cell.workload.gen_len} = never)",
            )
            scores = [rouge_l(row.tolist(), ref.tolist()) for row, ref in zip(tokens.cpu(), reference.cpu())]
            result.rouge_l = Quantity(
                value=sum(scores) / len(scores),
                unit="fraction",
                source="measured",
                how="ROUGE-L F1 (longest common subsequence) of the greedy tokens vs the baseline's, mean over rows",
            )
        return result

    def _run_cell(self, cell: Cell, model: LoadedModel, meter: EnergyMeter, engines: dict) -> Record:
        base = self._record_base(cell, model.info, self.env)
        short = self._memory_shortfall(cell, model, engines)
        if short is not None:
            return Record(
                status="unavailable",
                reason=ErrorInfo(type="InsufficientMemory", message=short),
                finished_at=now_iso(),
                **base,
            )
        engine = self._engine_for(cell.engine, model, engines)
        if isinstance(engine, ErrorInfo):
            status = "unavailable" if engine.type == "EngineUnavailable" else "failed"
            return Record(status=status, reason=engine, finished_at=now_iso(), **base)
        w = cell.workload
        if cell.batch_size > 1 and not engine.supports_batch:
            # the record names the engine: one message for every engine, so a summary can group them
            reason = ErrorInfo(
                type="EngineUnavailable", message="the engine decodes one sequence at a time (batch size 1 only)"
            )
            return Record(status="unavailable", reason=reason, finished_at=now_iso(), **base)
        try:
            prompts = make_prompts(
                model, w.prompt, cell.batch_size, w.prompt_len, self.exp.seed + 1000 * cell.workload_index
            )
            m = measure(
                engine,
                prompts,
                w.gen_len,
                self.exp.repetitions,
                meter,
                self.device,
                on_rep=lambda n, warm: self.observer.repetition_done(cell, n, warm),
            )
        except KeyboardInterrupt:
            # keep a trace of the interrupted cell, then stop the sweep; finished cells are on disk
            write_record(
                self.folder,
                Record(
                    status="failed",
                    reason=ErrorInfo(type="KeyboardInterrupt", message="interrupted by the user"),
                    finished_at=now_iso(),
                    **base,
                ),
            )
            raise
        except Exception as err:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            reason = ErrorInfo(type=type(err).__name__, message=str(err), traceback=traceback.format_exc())
            return Record(status="failed", reason=reason, finished_at=now_iso(), **base)
        reps = len(m.timings)
        tokens = reps * cell.batch_size * w.gen_len
        mem = m.memory
        metrics = metrics_of(m.timings)
        roofline = roofline_position(
            model.model.config,
            model.info.dtype,
            batch=cell.batch_size,
            prompt_len=w.prompt_len,
            gen_len=w.gen_len,
            ttft_s=metrics["ttft_s"].median,
            tpot_s=metrics["tpot_s"].median,
            hints=engine.roofline_hints(),
            ceilings=ceilings_for(self.profile, model.info.dtype, self.probe),
        )
        return Record(
            status="ok",
            metrics=metrics,
            roofline=roofline,
            quality=self._quality(cell, model, m.tokens),
            energy=energy_of(m.energy, tokens, reps),
            memory=MemoryResult(
                kind=mem.kind,
                peak_bytes=Quantity(value=mem.peak_bytes, unit="B", source="measured", how=mem.how),
                baseline_bytes=Quantity(
                    value=mem.baseline_bytes, unit="B", source="measured", how="at the start of the measured window"
                ),
                how=mem.how,
            ),
            engine_stats=m.stats,
            repetitions=RepetitionInfo(
                warmup=m.warmup, measured=reps, measured_seconds=m.measured_seconds, stopped_by=m.stopped_by
            ),
            finished_at=now_iso(),
            **base,
        )
