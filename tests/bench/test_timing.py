"""TTFT / TPOT / ITL arithmetic against hand-made timestamps."""

import pytest

from rooflens.bench.timing import TimingError, rep_timing
from rooflens.results.stats import percentile, summarize


def test_hand_made_timestamps():
    # start at 10.0; first token after 0.5 s (prefill); then 4 more tokens 0.1 s apart
    events = [(10.5, 1), (10.6, 1), (10.7, 1), (10.8, 1), (10.9, 1)]
    t = rep_timing(10.0, events, batch=2, prompt_len=100, n_new=5)
    assert t.ttft_s == pytest.approx(0.5)
    assert t.e2e_s == pytest.approx(0.9)
    assert t.tpot_s == pytest.approx(0.1)  # (0.9 - 0.5) / (5 - 1)
    assert t.itl_s == pytest.approx((0.1, 0.1, 0.1, 0.1))
    assert t.prefill_tok_s == pytest.approx(2 * 100 / 0.5)
    assert t.decode_tok_s == pytest.approx(2 * 4 / 0.4)
    assert t.e2e_tok_s == pytest.approx(2 * 5 / 0.9)


def test_uneven_gaps_and_multi_token_emissions():
    # a speculative-style engine: first token, then 3 tokens at once, then 1
    events = [(1.2, 1), (1.5, 3), (1.6, 1)]
    t = rep_timing(1.0, events, batch=1, prompt_len=10, n_new=5)
    assert t.ttft_s == pytest.approx(0.2)
    assert t.tpot_s == pytest.approx((0.6 - 0.2) / 4)
    assert t.itl_s == pytest.approx((0.1, 0.1))  # 0.3 s for 3 tokens, then 0.1 s for 1
    assert t.decode_tok_s == pytest.approx(4 / 0.4)


def test_tokens_emitted_with_the_first_are_not_decode_tokens():
    # 2 tokens arrive with the first emission: the decode window (0.2 s, 0.5 s] made the other 3
    t = rep_timing(1.0, [(1.2, 2), (1.5, 3)], batch=2, prompt_len=10, n_new=5)
    assert t.tpot_s == pytest.approx(0.3 / 3)
    assert t.decode_tok_s == pytest.approx(2 * 3 / 0.3)
    assert t.decode_tok_s == pytest.approx(t.batch / t.tpot_s)  # the README's identity


@pytest.mark.parametrize(
    "events, n_new, match",
    [
        ([], 3, "no token timestamps"),
        ([(1.1, 1), (1.2, 1)], 3, "reported 2 tokens per sequence, expected exactly 3"),
        ([(1.1, 1), (1.05, 1), (1.2, 1)], 3, "not monotonic"),
        ([(1.1, 1)], 1, "at least 2 new tokens"),
        ([(1.0, 1), (1.0, 1)], 2, "non-positive phase duration"),
    ],
)
def test_invalid_timestamps(events, n_new, match):
    with pytest.raises(TimingError, match=match):
        rep_timing(1.0, events, batch=1, prompt_len=4, n_new=n_new)


def test_summary_statistics():
    s = summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s["n"] == 5 and s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0
    assert s["mean"] == pytest.approx(3.0)
    assert s["std"] == pytest.approx(1.5811388, rel=1e-6)  # sample std
    assert s["cv"] == pytest.approx(1.5811388 / 3.0, rel=1e-6)
    assert s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(4.6)
    one = summarize([7.0])
    assert one["std"] == 0.0 and one["median"] == one["p10"] == one["p90"] == 7.0
    assert percentile([0.0, 10.0], 25) == pytest.approx(2.5)
