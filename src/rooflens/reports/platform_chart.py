"""The platform comparison of `rooflens roofline MODEL --hw all`: a rich table and a two-panel PNG.

Modelled numbers (bars) and measured records (markers) share the axes but never a mark: a reader must be able
to tell at a glance which tokens/s came from a datasheet and which from a clock. matplotlib is imported only by
:func:`draw`, so printing the table stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from rooflens.roofline.platforms import BANDWIDTH_ONLY, CLASSES, NO_CEILINGS, MeasuredPoint, PlatformRow

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["draw", "measured_table", "platform_table"]


def _batches(rows: Sequence[PlatformRow]) -> list[int]:
    return list(dict.fromkeys(r.batch for r in rows))


def _by_profile(rows: Sequence[PlatformRow]) -> dict[str, dict[int, PlatformRow]]:
    out: dict[str, dict[int, PlatformRow]] = {}
    for r in rows:
        out.setdefault(r.profile, {})[r.batch] = r
    return out


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def platform_table(rows: Sequence[PlatformRow], title: str) -> Table:
    """One line per profile, a section per class; per batch: bound tokens/s, bound, modelled tokens/J."""
    batches = _batches(rows)
    table = Table(title=Text(title), caption=_caption(rows), caption_justify="left")
    table.add_column("class")
    table.add_column("profile")
    table.add_column("GB/s", justify="right")
    table.add_column("TDP W", justify="right")
    for b in batches:
        table.add_column(f"b{b} tok/s", justify="right")
        table.add_column(f"b{b} bound")
        table.add_column(f"b{b} tok/J*", justify="right")
    table.add_column("notes")
    grouped = _by_profile(rows)
    previous_class: str | None = None
    for per_batch in grouped.values():
        first = next(iter(per_batch.values()))
        if previous_class is not None and first.platform_class != previous_class:
            table.add_section()
        cells = [
            first.platform_class if first.platform_class != previous_class else "",
            first.profile,
            _num(first.bandwidth and first.bandwidth / 1e9, ".4g"),
            _num(first.tdp_w, "g"),
        ]
        previous_class = first.platform_class
        notes: list[str] = []
        for b in batches:
            r = per_batch.get(b)
            if r is None:
                cells += ["", "", ""]
                continue
            bound = r.bound + ("*" if BANDWIDTH_ONLY in r.flags and r.bound == "memory" else "")
            cells += [_num(r.tokens_per_s, ",.1f"), bound, _num(r.tokens_per_joule, ".3g")]
            for flag in r.flags:
                note = flag if not flag.startswith("does not fit") else f"b{b} {flag}"
                if note not in notes:
                    notes.append(note)
        table.add_row(*cells, "; ".join(notes))
    return table


def _caption(rows: Sequence[PlatformRow]) -> str:
    parts = [
        "tok/s: bound-limited decode at the roofline of the datasheet ceilings (modelled, not measured).",
        "tok/J*: modelled = tok/s / TDP, assuming the full TDP is drawn; never measured energy.",
    ]
    if any(BANDWIDTH_ONLY in r.flags for r in rows):
        parts.append(
            f"memory* / {BANDWIDTH_ONLY}: no peak FLOP/s for the compute dtype on the datasheet, so compute "
            "time is left out and tok/s is an upper bound."
        )
    if any(NO_CEILINGS in r.flags for r in rows):
        parts.append(f"{NO_CEILINGS}: listed, not projected (`rooflens hw probe` measures this machine).")
    return "\n".join(parts)


def measured_table(points: Sequence[MeasuredPoint], title: str) -> Table:
    """The measured records beside the modelled table: decode tokens/s, and tokens/J only from measured energy."""
    table = Table(title=Text(title))
    for col in ("class", "hardware", "engine", "dtype", "batch", "decode tok/s", "tok/J (measured)"):
        table.add_column(col, justify="right" if col in ("batch", "decode tok/s", "tok/J (measured)") else "left")
    for p in points:
        table.add_row(
            p.platform_class,
            p.profile if p.profile == p.display_name else f"{p.profile} ({p.display_name})",
            p.engine,
            p.dtype or "-",
            str(p.batch),
            f"{p.tokens_per_s:,.1f}",
            _num(p.tokens_per_joule, ".3g") if p.tokens_per_joule is not None else "not measured",
        )
    return table


# --------------------------------------------------------------------------- chart


def _y_layout(rows: Sequence[PlatformRow], points: Sequence[MeasuredPoint]) -> list[tuple[str, str | None, str]]:
    """Chart rows top to bottom as (class, key, label): a header row per class (key ``None``), then its
    profiles, then hardware that only measured records name."""
    entries: list[tuple[str, str | None, str]] = []
    modelled = _by_profile(rows)
    for cls in CLASSES:
        members: list[tuple[str, str | None, str]] = []
        for name, per_batch in modelled.items():
            if next(iter(per_batch.values())).platform_class == cls:
                members.append((cls, name, name))
        for p in points:
            if p.platform_class == cls and p.profile not in modelled and all(e[1] != p.profile for e in members):
                label = p.display_name if p.display_name != p.profile else p.profile
                members.append((cls, p.profile, f"{label} (measured only)"))
        if members:
            entries += [(cls, None, cls), *members]
    return entries


@dataclass(frozen=True)
class _Layout:
    """Where things go on both panels: a color per batch, the profile rows, and a bar's height."""

    batches: list[int]
    colors: dict[int, tuple]
    entries: list[tuple[str, str | None, str]]  # see _y_layout
    index: dict[str, int]  # profile -> its chart row

    @classmethod
    def of(cls, rows: Sequence[PlatformRow], points: Sequence[MeasuredPoint]) -> _Layout:
        import matplotlib.pyplot as plt

        batches = list(dict.fromkeys([*_batches(rows), *(p.batch for p in points)]))
        entries = _y_layout(rows, points)
        return cls(
            batches=batches,
            colors={b: plt.get_cmap("tab10").colors[i % 10] for i, b in enumerate(batches)},
            entries=entries,
            index={key: i for i, (_, key, _) in enumerate(entries) if key is not None},
        )

    @property
    def height(self) -> float:
        return 0.8 / max(len(self.batches), 1)

    def y_of(self, key: str, batch: int) -> float:
        return self.index[key] - 0.4 + self.height * (self.batches.index(batch) + 0.5)


