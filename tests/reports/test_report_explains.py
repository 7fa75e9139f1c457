"""The explaining parts of the report: roofline moves, the Pareto frontier, per-engine distributions."""

import io
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest

from factories import make_record, placed_record
from rooflens.reports import engine_panels, plots, roofline_chart
from rooflens.reports.moves import phase_moves
from rooflens.reports.pareto import pareto_frontier
from rooflens.results.stat import EngineStat


@pytest.fixture
def placed():
    """A baseline and three techniques at batch 1, the baseline alone at batch 4, and a failed cell."""
    return [
        placed_record(make_record("hf", 1, 100.0, rel_sd=0.0, agreement=1.0), 4e9, 0.010),
        placed_record(make_record("int4", 1, 250.0, rel_sd=0.0, agreement=0.8), 1.2e9, 0.004, bits=4.5),
        placed_record(make_record("spec", 1, 180.0, rel_sd=0.0, agreement=1.0), 1.6e9, 0.0055, tokens_per_pass=2.5),
        placed_record(make_record("ee", 1, 150.0, rel_sd=0.0, agreement=0.95), 2.4e9, 0.0066, layers=18.0),
        placed_record(make_record("hf", 4, 300.0, rel_sd=0.0, agreement=1.0), 4.1e9, 0.012),
        make_record("broken", 1, 0.0, status="failed"),
    ]


# ---------------------------------------------------------------------------- Pareto frontier


def test_pareto_frontier_keeps_exactly_the_undominated_points():
    pts = [(1.0, 1.0), (1.6, 0.9), (1.2, 0.8), (2.5, 0.5), (2.0, 0.4), (1.6, 0.9), (0.9, 1.0)]
    # (1.2, 0.8) loses to (1.6, 0.9); (2.0, 0.4) to (2.5, 0.5); (0.9, 1.0) to (1.0, 1.0); equal points both stay
    assert pareto_frontier(pts) == [0, 1, 5, 3]
    assert pareto_frontier([]) == []
    assert pareto_frontier([(3.0, 0.1)]) == [0]
    # one point better on both axes dominates everything
    assert pareto_frontier([(1, 1), (2, 2), (1.5, 0.5)]) == [1]


def test_quality_plot_joins_the_frontier_and_fades_dominated_engines(placed):
    placed.append(make_record("slow-bad", 1, 90.0, rel_sd=0.0, agreement=0.5))
    ax = plots.quality_vs_speedup(placed).axes[0]
    fronts = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label().startswith("Pareto frontier")}
    assert set(fronts) == {"Pareto frontier b1", "Pareto frontier b4"}  # speedups are over the same batch's hf
    # spec (1.8x, 100%) beats hf b1 (1x, 100%) and ee (1.5x, 95%); int4 (2.5x, 80%) is the fastest
    b1 = fronts["Pareto frontier b1"]
    assert list(b1.get_xdata()) == pytest.approx([1.8, 2.5]) and list(b1.get_ydata()) == pytest.approx([100, 80])
    faded = sorted(round(float(c.get_offsets()[0][0]), 2) for c in ax.collections if c.get_gid() == "dominated")
    assert faded == [0.9, 1.0, 1.5] and all(c.get_alpha() < 1 for c in ax.collections if c.get_gid() == "dominated")
    assert len([c for c in ax.collections if c.get_gid() == "frontier"]) == 3  # spec, int4 and hf b4


# ---------------------------------------------------------------------------- roofline moves


def test_moves_start_at_the_baseline_and_end_at_each_engine(placed):
    moves = {m.engine: m for m in phase_moves(placed)}
    assert set(moves) == {"int4", "spec", "ee"}  # not the baseline itself, not the failed cell, not b4 (no peer)
    base = placed[0].roofline.decode
    for r in placed[1:4]:
        m = moves[r.cell.engine_label]
        assert m.start == (base.intensity.value, base.achieved_flops.value)
        assert m.end == (r.roofline.decode.intensity.value, r.roofline.decode.achieved_flops.value)
        assert (m.workload, m.batch, m.phase) == ("w", 1, "decode")
    assert moves["int4"].reasons[:2] == ("4.5-bit weights", "bytes/tok ×0.30")
    assert moves["spec"].reasons[:2] == ("2.50 tok/pass", "bytes/tok ×0.40")
    assert moves["ee"].reasons[0] == "18.0/30 layers"
    assert moves["int4"].reasons[-1].endswith("× tok/s") and moves["int4"].label().startswith("int4: 4.5-bit")


