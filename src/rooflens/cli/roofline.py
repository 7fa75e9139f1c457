"""`rooflens roofline MODEL`: a model's bound-limited performance on one hardware profile, or on many."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.text import Text

from rooflens.cli.common import console, fail, int_list, records_or_exit, save_chart


def roofline(
    model: str = typer.Argument(
        ..., help="shipped config (llama-2-7b, smollm2-135m, ...; see `rooflens models`) or hf:<id or path>"
    ),
    hw: str = typer.Option(
        "auto",
        "--hw",
        help="hardware profile name, auto (this machine; CPUs need `rooflens hw probe`), or 'all' / a comma-separated "
        "list of profiles: the platform comparison (decode tok/s and modelled tok/J per profile, grouped by class)",
    ),
    batch: str = typer.Option("1", "--batch", help="batch sizes, e.g. 1,8"),
    prompt: int = typer.Option(512, "--prompt", min=1, help="prompt length (tokens)"),
    gen: int = typer.Option(128, "--gen", min=1, help="generated tokens (decode is shown at the mean context)"),
    bits: str = typer.Option("16", "--bits", help="weight bits, e.g. 16,8,4 (8/4/3/2: group-wise with fp16 scales)"),
    group_size: int = typer.Option(128, "--group-size", min=1, help="group size of low-bit weights"),
    kv_bits: Optional[int] = typer.Option(
        None, "--kv-bits", min=1, help="KV cache bits (default: the activations' width, 32 with --bits 32, else 16)"
    ),
    act_bits: Optional[int] = typer.Option(
        None,
        "--act-bits",
        help="integer activations: 8 (W8A8) or 4 (W4A4); the matmuls run at the hardware's int8 / int4 peak and "
        "activations move at that width (default: 16-bit activations at the bf16/fp16 peak)",
    ),
    ops: Optional[bool] = typer.Option(None, "--ops/--no-ops", help="per-op tables (default: when one batch x bits)"),
    png: Optional[Path] = typer.Option(None, "--png", help="write the roofline chart to this PNG"),
    as_json: bool = typer.Option(False, "--json", help="print the analysis as JSON"),
    records: Optional[Path] = typer.Option(
        None, "--records", help="with --hw all: a results folder whose records appear as measured points"
    ),
) -> None:
    """Analytic roofline of a model on a hardware profile: per-op table, totals, bound-limited tokens/s.

    Without ceilings for the hardware (a CPU before `rooflens hw probe`) it prints FLOPs and bytes only.
    With --hw all (or a list of profiles) it compares platforms: bound-limited decode tokens/s and a tokens/J
    modelled from each profile's TDP, grouped into cloud GPU, PC GPU and CPU/edge.
    """
    from rooflens.roofline.platforms import is_platform_comparison

    batches, bit_list = int_list(batch, "--batch"), int_list(bits, "--bits")
    scenario = dict(batches=batches, prompt_len=prompt, gen_len=gen, group_size=group_size, kv_bits=kv_bits)
    if is_platform_comparison(hw):
        if act_bits is not None:
            fail("--act-bits projects on one profile (--hw NAME or auto), not in a platform comparison")
        if len(bit_list) != 1:
            fail(f"--hw {hw} compares platforms at one --bits value; got {bits}")
        _platforms(model, hw, bit_list[0], scenario, records, png, as_json)
        return
    if records is not None:
        fail("--records goes with --hw all (or a comma-separated list of profiles)")
    _what_if(model, hw, bit_list, {**scenario, "act_bits": act_bits}, ops, png, as_json)


def _platforms(
    model: str,
    hw: str,
    bits: int,
    scenario: dict[str, Any],
    records: Optional[Path],
    png: Optional[Path],
    as_json: bool,
) -> None:
    """--hw all or a list: modelled rows from datasheets, measured records (if any) kept apart."""
    from rooflens.models.catalog import ModelLoadError, analysis_config
    from rooflens.reports.platform_chart import draw, measured_table, platform_table
    from rooflens.roofline.platforms import compare_platforms

    try:
        config = analysis_config(model)
        comparison = compare_platforms(model, config, hw, bits=bits, **scenario)
    except (ModelLoadError, ValueError) as err:  # UnknownProfileError and WhatIfError are ValueErrors
        fail(str(err))
    if records is not None:
        comparison = comparison.with_records(records_or_exit(records), config)
    c = comparison
    if as_json:
        print(json.dumps(c.to_dict(), indent=2))
    else:
        what = f"{bits}-bit weights, prompt {c.prompt_len}, gen {c.gen_len}"
        console.print(
            platform_table(c.rows, f"{model}: bound-limited decode per platform ({what}; modelled from datasheets)")
        )
        if records is not None:
            console.print(measured_table(c.points, f"measured records in {records} (not modelled)"))
            for note in c.left_out:
                console.print(Text(note, style="dim"))
    if png is not None:
        title = (
            f"{model}, {bits}-bit weights, prompt {c.prompt_len}, gen {c.gen_len}: "
            "modelled from datasheets (bars) vs measured records (diamonds)"
        )
        save_chart(lambda: draw(c.rows, c.points, title), png, as_json)


def _what_if(
    model: str,
    hw: str,
    bits: list[int],
    scenario: dict[str, Any],
    ops: Optional[bool],
    png: Optional[Path],
    as_json: bool,
) -> None:
    """One profile (or this machine): projections on its ceilings, or FLOPs and bytes without ceilings."""
    from rooflens.models.catalog import ModelLoadError, analysis_config
    from rooflens.reports.roofline_console import costs_table, op_table, projections_table
    from rooflens.roofline.whatif import WhatIfError, what_if

    try:
        result = what_if(model, analysis_config(model), hw, bits=bits, **scenario)
    except (ModelLoadError, WhatIfError) as err:
        fail(str(err))
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    elif result.ceilings is None:
        console.print(costs_table(model, result.costs))
        console.print(Text(result.why, style="dim"))
    else:
        c, name = result.ceilings, result.profile.name
        console.print(
            f"{model} on {name}: {c.description}; bandwidth {c.bandwidth / 1e9:.4g} GB/s, "
            f"peak {c.peak_flops / 1e12:.4g} TFLOP/s, ridge {c.peak_flops / c.bandwidth:.1f} FLOP/B ({c.source})"
        )
        if ops if ops is not None else len(result.projections) == 1:
            for b, w, p in result.projections:
                for phase in (p.prefill, p.decode):
                    bpw = f"{p.precision.weight_bits:g} bits/weight incl. scales"
                    console.print(op_table(phase, p, f"{phase.phase}: batch {b}, {w}-bit weights ({bpw})"))
        console.print(projections_table(result.projections))
    if png is not None and result.ceilings is not None:  # no chart without ceilings: nothing to place the points on
        from rooflens.reports.roofline_chart import what_if_chart

        title = f"{model} on {result.profile.name}: bound-limited positions (prompt {scenario['prompt_len']}, gen {scenario['gen_len']})"
        save_chart(lambda: what_if_chart(result, title), png, as_json)
