"""The HTML/PNG report and the markdown summary, from synthetic records (incl. failed and random-weight cells)."""

import shutil

import pytest
from PIL import Image

from factories import make_record, two_runs
from rooflens.reports import plots
from rooflens.reports.changes import changes
from rooflens.reports.changes_page import render_changes_html
from rooflens.reports.html import render_html, render_markdown
from rooflens.results.stat import EngineStat


@pytest.fixture
def records():
    return [
        make_record("hf", 1, 100.0, seed=1, agreement=1.0),
        make_record("hf", 4, 300.0, seed=2, agreement=1.0),
        make_record(
            "fast",
            1,
            160.0,
            seed=3,
            agreement=0.9,
            stats={
                "acceptance_rate": EngineStat(value=0.7, description="t"),
                "accepted_length_hist": EngineStat(value=[3, 4, 3], description="t"),
            },
        ),
        make_record("fast", 4, 0.0, status="failed"),
        make_record("cuda-only", 1, 0.0, status="unavailable"),
        make_record("hf", 1, 50.0, seed=5, weights="random", run_id="run2", experiment="shape-run"),
    ]


def test_plots_have_the_expected_axes(records):
    fig = plots.throughput(records)
    assert [ax.get_title() for ax in fig.axes] == ["decode tokens/s", "prefill tokens/s"]
    assert fig.axes[0].get_ylabel() == "tokens/s (all sequences)"
    assert len(fig.axes[0].patches) == 4  # one bar per successful cell (failed cells are not drawn)
    fig = plots.latency(records)
    assert [ax.get_title() for ax in fig.axes] == ["TTFT (ms)", "TPOT (ms)"]
    fig = plots.quality_vs_speedup(records)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("decode speedup") and "agreement" in ax.get_ylabel()
    xs = sorted(round(float(x), 2) for c in ax.collections for x, _ in c.get_offsets())
    assert xs == pytest.approx([1.0, 1.0, 1.6], abs=0.05)  # fast b1 is 1.6x the hf b1 of the same run
    fig = plots.energy(records)  # nothing measured: a figure that says why
    assert "not measured on this hardware" in fig.axes[0].texts[0].get_text()
    assert "no counter on the test machine" in fig.axes[0].texts[0].get_text()
    fig = plots.energy([make_record("hf", 1, 100.0, tok_per_j=12.5)])
    assert fig.axes[0].get_ylabel() == "generated tokens / J" and fig.axes[0].patches[0].get_height() == 12.5
    ok = next(r for r in records if r.status == "ok" and "acceptance_rate" in r.engine_stats)
    ok.engine_stats["draft_passes"] = EngineStat(value=12)  # a count, not a headline: no panel of its own
    fig = plots.engine_statistics(records)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["acceptance_rate"]
    assert plots.engine_statistics([records[0]]) is None


@pytest.mark.slow
def test_html_report_is_self_contained_and_lists_problems(records, tmp_path):
    path = render_html(records, tmp_path, "demo")
    html = path.read_text()
    assert path == tmp_path / "demo.html"
    for name in ("throughput", "energy", "latency", "roofline", "quality_vs_speedup", "engine_panels", "engine_stats"):
        png = tmp_path / "demo" / f"{name}.png"
        assert png.stat().st_size > 5000
        w, h = Image.open(png).size
        assert w > 300 and h > 150
        assert f'id="fig-{name}"' in html
    assert html.count("data:image/png;base64,") == 7
    assert "http://" not in html and "https://" not in html  # opens from disk with no network
    assert "fast broke" in html and "cuda-only broke" in html  # failed and unavailable cells are listed
    assert "m on Test CPU" in html and "random weights" in html
    assert "1.60" in html  # speedup of fast over hf in the same run