def _arrows(ax):
    return [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]


@pytest.mark.slow
def test_roofline_chart_draws_one_arrow_per_move_in_its_cell_panel(placed):
    fig = roofline_chart.records_chart(placed)
    overview, *panels = fig.axes
    assert overview.get_title().startswith("every run, both phases") and not _arrows(overview)
    assert len(overview.collections) == 10  # both phases of the five ok runs (b4 included, the failed cell not)
    # batch 4 has no engine besides the baseline: no panel of its own
    assert [ax.get_title() for ax in panels] == ["w, batch 1: where each engine moved the baseline's decode step"]
    moves = phase_moves(placed)
    assert sorted((a.xyann, a.xy) for a in _arrows(panels[0])) == sorted((m.start, m.end) for m in moves)
    legend = [t.get_text() for t in panels[0].get_legend().get_texts()]
    assert legend[0] == "1 hf (baseline)" and "2 int4: 4.5-bit weights; bytes/tok ×0.30; 2.50× tok/s" in legend
    assert "arrows: the baseline's decode point -> each engine's" in fig.get_suptitle()
    tick = panels[0].xaxis.get_major_formatter()(2.0, 0)
    assert tick == "2"  # plain text ticks: the report turns math text off
    with plt.rc_context(plots.PLAIN_TEXT):
        fig.savefig(io.BytesIO(), format="png", dpi=50)  # the layout (legends beside the panels) draws


def test_roofline_chart_of_many_cells_draws_the_first_panels_and_says_so():
    n = roofline_chart.MAX_PANELS + 2
    recs = [
        placed_record(make_record(e, b, v, seed=b), 4e9, 0.01)
        for b in range(1, n + 1)
        for e, v in (("hf", 100), ("q", 150))
    ]
    fig = roofline_chart.records_chart(recs)
    assert len(fig.axes) == 1 + roofline_chart.MAX_PANELS
    assert "2 more workload x batch cell(s) not drawn" in fig.get_suptitle()


# ---------------------------------------------------------------------------- per-engine panels


def _hist_records():
    spec = make_record("spec", 1, 180.0, seed=3)
    spec.engine_stats["accepted_length_hist"] = EngineStat(value=[2, 3, 5], description="t")
    ee = make_record("ee", 1, 150.0, seed=4)
    ee.engine_stats["layers_run_hist"] = EngineStat(value=[0, 1, 0, 3], description="t")
    mp = make_record("mp", 1, 120.0, seed=5)
    mp.engine_stats["bits_by_step"] = EngineStat(value=[8.0, 8.0, 6.0, 4.0], unit="bit", description="t")
    return [make_record("hf", 1, 100.0, seed=1), spec, ee, mp]


def test_engine_panels_appear_only_for_engines_with_the_statistics():
    recs = _hist_records()
    fig = engine_panels.engine_panels(recs)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.split("\n")[0] for t in titles] == [
        "spec: accepted draft tokens per verify pass",
        "ee: decoder layers run per decode step",
        "mp: weight precision over the decode steps",
    ]
    spec_ax, ee_ax, mp_ax = (ax for ax in fig.axes if ax.get_title())
    assert [p.get_height() for p in spec_ax.patches] == pytest.approx([0.2, 0.3, 0.5])  # shares of 10 passes
    assert "mean 1.30" in spec_ax.get_legend().get_texts()[0].get_text()
    assert "mean layers 2.50" in ee_ax.get_legend().get_texts()[0].get_text()
    assert list(mp_ax.get_lines()[0].get_ydata()) == [8.0, 8.0, 6.0, 4.0]
    assert engine_panels.engine_panels(recs[:1]) is None


def test_bits_by_step_is_the_mean_rung_per_decode_step():
    from rooflens.engines.mixed_precision.engine import MixedPrecisionEngine

    runs = [SimpleNamespace(bits=[None, 8, 8, 4]), SimpleNamespace(bits=[8, 8, 4, 4])]
    assert MixedPrecisionEngine._bits_by_step(SimpleNamespace(_runs=runs)) == [8.0, 6.0, 4.0]
    assert MixedPrecisionEngine._bits_by_step(SimpleNamespace(_runs=[])) == []
