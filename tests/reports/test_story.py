"""The summary's closing sentences, checked against hand-built records with known figures."""

import pytest

from factories import judged, make_record, placed_record
from rooflens.reports.story import story
from rooflens.results.record import EnergyResult, Quantity


def _run():
    return [
        placed_record(make_record("hf", 1, 100.0, rel_sd=0.0, agreement=1.0), 4e9, 0.010),
        placed_record(make_record("int4", 1, 250.0, rel_sd=0.0, agreement=0.6), 1.2e9, 0.004, bits=4.5),
        placed_record(make_record("spec", 1, 180.0, rel_sd=0.0, agreement=1.0), 1.6e9, 0.0055, tokens_per_pass=2.5),
        placed_record(make_record("ee", 1, 90.0, rel_sd=0.0, agreement=0.9), 2.4e9, 0.0111, layers=18.0),
        placed_record(make_record("hf", 4, 300.0, rel_sd=0.0, agreement=1.0), 4.1e9, 0.012),
        placed_record(make_record("int4", 4, 270.0, rel_sd=0.0, agreement=0.6), 1.3e9, 0.013, bits=4.5),
        make_record("broken", 1, 0.0, status="failed"),
    ]


def test_fastest_engine_per_batch_with_its_speedup():
    lines = story(_run())
    assert "Fastest at batch 1: int4, 250.0 decode tok/s, 2.50x the baseline hf (100.0 tok/s)." in lines
    assert "No engine beat the baseline hf at batch 4 (300.0 decode tok/s); int4 came closest at 0.90x." in lines


def test_closest_to_roofline_is_the_highest_decode_efficiency():
    records = _run()
    for r, eff in zip(records[:3], (0.30, 0.55, 0.40)):  # hf, int4, spec at batch 1; the others have none
        decode = r.roofline.decode
        decode.efficiency["datasheet"] = Quantity(value=eff, unit="", source="derived", how="test")
        decode.bound["datasheet"] = "memory"
    line = next(s for s in story(records) if s.startswith("Closest to the roofline"))
    assert line == (
        "Closest to the roofline: int4 at batch 1, decoding at 55% of the rate the datasheet ceilings allow "
        "(memory-bound at 1.7 FLOP/byte)."  # 2 GFLOP over 1.2 GB per token
    )


def test_best_quality_for_its_speed_prefers_the_lossless_faster_engine():
    lines = story(_run())
    # spec (1.8x, agreement 100%) and int4 (2.5x, 60%) are both on the frontier; ee is slower than hf
    assert (
        "Best quality for its speed: spec at batch 1, 1.80x with token agreement 100% against the baseline's output."
        in lines
    )
    assert "Going faster costs quality: int4 reaches 2.50x with token agreement 60%." in lines
    assert not any("ee" in s.split(":")[1][:4] for s in lines if s.startswith("Best"))


def test_a_speedup_within_the_spread_is_no_winner():
    records = [make_record("hf", 1, 100.0, rel_sd=0.05), make_record("static", 1, 102.0, rel_sd=0.05)]
    line = story(records)[0]
    assert line.startswith("No clear winner at batch 1: the best, static, is 1.0")
    assert "within the run-to-run spread (CV " in line


def test_what_could_not_be_measured_says_why():
    records = _run()
    records[0].energy = EnergyResult(measured=False, meter="none", reason="no power sensor on this CPU")
    lines = story(records)
    assert "broken at batch 1 is failed: broken broke." in lines
    assert "Tokens per joule were not measured: no power sensor on this CPU." in lines


def test_no_sentence_without_figures():
    assert story([make_record("broken", 1, 0.0, status="failed")]) == ["broken at batch 1 is failed: broken broke."]


@pytest.mark.slow
def test_html_and_markdown_reports_carry_the_sentences(tmp_path):
    from rooflens.reports.html import render_html, render_markdown

    records = _run()
    first = story(records)[0]
    assert f"- {first}" in render_markdown(records)
    assert f"<li>{first}</li>" in render_html(records, tmp_path, "r").read_text()


def test_cells_that_fail_for_the_same_reason_share_one_sentence():
    records = [make_record("hf", 1, 100.0), make_record("a", 4, 0.0, status="failed")]
    records.append(make_record("b", 4, 0.0, status="failed"))
    records[2].reason = records[1].reason
    assert "a at batch 4, b at batch 4 are failed: a broke." in story(records)


def test_a_run_without_ceilings_says_how_to_get_them():
    record = placed_record(make_record("hf", 1, 100.0), 4e9, 0.010)
    record.roofline.ceilings = []
    assert story([record])[-1] == (
        "No roofline efficiency: Test CPU has no datasheet ceilings and no probe yet (`rooflens hw probe` "
        "measures them, or `probe: auto` in the experiment)."
    )


def test_an_invalid_cell_is_never_ranked_and_the_sentence_says_why():
    records = _run()
    judged(records[1], "cv 14% > 10%")  # int4 at batch 1 was the fastest
    lines = story(records)
    assert not any(line.startswith("Fastest at batch 1: int4") for line in lines)
    assert (
        "Fastest at batch 1 (of the valid cells): spec, 180.0 decode tok/s, 1.80x the baseline hf (100.0 tok/s)."
        in lines
    )
    assert "Not ranked, measurement invalid: int4 at batch 1 (cv 14% > 10%)." in lines
    assert not any(
        "Closest to the roofline: int4" in line or "Best quality for its speed: int4" in line for line in lines
    )


def test_no_speedup_is_ranked_against_an_invalid_baseline():
    records = _run()
    judged(records[0], "load 3.2 at end > 3.0 (2 own + 0.5 x 2 cores)")  # hf at batch 1, the baseline
    lines = story(records)
    assert not any(line.startswith(("Fastest at batch 1", "No clear winner at batch 1")) for line in lines)
    assert "Not ranked, measurement invalid: hf at batch 1 (load 3.2 at end > 3.0 (2 own + 0.5 x 2 cores))." in lines


def test_a_run_whose_automatic_probe_was_refused_says_so():
    record = placed_record(make_record("hf", 1, 100.0), 4e9, 0.010)
    record.roofline.ceilings = []
    record.roofline.probe_note = "the automatic probe was refused (attempt 1: invalid (bandwidth: CV 39.0 % > 10.0 %))"
    assert story([record])[-1] == (
        "No roofline efficiency: Test CPU has no datasheet ceilings and the automatic probe was refused as noisy "
        "(each record's roofline.probe_note says why; `rooflens hw probe` on a quiet machine measures them)."
    )
