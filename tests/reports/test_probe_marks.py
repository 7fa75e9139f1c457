"""`rooflens show` marks roofline efficiencies computed against a probe that no longer validates."""

from __future__ import annotations

from rich.console import Console

from factories import make_record, placed_record
from rooflens.reports.html import render_markdown
from rooflens.reports.summary import summary_table
from rooflens.reports.table import cell_row, probe_notes
from rooflens.results.record import CeilingRef, ProbeRef, Quantity
from rooflens.roofline.probe_rules import ProbeRules, ref_reasons


def _q(value, unit):
    return Quantity(value=value, unit=unit, source="measured", how="test")


def _ref(cv=0.02, age_days=3.0, **kw) -> ProbeRef:
    fields = dict(
        file="test-cpu-t2.json",
        device_name="Test CPU",
        threads=2,
        measured_at="2026-01-01T00:00:00+00:00",
        age_s=age_days * 86400,
        bandwidth_cv=cv,
        peak_flops_cv=0.01,
        bandwidth_median_to_best=0.97,
        peak_flops_median_to_best=0.99,
        valid=True,
        rules=ProbeRules().as_dict(),
    )
    return ProbeRef(**{**fields, **kw})


def measured_record(engine: str, ref: ProbeRef | None, seed: int = 0):
    """A record whose decode efficiency is against measured ceilings from ``ref``'s probe."""
    r = placed_record(make_record(engine, seed=seed), decode_bytes=1e9, tpot=0.05)
    r.roofline.ceilings.append(
        CeilingRef(
            source="measured",
            ref="rooflens hw probe, 2026-01-01T00:00:00+00:00",
            dtype="fp32",
            bandwidth=_q(40e9, "B/s"),
            peak_flops=_q(200e9, "FLOP/s"),
            probe=ref,
        )
    )
    r.roofline.decode.efficiency["measured"] = Quantity(value=0.5, unit="fraction", source="derived", how="t")
    return r


def test_a_probe_that_validates_is_not_marked():
    r = measured_record("hf", _ref())
    assert ref_reasons(r.roofline.ceilings[-1]) == []
    assert cell_row(r, [r])["roofline_probe"] is None and probe_notes([r]) == []


def test_a_probe_above_todays_cv_limit_is_marked_with_why():
    noisy = measured_record("hf", _ref(cv=0.39))
    ok = measured_record("other", _ref(file="other-t2.json"), seed=1)
    records = [noisy, ok]
    assert cell_row(noisy, records)["roofline_probe"] == "invalid"
    assert cell_row(ok, records)["roofline_probe"] is None
    (note,) = probe_notes(records)
    assert note.startswith("probe invalid: the roofline eff. of 1 cell is against test-cpu-t2.json")
    assert "bandwidth: CV 39.0 % > 10.0 %" in note and "`rooflens hw probe` on a quiet machine" in note
    console = Console(width=250, record=True)
    console.print(summary_table(records))
    shown = console.export_text()
    assert "probe" in shown and "invalid" in shown and "bandwidth: CV 39.0 %" in shown
    assert "bandwidth: CV 39.0 %" in render_markdown(records)


def test_old_age_and_old_records_are_marked():
    stale = measured_record("hf", _ref(age_days=200))
    assert ref_reasons(stale.roofline.ceilings[-1]) == ["200 days old (limit 90) at the run"]
    never = measured_record("hf", None)
    assert cell_row(never, [never])["roofline_probe"] == "invalid"
    assert "never judged" in probe_notes([never])[0]


def test_datasheet_efficiencies_are_never_marked():
    r = placed_record(make_record("hf"), decode_bytes=1e9, tpot=0.05)
    r.roofline.decode.efficiency["datasheet"] = Quantity(value=0.5, unit="fraction", source="derived", how="t")
    assert cell_row(r, [r])["roofline_probe"] is None and probe_notes([r]) == []