_PANELS = (
    ("tokens_per_s", "decode tokens/s (log)", "bound-limited decode tokens/s: modelled bars"),
    ("tokens_per_joule", "tokens/J (log)", "tokens/J: modelled = tok/s / TDP (bars); measured energy only"),
)


def _modelled_bars(ax: Axes, attr: str, rows: Sequence[PlatformRow], layout: _Layout, lo: float) -> None:
    """A bar per profile and batch (hatched where bandwidth-only); a text where a profile has no value."""
    height = layout.height
    for key, per_batch in _by_profile(rows).items():
        for b, r in per_batch.items():
            value = getattr(r, attr)
            if value:
                ax.barh(
                    layout.y_of(key, b),
                    value - lo,
                    left=lo,
                    height=height * 0.92,
                    color=layout.colors[b],
                    alpha=0.8,
                    hatch="///" if BANDWIDTH_ONLY in r.flags else None,
                    edgecolor="white" if BANDWIDTH_ONLY in r.flags else layout.colors[b],
                    linewidth=0,
                )
                text = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
                if r.fits is False:
                    text += " (does not fit)"
                ax.text(value * 1.04, layout.y_of(key, b), text, va="center", fontsize=6, color="dimgray")
        first = next(iter(per_batch.values()))
        if all(not getattr(r, attr) for r in per_batch.values()):
            why = NO_CEILINGS if first.tokens_per_s is None else "no TDP on the datasheet"
            ax.text(lo * 1.1, layout.index[key], why, va="center", fontsize=7, color="dimgray", style="italic")


def _panel(
    ax: Axes, panel: tuple[str, str, str], rows: Sequence[PlatformRow], points: Sequence[MeasuredPoint], layout: _Layout
) -> None:
    """One panel: modelled bars, measured diamonds, a log axis with plain ticks, a line between classes."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    attr, xlabel, subtitle = panel
    values = [getattr(r, attr) for r in rows if getattr(r, attr)]
    values += [getattr(p, attr) for p in points if getattr(p, attr)]
    lo = min(values) / 3 if values else 0.1
    hi = max(values) * 3 if values else 10.0
    _modelled_bars(ax, attr, rows, layout, lo)
    for p in points:
        value = getattr(p, attr)
        if value:
            ax.scatter(
                value, layout.y_of(p.profile, p.batch), marker="D", s=38, color=layout.colors[p.batch],
                edgecolor="black", linewidth=1.0, zorder=4,
            )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    # plain tick text: the CLI draws with text.parse_math off, which would print the default '$10^{2}$'
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_title(subtitle, fontsize=9)
    ax.grid(True, axis="x", which="both", alpha=0.25)
    for i, (_, key, _) in enumerate(layout.entries):
        if key is None and i:
            ax.axhline(i - 0.5, color="black", lw=0.6)


def _profile_axis(ax: Axes, entries: list[tuple[str, str | None, str]]) -> None:
    """The shared y axis: one row per profile, class headers in bold, top to bottom."""
    ax.set_yticks(range(len(entries)))
    ax.set_yticklabels([label for _, _, label in entries], fontsize=7)
    for tick, (_, key, _) in zip(ax.get_yticklabels(), entries):
        if key is None:
            tick.set_fontweight("bold")
            tick.set_fontsize(8)
    ax.set_ylim(len(entries) - 0.5, -0.5)


def _legend(fig: Figure, rows: Sequence[PlatformRow], points: Sequence[MeasuredPoint], layout: _Layout) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = layout.colors
    handles = [
        Patch(color=colors[b], alpha=0.8, label=f"modelled, batch {b}") for b in layout.batches if b in _batches(rows)
    ]
    if any(BANDWIDTH_ONLY in r.flags for r in rows):
        handles.append(
            Patch(
                facecolor="lightgray", hatch="///", edgecolor="dimgray", label="modelled, bandwidth only (upper bound)"
            )
        )
    for b in dict.fromkeys(p.batch for p in points):
        handles.append(
            plt.Line2D(
                [], [], ls="", marker="D", color=colors[b], markeredgecolor="black", label=f"measured, batch {b}"
            )
        )
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)


def draw(rows: Sequence[PlatformRow], points: Sequence[MeasuredPoint], title: str) -> Figure:
    """Two panels sharing the profile axis: decode tokens/s and tokens/J, log scale.

    Bars are modelled (hatched where bandwidth-only); diamonds with a black edge are measured records (tokens/J
    only where energy was measured). A profile without ceilings gets a text, not a bar.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = _Layout.of(rows, points)
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.6 + 0.34 * max(len(layout.entries), 3)), sharey=True)
    for ax, panel in zip(axes, _PANELS):
        _panel(ax, panel, rows, points, layout)
    _profile_axis(axes[0], layout.entries)
    _legend(fig, rows, points, layout)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig
