"""Per-operator attribution of a cell: repetitions after the timed ones (never inside them), run under
``torch.profiler`` with the model instrumented (:mod:`.instrument`), their operators sorted into the analytic
model's classes and the engine's own work (:mod:`.events`), and each class placed on the roofline
(:mod:`rooflens.roofline.op_classes`). CPU activity on a CPU; on a GPU the kernels' device time (CUPTI) is an
operator's time. Each profiled repetition follows a bare one (profiler off). On a CPU the profiler's own cost is
taken out: per range as measured just before (:mod:`.overhead`), per recorded operator as the decode passes show it
against the bare ones (:func:`in_situ`); each pass, so corrected, is compared with its bare pair (``agreement``:
the prefill's is the independent check). The profiled repetitions' tokens are not used."""

from __future__ import annotations

import os
import statistics
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from rooflens.bench.attribution.events import PhaseTimes, event_tree, phase_times
from rooflens.bench.attribution.instrument import SteppedClock, instrumented
from rooflens.bench.attribution.overhead import ProfilerCost, measure_profiler_cost
from rooflens.engines.base import Engine, TokenClock
from rooflens.results.record import Attribution, CeilingRef
from rooflens.roofline.analytic import SUPPORTED_MODEL_TYPES, PhaseCost
from rooflens.roofline.op_classes import ProfiledPhase, phase_attribution

__all__ = ["attribute_cell", "profile_repetition"]


def _profiler_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"torch.profiler {torch.__version__}: CPU and CUDA activity (CUPTI); an operator's time is its kernels'"
    return f"torch.profiler {torch.__version__}: CPU activity; an operator's time is its CPU span"


def why_not_attributed(engine: Engine) -> str | None:
    """Why this engine's operators cannot be told apart (None when they can)."""
    own = engine.why_not_attributed()
    if own is not None:
        return own
    if getattr(engine.options, "compile", False):
        return "torch.compile fuses the forward into generated kernels: no per-module operators to attribute"
    return None


@contextmanager
def _kineto_quiet() -> Iterator[None]:
    """Kineto prints ``USDT: ... profiler_start`` lines to the process's stderr at every start and stop, and torch
    warns that a scheduled profiler clears its events: neither is for the user. Stderr (the file descriptor, where
    kineto writes) goes to /dev/null meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Profiler clears events")
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


PROFILED_REPS = 3  # profiled repetitions per cell; each phase keeps the median one, as the timed metrics are medians


@dataclass
class ProfiledReps:
    """A cell's profiled repetitions (per repetition, its phases' times) and bare passes of the same prompts, the
    profiler off and nothing instrumented: before each profiled repetition a bare prefill (its pair: the check that
    the parts add up), and before the first one a whole bare generation; the decode passes of all of them (a
    slow moment in one generation moves their median little) calibrate the profiler's cost. Both are free of the
    machine's drift since the timed repetitions."""

    runs: list[dict[str, PhaseTimes]]
    bare_prefill_s: list[float]  # per repetition
    bare_decode_s: list[float]  # every decode pass of the bare generations

    def median(self) -> dict[str, PhaseTimes]:
        return median_phases(self.runs)

    def bare_pass_s(self) -> dict[str, float]:
        """The bare prefill and decode pass, each the median of its passes; a phase without passes left out."""
        out = {}
        if self.bare_prefill_s:
            out["prefill"] = statistics.median(self.bare_prefill_s)
        if self.bare_decode_s:
            out["decode"] = statistics.median(self.bare_decode_s)
        return out

    def pairs(self, phase: str, cost: ProfilerCost | None) -> list[tuple[float, float]]:
        """(bare pass, attributed profiled pass) in seconds, per profiled repetition: the prefill against the bare
        prefill run just before it, a decode pass against the bare decode pass."""
        decode = self.bare_pass_s().get("decode")
        bare = self.bare_prefill_s if phase == "prefill" else [decode] * len(self.runs)
        out = []
        for run, b in zip(self.runs, bare):
            t = run.get(phase)
            if t is not None and t.passes and t.wall_us > 0 and b:
                out.append((b, _profiled(t, cost).attributed_s()))
        return out


