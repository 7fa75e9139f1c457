"""A cell's measurement as parts of its record: latency and throughput metrics, energy, peak memory."""

from __future__ import annotations

from rooflens.bench.energy import EnergyReading
from rooflens.bench.memory import MemoryPeak
from rooflens.bench.timing import RepTiming
from rooflens.results.record import EnergyResult, MemoryResult, Metric, Quantity
from rooflens.results.stats import summarize

MAX_SAMPLES = 10000


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


def energy_of(
    reading: EnergyReading, tokens: int, reps: int, window: str = "the window of all measured repetitions"
) -> EnergyResult:
    if reading.joules is None:
        return EnergyResult(
            measured=False, meter=reading.meter, domain=reading.domain, reason=reading.reason, window_s=reading.seconds
        )
    how = f"{reading.meter} over {window} ({reading.domain})"
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


def memory_of(mem: MemoryPeak) -> MemoryResult:
    return MemoryResult(
        kind=mem.kind,
        peak_bytes=Quantity(value=mem.peak_bytes, unit="B", source="measured", how=mem.how),
        baseline_bytes=Quantity(
            value=mem.baseline_bytes, unit="B", source="measured", how="at the start of the measured window"
        ),
        how=mem.how,
    )
