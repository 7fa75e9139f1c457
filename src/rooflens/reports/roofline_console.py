"""Terminal tables of `rooflens roofline` and `rooflens hw`: per-op costs, bound-limited projections, costs
without ceilings, hardware profiles and measured ceilings. The platform comparison's tables are in
:mod:`rooflens.reports.platform_chart`.

Each function builds a rich table from data and prints nothing. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rooflens.roofline.analytic import PhaseCost, Projection
    from rooflens.roofline.hardware import Ceiling, HardwareProfile
    from rooflens.roofline.probe_file import ProbeResult

__all__ = ["costs_table", "op_table", "probe_table", "profile_table", "profiles_table", "projections_table"]


def op_table(phase: PhaseCost, p: Projection, title: str) -> Table:
    """One row per op of a pass on the projection's ceilings, and the pass's total."""
    table = Table(title=Text(title))
    for col in ("op", "x", "GFLOP", "weight MB", "act MB", "KV MB", "AI FLOP/B", "bound", "time us"):
        table.add_column(col, justify="left" if col in ("op", "bound") else "right")
    for row in phase.op_rows(p.bandwidth, p.peak_flops):
        table.add_row(
            row["name"],
            f"{row['count']:g}",
            f"{row['flops'] / 1e9:.4f}",
            f"{row['weight_bytes'] / 1e6:.3f}",
            f"{row['act_bytes'] / 1e6:.3f}",
            f"{row['kv_bytes'] / 1e6:.3f}",
            f"{row['intensity']:.2f}",
            row["bound"],
            f"{row['time_s'] * 1e6:.1f}",
        )
    table.add_row(
        "[bold]total[/]",
        "",
        f"{phase.flops / 1e9:.4f}",
        f"{phase.weight_bytes / 1e6:.3f}",
        f"{phase.act_bytes / 1e6:.3f}",
        f"{phase.kv_bytes / 1e6:.3f}",
        f"{phase.intensity:.2f}",
        phase.bound(p.bandwidth, p.peak_flops),
        f"{phase.time_at_roofline(p.bandwidth, p.peak_flops) * 1e6:.1f}",
    )
    return table


_PROJECTION_COLUMNS = (
    "batch",
    "bits",
    "prefill ms",
    "prefill tok/s",
    "prefill bound",
    "decode ctx",
    "decode GFLOP/step",
    "decode weight GB",
    "decode KV GB",
    "decode AI",
    "decode ms/step",
    "decode tok/s",
    "decode bound",
)


def projections_table(rows: Iterable[tuple[int, int, Projection]]) -> Table:
    """Per (batch, weight bits): prefill time and tokens/s, the decode step's costs, time and tokens/s."""
    table = Table(title="bound-limited performance (at the roofline)")
    for col in _PROJECTION_COLUMNS:
        table.add_column(col, justify="right")
    for b, w, p in rows:
        d = p.decode
        table.add_row(
            str(b),
            str(w),
            f"{1e3 * p.prefill_time_s:.2f}",
            f"{p.prefill_tokens_per_s:,.0f}",
            p.prefill.bound(p.bandwidth, p.peak_flops),
            str(d.context),
            f"{d.flops / 1e9:.2f}",
            f"{d.weight_bytes / 1e9:.3f}",
            f"{d.kv_bytes / 1e9:.4f}",
            f"{d.intensity:.2f}",
            f"{1e3 * p.decode_step_time_s:.3f}",
            f"{p.decode_tokens_per_s:,.1f}",
            d.bound(p.bandwidth, p.peak_flops),
        )
    return table