def _generate(engine: Engine, prompts: torch.Tensor, n_new: int, device: torch.device) -> None:
    clock = SteppedClock(device, n_new)
    clock.start()
    try:
        engine.generate(prompts, n_new, clock)
    finally:
        clock.stop()  # closes the open step range


def _bare_generation(engine: Engine, prompts: torch.Tensor, n_new: int, device: torch.device) -> list[float]:
    """A generation with the profiler off, timed as the timed repetitions are: its passes in seconds, the prefill
    (time to the first emission) first, then each decode pass (between emissions)."""
    clock = TokenClock(device)
    clock.start()
    engine.generate(prompts, n_new, clock)
    clock.stop()
    assert clock.t_start is not None and clock.events, "the engine emitted no token"
    stamps = [clock.t_start] + [t for t, _ in clock.events]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def profile_repetition(
    engine: Engine, prompts: torch.Tensor, n_new: int, device: torch.device, reps: int = PROFILED_REPS
) -> ProfiledReps:
    """``reps`` generations of ``n_new`` tokens under the profiler with the engine's modules instrumented, each in
    its own profiler cycle: a bare prefill, the profiler off and nothing instrumented (the cycle's wait step; in
    the first cycle a whole bare generation), then a short generation under its warm-up step (a cold profiler's
    first events cost far more: it doubled a prefill), then the profiled one. Each phase's table takes the
    repetition whose mean pass is the median (:meth:`ProfiledReps.median`)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    target, own = engine.profiled_modules()
    family = SUPPORTED_MODEL_TYPES.get(str(getattr(target.config, "model_type", "")), "llama")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = ProfiledReps([], [], [])

    def keep(prof) -> None:  # the active step's events, read before the profiler clears them
        out.runs.append(phase_times(event_tree(prof.profiler.kineto_results.events()), on_device=device.type == "cuda"))

    steps = schedule(wait=1, warmup=1, active=1, repeat=reps)
    with _kineto_quiet(), profile(activities=activities, schedule=steps, on_trace_ready=keep) as prof:
        for i in range(reps):
            # bare as the timed repetitions are: not instrumented (the ranges' wrappers alone cost a SmolLM2 decode
            # pass ~10 % here), and after a generation, not straight after the last cycle's trace processing
            out.bare_decode_s.extend(_bare_generation(engine, prompts, 2, device)[1:])
            prefill, *decode = _bare_generation(engine, prompts, n_new if i == 0 else 2, device)
            out.bare_prefill_s.append(prefill)
            out.bare_decode_s.extend(decode)
            prof.step()
            with instrumented(target, family, own):
                _generate(engine, prompts, 2, device)
                prof.step()
                _generate(engine, prompts, n_new, device)
                prof.step()
    if not out.runs:
        raise RuntimeError("the profiler handed back no events")
    return out


def median_phases(runs: list[dict[str, PhaseTimes]]) -> dict[str, PhaseTimes]:
    """Per phase, the run whose mean pass time is the median of theirs (the lower middle of an even count)."""
    out: dict[str, PhaseTimes] = {}
    for phase in sorted({p for run in runs for p in run}):
        seen = sorted((t for run in runs if (t := run.get(phase)) and t.passes), key=lambda t: t.wall_us / t.passes)
        if seen:
            out[phase] = seen[(len(seen) - 1) // 2]
    return out


def in_situ(cost: ProfilerCost, times: dict[str, PhaseTimes], bare_pass_s: dict[str, float]) -> ProfilerCost:
    """The cost per operator as the decode passes show it: their profiled time less the bare decode pass (run just
    before, profiler off) and their ranges' cost, over their operators; never below the loop's figure. Inside a
    real forward an operator costs the profiler two to ten times what it costs in a tight loop (SmolLM2 on a 2-core
    CPU), so the loop's figure alone would leave most of the profiler's cost in *outside operators*. The decode
    passes are then attributed in the bare pass's length by construction; the prefill, corrected with their figure,
    is the check."""
    decode, bare = times.get("decode"), bare_pass_s.get("decode")
    if decode is None or not decode.passes or not bare:
        return cost
    ops = decode.top_ops + sum(decode.nested.values())
    extra = decode.wall_us / 1e6 - bare * decode.passes - cost.per_range_s * decode.ranges
    per_op = max(extra / ops if ops else 0.0, cost.per_op_s)
    how = (
        f"{per_op * 1e6:.2f} us per operator as the decode passes show it (profiled less bare, over their "
        f"operators; {cost.per_op_s * 1e6:.2f} us in a loop of small linear calls), {cost.per_range_s * 1e6:.2f} us "
        "per range (a loop of wrapped empty calls, bare and profiled)"
    )
    return ProfilerCost(per_op, cost.per_range_s, how)


def _profiled(t: PhaseTimes, cost: ProfilerCost | None, of_runs: int = 1) -> ProfiledPhase:
    """A phase's totals in seconds, the profiler's cost taken out (none on a GPU: ``cost`` None): an operator nested
    in another costs its parent's class, a top-level one and a range cost the time between operators."""
    per_op = cost.per_op_s if cost else 0.0
    per_range = cost.per_range_s if cost else 0.0
    inside = {k: max(v / 1e6 - per_op * t.nested.get(k, 0), 0.0) for k, v in t.inside_us.items()}
    nested = sum(t.nested.values())
    # never more than the time outside operators: an estimate that would take more (a calibration loop slowed by
    # the machine) is capped, and the pass keeps at least its operators' time
    room = max(t.wall_us / 1e6 - sum(inside.values()), 0.0)
    removed = min(per_op * (t.top_ops + nested) + per_range * t.ranges, room)
    how = "none: on a GPU an operator's time is its kernels'"
    if cost is not None:
        how = f"{t.top_ops + nested} operators and {t.ranges} ranges recorded; {cost.how}"
    if removed >= t.wall_us / 1e6:  # a pass without operators whose whole time the estimate would take
        removed, how = 0.0, f"none: the estimate would take the whole pass ({how})"
    calls, engine_classes = dict(t.calls), frozenset(t.engine_classes)
    return ProfiledPhase(t.passes, t.wall_us / 1e6, removed, inside, calls, engine_classes, how, of_runs)


