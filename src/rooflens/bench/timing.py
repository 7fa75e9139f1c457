"""Per-repetition latency metrics from a generation's token timestamps.

Definitions (vLLM / AIPerf vocabulary):
- TTFT: start of ``generate`` -> first new token available (includes prefill).
- e2e: start -> last new token available.
- n = new tokens per sequence; n1 = tokens of the first emission (1 for an engine that emits one
  token at a time; a speculative engine may emit several with the first). The decode window
  (TTFT, e2e] produces the other n - n1 tokens.
- TPOT: (e2e - TTFT) / (n - n1).
- ITL: every gap between consecutive emissions, divided by the tokens that emission carried.
- prefill tok/s = batch * prompt_len / TTFT; decode tok/s = batch * (n - n1) / (e2e - TTFT)
  = batch / TPOT; e2e tok/s = batch * n / e2e.
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
    decode_tokens = n_new - first_n  # tokens emitted with the first one were made inside the TTFT window
    return RepTiming(
        ttft_s=ttft,
        e2e_s=e2e,
        tpot_s=decode / decode_tokens,
        itl_s=itl,
        prefill_tok_s=batch * prompt_len / ttft,
        decode_tok_s=batch * decode_tokens / decode,
        e2e_tok_s=batch * n_new / e2e,
        n_new=n_new,
        batch=batch,
    )
