"""PNG plots of a set of records (matplotlib, Agg). Each function returns the figure it drew."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rooflens.reports.pareto import pareto_frontier  # noqa: E402
from rooflens.results.derived import speedup  # noqa: E402
from rooflens.results.record import Record  # noqa: E402

COLORS = plt.get_cmap("tab10").colors
# Labels and titles carry user text (engine labels, model ids): '$...$' in them is text, not math.
PLAIN_TEXT = {"text.parse_math": False}


def engine_colors(records: list[Record]) -> dict[str, tuple]:
    labels = list(dict.fromkeys(r.cell.engine_label for r in records))
    return {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}


def _message_figure(title: str, message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 2.2))
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11)
    ax.set_axis_off()
    return fig


def _ok(records: list[Record]) -> list[Record]:
    return [r for r in records if r.status == "ok"]


def _cell_name(r: Record) -> str:
    return f"{r.cell.workload} b{r.cell.batch_size}"


def throughput(records: list[Record]) -> Figure:
    """Decode and prefill tokens/s per engine and cell, with p10-p90 error bars."""
    ok = _ok(records)
    if not ok:
        return _message_figure("tokens/s", "no successful cells")
    colors = engine_colors(ok)
    cells = list(dict.fromkeys(_cell_name(r) for r in ok))
    engines = list(colors)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(cells) * 2), 4.2))
    width = 0.8 / len(engines)
    for ax, metric, title in (
        (axes[0], "decode_tok_s", "decode tokens/s"),
        (axes[1], "prefill_tok_s", "prefill tokens/s"),
    ):
        for j, eng in enumerate(engines):
            xs, ys, lo, hi = [], [], [], []
            for r in ok:
                if r.cell.engine_label != eng:
                    continue
                m = r.metrics[metric]
                xs.append(cells.index(_cell_name(r)) + (j - (len(engines) - 1) / 2) * width)
                ys.append(m.median)
                lo.append(m.median - m.p10)
                hi.append(m.p90 - m.median)
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=colors[eng], label=eng)
        ax.set_xticks(range(len(cells)), cells, rotation=20)
        ax.set_ylabel("tokens/s (all sequences)")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("throughput: median, bars p10-p90 over repetitions", fontsize=10)
    fig.tight_layout()
    return fig


def energy(records: list[Record]) -> Figure:
    """Tokens per joule per engine, or why it was not measured."""
    ok = _ok(records)
    measured = [r for r in ok if r.energy and r.energy.tokens_per_joule and r.energy.tokens_per_joule.value]
    if not measured:
        reasons = sorted({r.energy.reason for r in ok if r.energy and r.energy.reason}) or ["no successful cells"]
        return _message_figure("tokens/J", "not measured on this hardware:\n" + "\n".join(reasons))
    colors = engine_colors(measured)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(measured)), 4))
    names = [f"{r.cell.engine_label}\n{_cell_name(r)}" for r in measured]
    ax.bar(
        range(len(measured)),
        [r.energy.tokens_per_joule.value for r in measured],
        color=[colors[r.cell.engine_label] for r in measured],
    )
    ax.set_xticks(range(len(measured)), names, fontsize=8)
    ax.set_ylabel("generated tokens / J")
    ax.set_title("energy efficiency (" + ", ".join(sorted({r.energy.meter for r in measured})) + ")")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def latency(records: list[Record]) -> Figure:
    """TTFT and TPOT distributions over repetitions (box plots)."""
    ok = _ok(records)
    if not ok:
        return _message_figure("latency", "no successful cells")
    colors = engine_colors(ok)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(ok) * 2), 4.2))
    labels = [f"{r.cell.engine_label}\n{_cell_name(r)}" for r in ok]
    for ax, metric, title in ((axes[0], "ttft_s", "TTFT (ms)"), (axes[1], "tpot_s", "TPOT (ms)")):
        data = [[1e3 * v for v in r.metrics[metric].samples] for r in ok]
        box = ax.boxplot(data, patch_artist=True, widths=0.6)
        for patch, r in zip(box["boxes"], ok):
            patch.set_facecolor(colors[r.cell.engine_label])
            patch.set_alpha(0.6)
        ax.set_xticks(range(1, len(ok) + 1), labels, fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _is_uniform(r: Record) -> bool:
    """A uniformly quantized cell: the quantized engine, or mixed precision with a one-rung ladder."""
    if r.cell.engine == "quantized":
        return True
    ladder = r.engine_stats.get("ladder")
    return (
        r.cell.engine == "mixed_precision"
        and ladder is not None
        and isinstance(ladder.value, list)
        and len(ladder.value) == 1
    )


FRONTIER_STYLES = ("-", "--", "-.", (0, (1, 1)))


def _draw_frontiers(ax: Axes, points: list[tuple[Record, float, float]]) -> set[int]:
    """Join each batch size's Pareto frontier (speedups are over the same batch's baseline); return its members."""
    batches = sorted({r.cell.batch_size for r, _, _ in points})
    members: set[int] = set()
    for k, batch in enumerate(batches):
        idx = [i for i, (r, _, _) in enumerate(points) if r.cell.batch_size == batch]
        front = [idx[j] for j in pareto_frontier([(points[i][1], points[i][2]) for i in idx])]
        members.update(front)
        ax.plot(
            [points[i][1] for i in front],
            [100 * points[i][2] for i in front],
            color="black",
            lw=1.2,
            ls=FRONTIER_STYLES[k % len(FRONTIER_STYLES)],
            alpha=0.7,
            zorder=2,
            label="Pareto frontier" + (f" b{batch}" if len(batches) > 1 else ""),
        )
    return members


def quality_vs_speedup(records: list[Record]) -> Figure:
    """The Pareto view: decode speedup over the baseline against output quality vs the baseline's greedy tokens.

    Quality is ROUGE-L when every cell has it (one early difference does not zero the rest), else the
    position-wise agreement. Each batch size's Pareto frontier (no other engine both faster and better) is
    joined and its points outlined; dominated points are faded. Uniformly quantized cells are joined by a
    dotted line: mixed-precision points above it reach what no uniform precision does.
    """
    ok = _ok(records)
    use_rouge = bool(ok) and all(r.quality and r.quality.rouge_l for r in ok if r.quality and r.quality.agreement)

    def value(r: Record) -> float | None:
        q = r.quality.rouge_l if use_rouge and r.quality else (r.quality.agreement if r.quality else None)
        return q.value if q is not None else None

    ylabel = (
        "ROUGE-L vs the baseline's greedy tokens (%)" if use_rouge else "greedy token agreement with the baseline (%)"
    )
    return _pareto(records, ok, value, ylabel, "quality vs speedup") or _message_figure(
        "quality vs speedup",
        "no cell has both a speedup over the baseline and a quality figure\n"
        "(random-weight models and runs without quality metrics have none)",
    )


def task_quality_vs_speedup(records: list[Record]) -> Figure | None:
    """The Pareto view on the task: ROUGE-L of each engine's answers against the prompt set's reference answers
    (``quality.task``); None when no cell answered a task."""
    ok = [r for r in _ok(records) if r.quality and r.quality.task]
    if not ok:
        return None
    ylabel = "task ROUGE-L vs the reference answers (%)"
    return _pareto(
        records, ok, lambda r: r.quality.task.vs_reference["rouge_l"].mean, ylabel, "task quality vs speedup"
    )


def _pareto(
    records: list[Record], ok: list[Record], value: Callable[[Record], float | None], ylabel: str, title: str
) -> Figure | None:
    """Speedup against ``value`` per engine and batch size, with the Pareto frontiers (None: no point)."""
    points = []
    for r in ok:
        s, q = speedup(r, records), value(r)
        if s is not None and q is not None:
            points.append((r, s, q))
    if not points:
        return None
    # one point per engine and batch size: the mean over the run's workloads (prompts)
    groups: dict[tuple[str, int], list[tuple[Record, float, float]]] = defaultdict(list)
    for p in points:
        groups[(p[0].cell.engine_label, p[0].cell.batch_size)].append(p)
    n_workloads = max(len(g) for g in groups.values())
    points = [(g[0][0], sum(p[1] for p in g) / len(g), sum(p[2] for p in g) / len(g)) for g in groups.values()]
    colors = engine_colors([p[0] for p in points])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    labelled = False
    for batch in sorted({r.cell.batch_size for r, _, _ in points}):  # speedups compare within a batch size only
        uniform = sorted((s, q) for r, s, q in points if _is_uniform(r) and r.cell.batch_size == batch)
        if len(uniform) >= 2:
            ax.plot(
                [u[0] for u in uniform],
                [100 * u[1] for u in uniform],
                color="gray",
                lw=1,
                ls=":",
                label=None if labelled else "uniform quantization (per batch size)",
            )
            labelled = True
    on_frontier = _draw_frontiers(ax, points)
    for i, (r, s, q) in enumerate(points):
        best = i in on_frontier
        ax.scatter(
            s,
            100 * q,
            color=colors[r.cell.engine_label],
            s=70 if best else 40,
            alpha=1.0 if best else 0.3,
            edgecolor="black" if best else "none",
            linewidth=0.8,
            zorder=3 if best else 2,
            gid="frontier" if best else "dominated",
        )
        ax.annotate(
            f"{r.cell.engine_label} b{r.cell.batch_size}",
            (s, 100 * q),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
            color="black" if best else "gray",
        )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower left")
    ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("decode speedup over the baseline (same run)")
    ax.set_ylabel(ylabel)
    mean = f", mean over {n_workloads} workloads" if n_workloads > 1 else ""
    ax.set_title(f"{title} (up and right is better; faded: dominated{mean})", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


HEADLINE_STATS = (
    # speculative
    "acceptance_rate",
    "tokens_per_target_pass",
    "draft_time_fraction",
    # early exit
    "layers_executed_per_token",
    "exit_rate",
    "audit_exit_precision",
    "oracle_speedup_bound",
    "time_layers_fraction",
    # mixed precision
    "mean_decode_bits",
    "mean_first_switch_step",
    # quantized
    "bits_per_weight_quantized",
    "compression",
    "weight_read_bytes_per_step",
)
"""The statistics that explain an engine's speed, drawn side by side; every other one is in the records."""


def engine_statistics(records: list[Record]) -> Figure | None:
    """The headline engine statistics (:data:`HEADLINE_STATS`), one panel per statistic. A run of five
    engines carries some eighty numeric statistics: one panel each would bury the ones that explain."""
    by_stat: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for r in _ok(records):
        for name, s in r.engine_stats.items():
            if name in HEADLINE_STATS and isinstance(s.value, (int, float)) and not isinstance(s.value, bool):
                by_stat[name].append((f"{r.cell.engine_label}\n{_cell_name(r)}", float(s.value)))
    if not by_stat:
        return None
    n = len(by_stat)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, values) in zip(axes.flat, sorted(by_stat.items())):
        ax.bar(range(len(values)), [v for _, v in values], color=COLORS[0])
        ax.set_xticks(range(len(values)), [k for k, _ in values], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig
