"""Per-repetition latency metrics from a generation's token timestamps.

Definitions (vLLM / AIPerf vocabulary):
- TTFT: start of ``generate`` -> first new token available (includes prefill).
- e2e: start -> last new token available.
- TPOT: (e2e - TTFT) / (n - 1), n = new tokens per sequence (excludes the first token).
- ITL: every gap between consecutive emissions, divided by the tokens that emission carried.
- prefill tok/s = batch * prompt_len / TTFT; decode tok/s = batch * (n - 1) / (e2e - TTFT);
  e2e tok/s = batch * n / e2e.
"""

from __future__ import annotations

from dataclasses import dataclass


class TimingError(ValueError):
    """The timestamps cannot describe a valid generation."""


@dataclass(frozen=True)
class RepTiming:
    ttft_s: float
    e2e_s: float
    tpot_s: float
    itl_s: tuple[float, ...]
    prefill_tok_s: float
    decode_tok_s: float
    e2e_tok_s: float
    n_new: int
    batch: int


def rep_timing(
    t_start: float, events: list[tuple[float, int]], *, batch: int, prompt_len: int, n_new: int
) -> RepTiming:
    """Metrics of one repetition. ``events``: (timestamp, new tokens per sequence) per emission."""
    if n_new < 2:
        raise TimingError(f"need at least 2 new tokens to separate prefill from decode (got {n_new})")
    if not events:
        raise TimingError("the engine reported no token timestamps")
    counted = sum(n for _, n in events)
    if counted != n_new:
        raise TimingError(f"the engine reported {counted} tokens per sequence, expected exactly {n_new}")
    times = [t for t, _ in events]
    if any(b < a for a, b in zip([t_start, *times], times)):
        raise TimingError("token timestamps are not monotonic")
    t_first, t_last = times[0], times[-1]
    ttft = t_first - t_start
    e2e = t_last - t_start
    decode = e2e - ttft
    first_n = events[0][1]
    if ttft <= 0 or decode <= 0:
        raise TimingError(f"non-positive phase duration (TTFT {ttft:.3g} s, decode {decode:.3g} s)")
    itl = tuple((b - a) / n for (a, _), (b, n) in zip(events, events[1:]))
    # A speculative engine may emit several tokens with the first one; they are decode tokens
    # produced inside the TTFT window, so decode throughput counts only the tokens after it.
    return RepTiming(
        ttft_s=ttft,
        e2e_s=e2e,
        tpot_s=decode / (n_new - 1),
        itl_s=itl,
        prefill_tok_s=batch * prompt_len / ttft,
        decode_tok_s=batch * (n_new - first_n) / decode,
        e2e_tok_s=batch * n_new / e2e,
        n_new=n_new,
        batch=batch,
    )
