"""The attribution in a report: families add up, the lever sentence names the biggest share, the model-error
sentence quotes the rows, the figures draw, `rooflens show --ops` prints the table."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from factories import TEST_CEILING, make_record, placed_record, small_shape
from rooflens.reports.attribution import attribution_sentences, attribution_table, family_shares
from rooflens.reports.attribution_charts import operator_rooflines, time_split
from rooflens.results.record import Record
from rooflens.results.store import write_record
from rooflens.roofline.analytic import decode_cost, prefill_cost
from rooflens.roofline.op_classes import ProfiledPhase, phase_attribution


def attributed(engine: str, inside: dict[str, float], wall: float, engine_classes=frozenset(), batch=1) -> Record:
    """A record whose decode (and prefill) passes were split as ``inside`` (seconds per pass) in ``wall``."""
    from rooflens.results.record import Attribution

    r = placed_record(make_record(engine, batch=batch), 1e8, 0.01)
    shape = small_shape()
    profiled = ProfiledPhase(1, wall, 0.0, inside, {k: 1 for k in inside}, frozenset(engine_classes))
    phases = [
        phase_attribution(phase, profiled, cost, [TEST_CEILING], wall * 0.95)
        for phase, cost in (
            ("prefill", prefill_cost(shape, batch=batch, prompt_len=16)),
            ("decode", decode_cost(shape, batch=batch, context_len=20)),
        )
    ]
    r.attribution = Attribution(profiler="test", phases=phases)
    return r


def test_family_shares_add_up_and_group_the_classes():
    r = attributed("hf", {"q_proj": 0.002, "down_proj": 0.003, "attention": 0.001, "lm_head": 0.001}, 0.01)
    decode = r.attribution.phases[1]
    shares = family_shares(decode)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["linear layers"] == pytest.approx(0.5)
    assert shares["outside operators"] == pytest.approx(0.3)


def test_lever_sentence_names_the_biggest_share():
    outside = attributed("hf", {"q_proj": 0.001, "lm_head": 0.001}, 0.01)
    gemms = attributed("int4", {"q_proj": 0.004, "down_proj": 0.004}, 0.01)
    draft = attributed("spec", {"draft": 0.006, "q_proj": 0.001}, 0.01, engine_classes={"draft"})
    text = " ".join(attribution_sentences([outside, gemms, draft]))
    assert "80% of hf's decode pass (batch 1) is outside operators" in text
    assert "80% of int4's decode pass (batch 1) is in linear layers" in text
    assert "60% of spec's decode pass (batch 1) is the engine's own draft" in text
    assert "took +5% (median) against the timed ones" in text  # the profiled pass: 0.01 against 0.0095
    assert "within 5.3% (median over cells; worst 5.3%) of the timed one" in text  # nothing removed here


def test_the_check_sentence_says_when_it_compares_pairs():
    r = attributed("hf", {"q_proj": 0.002, "lm_head": 0.001}, 0.01)
    prefill = r.attribution.phases[0]
    prefill.agreement_pairs = [[0.0099, 0.01], [0.0101, 0.01], [0.01, 0.01]]
    prefill.agreement.value = 0.0
    text = " ".join(attribution_sentences([r]))
    assert "within 0.0% (median over cells; worst 0.0%) of a bare prefill run just before it" in text


def test_model_error_sentence_quotes_predicted_over_measured():
    r = attributed("hf", {"q_proj": 0.002, "lm_head": 0.001}, 0.01)
    decode = r.attribution.phases[1]
    rows = {row.name: row for row in decode.rows}
    lm = rows["lm_head"].predicted_to_measured["datasheet"].value
    text = " ".join(attribution_sentences([r]))
    assert f"LM head {lm:.1%}" in text if lm < 0.1 else f"LM head {lm:.0%}" in text


def test_figures_draw_with_and_without_attribution():
    rs = [
        attributed("hf", {"q_proj": 0.002, "attention": 0.001}, 0.01),
        attributed("spec", {"draft": 0.004}, 0.01, engine_classes={"draft"}),
    ]
    assert time_split(rs) is not None
    assert operator_rooflines(rs) is not None
    assert time_split([make_record("hf")]) is None
    assert operator_rooflines([make_record("hf")]) is None


def test_attribution_table_has_a_row_per_class():
    r = attributed("hf", {"q_proj": 0.002, "kv_cache": 0.001}, 0.01)
    table = attribution_table(r.attribution.phases[1], "t")
    assert table.row_count == 3  # q_proj, kv_cache, outside operators
    assert "1 pass(es) profiled" in str(table.caption)


def test_show_ops_prints_the_tables(tmp_path):
    from rooflens.cli import app

    write_record(tmp_path / "run", attributed("hf", {"q_proj": 0.002}, 0.01))
    write_record(tmp_path / "run", make_record("int8"))
    out = CliRunner().invoke(app, ["show", str(tmp_path), "--ops"])
    assert out.exit_code == 0, out.output
    assert "hf w batch 1, decode (per pass)" in out.output
    assert "int8 w batch 1: no attribution in this record" in out.output
