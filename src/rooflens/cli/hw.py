"""`rooflens hw list | show | detect | probe`: hardware profiles, this machine, and its measured ceilings."""

from __future__ import annotations

import typer

from rooflens.cli.common import check_device, console, err_console, fail


def hw_list() -> None:
    """All shipped hardware profiles."""
    from rooflens.reports.roofline_console import profiles_table
    from rooflens.roofline.hardware import list_profiles

    console.print(profiles_table(list_profiles()))


def hw_show(name: str = typer.Argument(..., help="profile name (see `rooflens hw list`)")) -> None:
    """One profile with the source of every number."""
    from rooflens.reports.roofline_console import profile_table
    from rooflens.roofline.hardware import UnknownProfileError, get_profile

    try:
        p = get_profile(name)
    except UnknownProfileError as err:
        fail(str(err))
    console.print(profile_table(p))
    if p.notes:
        console.print(p.notes)


def _device_here(device: str) -> str:
    """A checked --device, with ``auto`` resolved: cuda when there is one, else cpu."""
    import torch

    device = check_device(device)
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def hw_detect(device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N")) -> None:
    """What this machine is and which profile it maps to."""
    from rooflens.device.detect import detect_hardware
    from rooflens.roofline.hardware import resolve_profile

    dev = _device_here(device)
    d = detect_hardware()
    console.print(
        f"CPU: {d.cpu_model} ({d.cpu_cores_logical} logical cores"
        f"{f', {d.cpu_cores_physical} physical' if d.cpu_cores_physical else ''}); "
        f"SIMD: {', '.join(d.cpu_flags) or 'none detected'}; RAM {d.memory_total_bytes / 2**30:.1f} GiB"
    )
    if d.gpus:
        for g in d.gpus:
            console.print(f"GPU {g.index}: {g.name}, {g.memory_total_bytes / 2**30:.1f} GiB, driver {g.driver_version}")
    else:
        console.print("GPU: none detected")
    r = resolve_profile("auto", dev)
    console.print(f"profile for {dev}: [bold]{r.profile.name}[/] - {r.reason}")


def hw_probe(
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    quick: bool = typer.Option(False, "--quick", help="small sizes, a few seconds (less accurate)"),
    save: bool = typer.Option(True, "--save/--no-save", help="save the result as this machine's measured ceilings"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    no_wait: bool = typer.Option(
        False,
        "--no-wait",
        help="exit 2 at once, naming it, when another measurement holds this machine's lock (default: wait for it)",
    ),
) -> None:
    """Measure this machine's real ceilings: copy bandwidth and GEMM peak per dtype, with spread.

    Measures alone: while a run or another probe holds the machine lock, it waits (or exits 2 with --no-wait)."""
    from rich.markup import escape

    from rooflens.device.lock import MachineBusy, waiting
    from rooflens.reports.roofline_console import probe_table
    from rooflens.roofline.hardware import get_profile
    from rooflens.roofline.probe import ProbeError, probe, save_probe

    dev = _device_here(device)
    try:
        with waiting(not no_wait, lambda text: err_console.print(f"[yellow]{escape(text)}[/]", highlight=False)):
            result = probe(dev, quick=quick, progress=lambda msg: err_console.print(f"[dim]{msg}[/]"))
    except MachineBusy as err:
        fail(escape(str(err)))
    except (ProbeError, ValueError) as err:
        fail(str(err))
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        console.print(probe_table(result, get_profile(result.profile) if result.profile else None))
        for k, why in result.skipped.items():
            console.print(f"[dim]skipped {k}: {why}[/]")
    if save:
        path = save_probe(result)
        (err_console if as_json else console).print(
            f"saved: {path} (used as measured ceilings by `run` and `roofline` on this machine)"
        )