def test_markdown_summary(records):
    md = render_markdown(records)
    assert md.startswith("### m on Test CPU")
    header = next(line for line in md.splitlines() if line.startswith("| engine"))
    assert "decode tok/s" in header and "speedup x" in header and "agreement %" in header
    assert "| fast | 1 |" in md and "failed: fast broke" in md


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None or shutil.which("chromedriver") is None,
    reason="Chromium/chromedriver not installed (Debian packages chromium, chromium-driver; .ci/run installs them)",
)
def test_report_renders_in_headless_chromium(records, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
    from selenium.webdriver.chrome.service import Service

    path = render_html(records, tmp_path, "demo")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(path.as_uri())
        rows = driver.execute_script("return document.querySelectorAll('table.summary tbody tr').length")
        assert rows == len(records)
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
        assert len(images) == 7 and all(ok and w > 300 and h > 150 for ok, w, h in images)
        # sorting by a numeric column works (click the decode header twice: descending)
        header = driver.execute_script(
            "return Array.from(document.querySelectorAll('table.summary th')).findIndex(t => t.textContent.startsWith('decode'))"
        )
        th = driver.find_elements("css selector", "table.summary th")[header]
        th.click()
        th.click()
        first = driver.execute_script(
            f"return document.querySelector('table.summary tbody tr').cells[{header}].textContent"
        )
        assert first == "300.0" or float(first) >= 160.0
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        # the two-folder page: one row per cell and metric, sortable by the change
        driver.get(render_changes_html(changes(*two_runs()), tmp_path, "a-vs-b").as_uri())
        assert driver.execute_script("return document.querySelectorAll('#changes tbody tr.regression').length") == 3
        col = driver.execute_script(
            "return Array.from(document.querySelectorAll('#changes th')).findIndex(t => t.textContent === 'change %')"
        )
        driver.find_elements("css selector", "#changes th")[col].click()  # ascending: the largest drop first
        first = driver.execute_script(f"return document.querySelector('#changes tbody tr').cells[{col}].textContent")
        assert first == "-18.8%"
        assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
    finally:
        driver.quit()


def test_quality_plot_uses_rouge_l_and_joins_uniform_cells():
    from rooflens.reports.plots import quality_vs_speedup
    from rooflens.results.record import Quantity

    recs = [
        make_record("hf", 1, 100.0, seed=1, agreement=1.0),
        make_record("u8", 1, 130.0, seed=2, agreement=0.1),
        make_record("u4", 1, 180.0, seed=3, agreement=0.03),
        make_record("pmpd", 1, 160.0, seed=4, agreement=0.1),
    ]
    for r, rl, ladder in zip(recs, (1.0, 0.6, 0.3, 0.5), (None, [8], [4], [8, 4])):
        r.quality.rouge_l = Quantity(value=rl, unit="fraction", source="measured", how="t")
        if ladder:
            r.cell.engine = "mixed_precision"
            r.engine_stats["ladder"] = EngineStat(value=ladder)
    ax = quality_vs_speedup(recs).axes[0]
    assert "ROUGE-L" in ax.get_ylabel()
    lines = [ln for ln in ax.get_lines() if ln.get_label() == "uniform quantization (per batch size)"]
    assert len(lines) == 1 and list(lines[0].get_ydata()) == [60.0, 30.0]  # u8 then u4, by speedup
    # a uniform cell at another batch size is joined with its own batch's cells only
    b4 = [make_record("hf", 4, 200.0, seed=5, agreement=1.0), make_record("u8", 4, 300.0, seed=6, agreement=0.1)]
    b4.append(make_record("u4", 4, 380.0, seed=7, agreement=0.03))
    for r, rl, ladder in zip(b4, (1.0, 0.7, 0.2), (None, [8], [4])):
        r.quality.rouge_l = Quantity(value=rl, unit="fraction", source="measured", how="t")
        if ladder:
            r.cell.engine = "mixed_precision"
            r.engine_stats["ladder"] = EngineStat(value=ladder)
    ax = quality_vs_speedup(recs + b4).axes[0]
    dotted = sorted(list(ln.get_ydata()) for ln in ax.get_lines() if ln.get_linestyle() == ":")
    assert dotted == [[60.0, 30.0], [70.0, 20.0]]


def _with_task(record, rouge_vs_ref, rouge_vs_base=None):
    from rooflens.results.record import TaskQuality, TaskScore

    def scores(v):
        return {m: TaskScore(mean=v, low=v, high=v) for m in ("rouge_l", "token_f1", "exact_match")}

    record.quality.task = TaskQuality(
        prompt_set="summaries",
        how="t",
        items=[],
        prompt_tokens={"p10": 1.0, "p50": 2.0, "p90": 3.0},
        vs_reference=scores(rouge_vs_ref),
        vs_baseline=scores(rouge_vs_base) if rouge_vs_base is not None else None,
    )
    return record


def test_task_quality_has_its_own_pareto_plot_and_table_columns():
    from rooflens.reports.plots import task_quality_vs_speedup
    from rooflens.reports.table import cell_row, table_notes

    recs = [make_record("hf", 1, 100.0, seed=1, agreement=1.0), make_record("u4", 1, 180.0, seed=2, agreement=0.3)]
    assert task_quality_vs_speedup(recs) is None  # no cell answered a task: no plot
    _with_task(recs[0], 0.40)
    _with_task(recs[1], 0.35, rouge_vs_base=0.7)
    ax = task_quality_vs_speedup(recs).axes[0]
    assert "reference answers" in ax.get_ylabel() and ax.get_title().startswith("task quality vs speedup")
    ys = sorted(float(c.get_offsets()[0][1]) for c in ax.collections)
    assert ys == pytest.approx([35.0, 40.0])
    row = cell_row(recs[1], recs)
    assert row["task_rouge_l"] == 0.35 and row["task_rouge_l_base"] == 0.7
    assert cell_row(recs[0], recs)["task_rouge_l_base"] is None
    assert any(n.startswith("task ROUGE-L:") and "summaries" in n for n in table_notes(recs))
