"""`rooflens train early-exit | mixed-precision`: train what an engine needs ahead of a run, cached for it.

Their engine flags are generated from the engines' option schemas (:mod:`rooflens.cli.schema_flags`): the same
types, defaults and checks as an experiment file's ``options:``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import typer

from rooflens.cli.common import check_device, console, fail, unwritable
from rooflens.cli.schema_flags import Flag, flag_names, schema_flags
from rooflens.engines.options.early_exit import EarlyExitOptions
from rooflens.engines.options.mixed_precision import MixedPrecisionOptions

if TYPE_CHECKING:
    from rooflens.config import EngineSpec
    from rooflens.models.loader import LoadedModel


def _bits_list(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise ValueError("comma-separated bits, e.g. 8,4") from None


def _prefill_bits(text: str) -> int | str | None:
    """Bits, 'original', or nothing (the top rung); anything else goes to the schema, which says what is allowed."""
    return None if not text else int(text) if text.isdigit() else text


EARLY_EXIT_FLAGS = (
    Flag("draft", help="candidate source: head, lookup, head+lookup or self:<k>"),
    Flag("k", help="candidate tokens per step"),
    Flag("draft_vocab"),
    Flag("train_prompts", "prompts", "training prompts cut from the shipped corpus"),
    Flag("train_prompt_len", "prompt_len", "tokens per training prompt"),
    Flag("train_gen_len", "gen_len", "greedy tokens per training prompt"),
    Flag("draft_epochs"),
    Flag("predictor_epochs"),
    Flag("predictor_hidden"),
    Flag("seed"),
)
MIXED_PRECISION_FLAGS = (
    Flag("ladder", help="decode precisions, top first, e.g. 8,4 or 4,3,2", parse=_bits_list),
    Flag("group_size"),
    Flag("quantizer", help="rtn (round-to-nearest) or hqq (half-quadratic; slower to load)"),
    Flag("prefill_bits", help="bits >= the top rung, or 'original' (default: the top rung)", parse=_prefill_bits),
    Flag("lm_head", help="quantize the LM head too"),
    Flag("quality_budget"),
    Flag("train_prompts", "prompts"),
    Flag("train_prompt_len", "prompt_len"),
    Flag("train_gen_len", "gen_len"),
    Flag("classifier_epochs"),
    Flag("seed"),
)
_MODEL_HELP = "smollm2-135m (built-in), shape:<config> or hf:<id or path>"
_DEVICE_HELP = "auto, cpu, cuda or cuda:N"
_DTYPE_HELP = "float32, bfloat16 or float16 (as the experiment will load it)"


def _engine_spec(engine: str, options: dict[str, Any], flags: Sequence[Flag]) -> EngineSpec:
    """The EngineSpec of ``options``, or exit 2 naming each bad one as its command-line flag."""
    from rooflens.config import EngineSpec
    from rooflens.engines.registry import validate_engine_options

    spec = EngineSpec(name=engine, options=options)
    names = flag_names(flags)
    problems = []
    for p in validate_engine_options(spec):
        where, _, message = p.partition(": ")
        field, dot, rest = where.removeprefix("options").removeprefix(".").partition(".")
        flag = names.get(field, "--" + field.replace("_", "-"))
        problems.append(f"{flag}{dot}{rest.replace('_', '-')}: {message}" if field else message)
    if problems:
        fail("; ".join(problems))
    return spec


def _training_model(model: str, device: str, dtype: str) -> LoadedModel:
    """The model a `rooflens train` command works on, loaded as an experiment would load it, or exit 2."""
    from pydantic import ValidationError

    from rooflens.config import ModelSpec, parse_model_shorthand
    from rooflens.models.loader import TORCH_DTYPES, ModelLoadError, load_model, resolve_device

    if dtype not in TORCH_DTYPES:
        fail(f"--dtype {dtype!r}: allowed {', '.join(TORCH_DTYPES)}")
    try:
        spec = ModelSpec(**parse_model_shorthand(model))
        return load_model(spec, resolve_device(check_device(device)), TORCH_DTYPES[dtype])
    except (ModelLoadError, ValidationError, ValueError) as err:
        fail(f"model {model!r}: {err}")


@schema_flags(EarlyExitOptions, EARLY_EXIT_FLAGS)
def train_early_exit(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    options: Optional[dict[str, Any]] = None,
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
    dtype: str = typer.Option("float32", help=_DTYPE_HELP),
    force: bool = typer.Option(False, "--force", help="train again even when the cache has these settings"),
) -> None:
    """Train the early_exit engine's draft head and per-layer predictors for MODEL and cache them.

    The engine's prepare() finds them by model fingerprint and settings (the same defaults as its options).
    """
    from rooflens.cli.progress import progress_bar
    from rooflens.engines.early_exit.training import TrainSettings, artifact_path, load_or_train, save_artifacts, train
    from rooflens.reports.console import early_exit_figures, figures_table

    options = options or {}
    _engine_spec("early_exit", options, EARLY_EXIT_FLAGS)
    loaded = _training_model(model, device, dtype)
    settings = TrainSettings.from_options(EarlyExitOptions.model_validate(options))
    progress = progress_bar()
    task = progress.add_task("starting", total=None)

    def step(stage: str, done: int, total: int) -> None:
        progress.update(task, description=stage, completed=done, total=total)

    try:
        with progress:
            if force:
                path = artifact_path(loaded.model, loaded.info.label, settings)
                art, trained = train(loaded.model, loaded.tokenizer, settings, step), True
                save_artifacts(art, path)
            else:
                art, path, trained = load_or_train(loaded.model, loaded.tokenizer, loaded.info.label, settings, step)
    except ValueError as err:
        fail(str(err))
    except OSError as err:
        unwritable("early-exit cache", artifact_path(loaded.model, loaded.info.label, settings), err)
    console.print(f"{'trained and saved' if trained else 'already cached'}: {path}", markup=False)
    offline = art.offline_layers(max(1, round(len(art.exit_histogram) / 4)))
    title = f"early exit, {loaded.info.label}, draft {settings.draft}, k {settings.k}"
    console.print(figures_table(title, early_exit_figures(art.report, offline)))


@schema_flags(MixedPrecisionOptions, MIXED_PRECISION_FLAGS)
def train_mixed_precision(
    model: str = typer.Argument(..., help=_MODEL_HELP),
    options: Optional[dict[str, Any]] = None,
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
    dtype: str = typer.Option("float32", help=_DTYPE_HELP),
) -> None:
    """Tune the mixed_precision engine's static switch points and learned classifiers for MODEL, and cache them."""
    from rooflens.engines.base import EngineUnavailable
    from rooflens.engines.registry import build_engine
    from rooflens.reports.console import figures_table

    options = options or {}
    spec = _engine_spec("mixed_precision", options, MIXED_PRECISION_FLAGS)
    loaded = _training_model(model, device, dtype)
    engine = build_engine(spec, loaded)
    rungs = options["ladder"]
    if len(rungs) < 2:
        fail(f"--ladder {','.join(map(str, rungs))}: one rung never switches; nothing to tune")
    with console.status(f"tuning {model}: quantizing, then greedy runs at every switch point ..."):
        try:
            engine.prepare()
        except (EngineUnavailable, ValueError) as err:
            fail(str(err))
    console.print(engine.tuning_note)
    console.print(figures_table(f"mixed precision, {loaded.info.label}, ladder {rungs}", engine.tuning_report))
