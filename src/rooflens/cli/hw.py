"""`rooflens hw list | show | detect | probe`: hardware profiles, this machine, and its measured ceilings."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape

from rooflens.cli.common import check_device, console, err_console, fail, machine_lock_policy


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
            console.print(
                f"GPU {g.index}: {g.name}, {g.memory_total_bytes / 2**30:.1f} GiB, driver {g.driver_version}",
                markup=False,
            )
    else:
        console.print("GPU: none detected")
    r = resolve_profile("auto", dev)
    console.print(f"profile for {escape(dev)}: [bold]{escape(r.profile.name)}[/] - {escape(r.reason)}")


def hw_probe(
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    quick: bool = typer.Option(False, "--quick", help="small GEMMs and fewer reps (less accurate; judged the same)"),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="CPU: torch threads to probe at (a run uses only a probe at its own threads)"
    ),
    save: bool = typer.Option(True, "--save/--no-save", help="save a valid result as this machine's measured ceilings"),
    as_json: bool = typer.Option(False, "--json", help="print the result (refused: its attempts) as JSON"),
    no_wait: bool = typer.Option(
        False,
        "--no-wait",
        help="exit 2 at once, naming it, when another measurement holds this machine's lock (default: wait for it)",
    ),
) -> None:
    """Measure this machine's real ceilings: copy bandwidth and GEMM peak per dtype, with spread.

    Valid only when every statistic's spread is small and the machine was quiet; else retried, then
    refused (exit 1, nothing saved). About 10-40 s an attempt on a CPU, up to 3 attempts. Measures alone:
    while a run or another probe holds the machine lock, it waits (or exits 2 with --no-wait).
    """
    import json

    import torch

    from rooflens.device.lock import MachineBusy
    from rooflens.reports.roofline_console import probe_table
    from rooflens.roofline.hardware import get_profile
    from rooflens.roofline.probe import ProbeError, ProbeRefused, probe
    from rooflens.roofline.probe_file import describe_attempt, save_probe

    dev = _device_here(device)
    if threads is not None:
        if dev.startswith("cuda"):
            fail("--threads: a GPU probe does not depend on the CPU threads; give it for --device cpu only")
        torch.set_num_threads(threads)
    try:
        with machine_lock_policy(no_wait):
            result = probe(dev, quick=quick, progress=lambda msg: err_console.print(f"[dim]{escape(msg)}[/]"))
    except MachineBusy as err:
        fail(str(err))
    except ProbeRefused as err:
        if as_json:
            print(json.dumps({"refused": str(err), "attempts": [a.model_dump(mode="json") for a in err.attempts]}))
        fail(str(err), code=1)
    except (ProbeError, ValueError) as err:
        fail(str(err))
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        console.print(probe_table(result, get_profile(result.profile) if result.profile else None))
        for k, why in result.skipped.items():
            console.print(f"[dim]skipped {k}: {escape(why)}[/]")
        for attempt in result.attempts:
            console.print(f"[dim]{escape(describe_attempt(attempt))}[/]")
    if save:
        path = save_probe(result)
        at = f"at {result.key_threads} threads" if result.key_threads else "on this GPU"
        (err_console if as_json else console).print(
            f"saved: {path} (the measured ceilings of `run` {at} and of `roofline` on this machine)"
        )
