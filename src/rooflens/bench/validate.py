"""Validating an experiment: the schema (:mod:`rooflens.config`), then every name it uses against the
registries it names -- engines and their options, built-in models and shipped configs, hardware
profiles. Torch-free: ``rooflens validate`` answers in well under a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rooflens.config import GENERATED_PROMPTS, ConfigError, Experiment, parse_experiment, read_experiment_file
from rooflens.text import quote


def registry_problems(exp: Experiment, source: str) -> list[str]:
    """``<source>: <field>: <what is wrong>`` for each name the registries do not know (empty when none)."""
    from rooflens.engines.registry import validate_engine_options
    from rooflens.models.catalog import BUILTIN_MODELS, shipped_config_names
    from rooflens.roofline.hardware import list_profiles

    problems = []
    if exp.model.source != "hf":
        known = list(BUILTIN_MODELS) if exp.model.source == "builtin" else shipped_config_names()
        if exp.model.id not in known:
            problems.append(
                f"{source}: model.id: unknown {exp.model.source} model {quote(exp.model.id)} "
                f"(allowed: {', '.join(known)}; other models: shape:<config> or hf:<id>)"
            )
    profiles = [p.name for p in list_profiles()]
    if exp.hardware != "auto" and exp.hardware not in profiles:
        problems.append(
            f"{source}: hardware: unknown profile {quote(exp.hardware)} (allowed: auto, {', '.join(profiles)})"
        )
    for i, spec in enumerate(exp.engines):
        problems += [f"{source}: engines[{i}].{p}" for p in validate_engine_options(spec)]
    return problems + prompt_set_problems(exp, source)


def prompt_set_problems(exp: Experiment, source: str) -> list[str]:
    """A workload's prompt set (a file) that cannot be read, named with the workload."""
    from rooflens.data.prompt_sets import PromptSetError, load_prompt_set

    problems = []
    for i, w in enumerate(exp.workloads):
        if w.prompt in GENERATED_PROMPTS:
            continue
        try:
            load_prompt_set(w.prompt)
        except PromptSetError as err:
            problems.append(f"{source}: workloads[{i}].prompt: {err}")
    return problems


def validate_experiment(data: Any, source: str = "<experiment>") -> Experiment:
    """Validate a parsed YAML document: the schema, then each engine's own options, the model and the
    hardware profile against what rooflens knows. Anything wrong is one :class:`ConfigError` listing it all."""
    exp = parse_experiment(data, source)
    problems = registry_problems(exp, source)
    if problems:
        raise ConfigError("\n".join(problems))
    return exp


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; anything wrong with it is a :class:`ConfigError`."""
    return validate_experiment(read_experiment_file(path), str(Path(path)))