def attribute_cell(
    engine: Engine,
    prompts: torch.Tensor,
    n_new: int,
    device: torch.device,
    costs: dict[str, PhaseCost],
    ceilings: list[CeilingRef],
    timed_pass_s: dict[str, float],
    reps: int = PROFILED_REPS,
) -> Attribution:
    """The record's attribution: per phase, where a pass's time goes, each class against its analytic ``costs``.
    A failure is recorded as the reason there is none (the cell's timed results stand)."""
    name = _profiler_name(device)
    reason = why_not_attributed(engine)
    if reason is not None:
        return Attribution(profiler=name, reason=reason)
    try:
        with _kineto_quiet():
            cost = measure_profiler_cost() if device.type == "cpu" else None
        profiled = profile_repetition(engine, prompts, n_new, device, reps)
    except Exception as err:  # noqa: BLE001 - an attribution that fails must not fail a measured cell
        return Attribution(profiler=name, reason=f"the profiled repetition failed: {type(err).__name__}: {err}")
    try:
        times = profiled.median()
        if cost is not None:
            cost = in_situ(cost, times, {**timed_pass_s, **profiled.bare_pass_s()})
        phases = [
            phase_attribution(
                phase,
                _profiled(t, cost, len(profiled.runs)),
                costs.get(phase),
                ceilings,
                timed_pass_s.get(phase),
                profiled.pairs(phase, cost),
            )
            for phase in ("prefill", "decode")
            if (t := times.get(phase)) is not None and t.passes and t.wall_us > 0
        ]
    except Exception as err:  # noqa: BLE001 - as above: the table, too, must not fail a measured cell
        return Attribution(profiler=name, reason=f"the attribution table failed: {type(err).__name__}: {err}")
    if not phases:
        return Attribution(profiler=name, reason="the profiled repetition recorded no pass")
    return Attribution(profiler=name, phases=phases)
