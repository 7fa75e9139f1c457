"""`rooflens engines` and `rooflens models`: what rooflens can run."""

from __future__ import annotations

import json

import typer

from rooflens.cli.common import console


def engines(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The registered engines, what each needs, and whether it can run here."""
    import torch

    from rooflens.engines.registry import describe_engine, entry_point_errors, registered_engines
    from rooflens.reports.console import engines_table

    here = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = [
        {**describe_engine(cls), "here": {str(dev): cls.unavailable_reason(dev) or "available" for dev in here}}
        for cls in registered_engines().values()
    ]
    if as_json:
        console.print_json(json.dumps({"engines": rows, "plugin_errors": entry_point_errors()}))
        return
    console.print(engines_table(rows))
    for name, error in entry_point_errors().items():
        console.print(f"[yellow]plug-in engine '{name}' failed to load:[/] {error}")


def models() -> None:
    """Models rooflens can run without a download: built-in (real weights) and shape-only configs."""
    from rooflens.models.catalog import BUILTIN_MODELS, shipped_config_names
    from rooflens.reports.console import models_table

    console.print(models_table(BUILTIN_MODELS, shipped_config_names()))