def costs_table(model: str, rows: Iterable[tuple[int, int, PhaseCost, PhaseCost]]) -> Table:
    """FLOPs and bytes per phase, for hardware without ceilings (nothing to divide them by)."""
    table = Table(title=Text(f"{model}: analytic cost per phase (no ceilings, so no times)"))
    for col in ("batch", "bits", "phase", "tokens", "context", "GFLOP", "weight GB", "act GB", "KV GB", "AI FLOP/B"):
        table.add_column(col, justify="right")
    for b, w, pre, dec in rows:
        for ph in (pre, dec):
            table.add_row(
                str(b),
                str(w),
                ph.phase,
                str(ph.tokens),
                str(ph.context),
                f"{ph.flops / 1e9:.4g}",
                f"{ph.weight_bytes / 1e9:.4g}",
                f"{ph.act_bytes / 1e9:.4g}",
                f"{ph.kv_bytes / 1e9:.4g}",
                f"{ph.intensity:.2f}",
            )
    return table


# --------------------------------------------------------------------------- hardware


def _ceiling(c: Ceiling | None) -> str:
    return "-" if c is None else f"{c.value:g} {c.unit}"


def profiles_table(profiles: Iterable[HardwareProfile]) -> Table:
    """One row per profile: memory, bandwidth, bf16 and fp32 peaks, TDP."""
    table = Table(title="hardware profiles (datasheet, dense)")
    for col in ("name", "device", "category", "memory", "bandwidth", "bf16", "fp32", "TDP"):
        table.add_column(col)
    for p in profiles:
        table.add_row(
            p.name,
            p.display_name,
            p.category,
            _ceiling(p.memory_capacity),
            _ceiling(p.memory_bandwidth),
            _ceiling(p.peak_flops.get("bf16")),
            _ceiling(p.peak_flops.get("fp32")),
            _ceiling(p.tdp),
        )
    return table


def profile_table(p: HardwareProfile) -> Table:
    """Every number of one profile with its source."""
    table = Table(title=Text(f"{p.name}: {p.display_name} ({p.category})"))
    for col in ("quantity", "value", "source"):
        table.add_column(col, overflow="fold")
    rows = [("memory capacity", p.memory_capacity), ("memory bandwidth", p.memory_bandwidth), ("TDP", p.tdp)]
    rows += [(f"peak {k}", v) for k, v in p.peak_flops.items()]
    for label, c in rows:
        table.add_row(label, _ceiling(c), c.source if c else "-")
    return table


def _probe_size(sizes: dict[str, int], key: str) -> str:
    if key == "bandwidth":
        return f"{sizes.get('copy_bytes', 0) / 2**20:.0f} MiB copy"
    n = sizes.get(f"gemm_n.{key}", sizes.get("gemm_n"))
    return f"n={n}" if n else "-"


def probe_table(result: ProbeResult, profile: HardwareProfile | None) -> Table:
    """Measured ceilings with their spread, and each as a share of the datasheet's (with a profile)."""
    table = Table(
        title=Text(
            f"measured ceilings: {result.device_name} ({result.device}, {result.threads} threads, "
            f"load {result.load_avg[0] if result.load_avg else float('nan'):.2f}; "
            f"valid at attempt {result.chosen} of {len(result.attempts)})"
        )
    )
    for col in ("ceiling", "best", "median", "p10", "p90", "CV %", "vs datasheet", "size"):
        table.add_column(col, justify="left" if col == "ceiling" else "right")
    ratios = result.ratios(profile) if profile else {}
    rows: list[tuple] = [("bandwidth GB/s", "bandwidth", result.bandwidth, 1e9)]
    rows += [(f"{k} {'TOP/s' if k == 'int8' else 'TFLOP/s'}", k, v, 1e12) for k, v in result.gemm.items()]
    for label, key, st, scale in rows:
        ratio = ratios.get(key)
        table.add_row(
            label,
            f"{st.max / scale:.4g}",
            f"{st.median / scale:.4g}",
            f"{st.p10 / scale:.4g}",
            f"{st.p90 / scale:.4g}",
            f"{100 * st.cv:.1f}",
            "-" if ratio is None else f"{ratio:.0%}",
            _probe_size(result.sizes, key),
        )
    table.caption = (
        "best = the ceiling used by `run` and `roofline`; how each was measured is in the saved JSON (`how`)"
    )
    return table
