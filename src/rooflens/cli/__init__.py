"""The ``rooflens`` command line: the typer app and every command, one module per group.

Each command parses its options, calls the library and prints what comes back:

- :mod:`.run`: run, validate
- :mod:`.results`: show, report, compare, history
- :mod:`.ab`: ab (two revisions measured side by side)
- :mod:`.catalog`: engines, models
- :mod:`.roofline`: roofline
- :mod:`.hw`: hw list | show | detect | probe
- :mod:`.train`: train early-exit | mixed-precision

Commands that run no model (validate, roofline, hw list/show, show, report, compare, history) import no torch:
every heavy import is inside the command that needs it.
"""

from __future__ import annotations

import logging

import typer

from rooflens.cli import ab, catalog, hw, results, roofline, run, train

# Known-harmless import noise of optional libraries (torchao's CUDA-only extensions on a CPU build,
# torch's pytree deprecation notes): keep the CLI's output about the measurement.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Hardware-aware LLM inference benchmarks and roofline analysis."
)
hw_app = typer.Typer(no_args_is_help=True, help="Hardware profiles: list, show, detect.")
app.add_typer(hw_app, name="hw")
train_app = typer.Typer(no_args_is_help=True, help="Train what an engine needs, ahead of a run (cached for it).")
app.add_typer(train_app, name="train")

app.command()(run.run)
app.command("report")(results.report)
app.command()(run.validate)
app.command()(catalog.engines)
app.command()(catalog.models)
app.command()(results.show)
app.command()(results.compare)
app.command()(ab.ab)
app.command()(results.history)
app.command()(roofline.roofline)

hw_app.command("list")(hw.hw_list)
hw_app.command("show")(hw.hw_show)
hw_app.command("detect")(hw.hw_detect)
hw_app.command("probe")(hw.hw_probe)

train_app.command("early-exit")(train.train_early_exit)
train_app.command("mixed-precision")(train.train_mixed_precision)

__all__ = ["app"]
