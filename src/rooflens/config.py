"""The experiment schema: the one place where an experiment YAML is validated.

Every error names the file, the field path and what is allowed, e.g.::

    experiments/x.yaml: workloads[0].batch_sizes[1]: must be >= 1 (got 0)
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DTYPES = ("auto", "float32", "bfloat16", "float16")
PROMPT_SOURCES = ("synthetic", "corpus")
MODEL_SOURCES = ("builtin", "hf", "shape")
BUILTIN_EXPERIMENT = "quickstart"


class ConfigError(ValueError):
    """An experiment that cannot be run as written; the message is meant for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """Which model to run.

    ``source``: ``builtin`` (a model with real weights that rooflens ships, e.g. ``smollm2-135m``),
    ``hf`` (a Hugging Face id or local path, real weights) or ``shape`` (a config shipped with
    rooflens, random weights: speed is real, quality is not measured).
    """

    source: Literal["builtin", "hf", "shape"]
    id: str = Field(min_length=1)
    revision: str | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _hf_only_options(self) -> "ModelSpec":
        if self.source != "hf" and (self.revision is not None or self.trust_remote_code):
            raise ValueError("revision and trust_remote_code apply to source 'hf' only")
        return self

    @property
    def label(self) -> str:
        return self.id if self.source == "builtin" else f"{self.source}:{self.id}"


def parse_model_shorthand(value: str) -> dict[str, str]:
    """``smollm2-135m`` -> builtin, ``shape:llama-2-7b`` -> shape, ``hf:org/name`` -> hf."""
    source, sep, rest = value.partition(":")
    if sep and source in MODEL_SOURCES:
        return {"source": source, "id": rest}
    return {"source": "builtin", "id": value}


class EngineSpec(_Strict):
    """One engine to run: its registered name, an optional label, and its options."""

    name: str = Field(min_length=1)
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name


class Workload(_Strict):
    """Prompt length, generation length and the batch sizes to sweep."""

    name: str | None = None
    prompt_len: int = Field(ge=1, le=131072)
    gen_len: int = Field(ge=2, le=65536, description="new tokens per sequence; >= 2 so that TPOT exists")
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1)
    prompt: Literal["synthetic", "corpus"] = "synthetic"

    @field_validator("batch_sizes")
    @classmethod
    def _positive_unique(cls, v: list[int]) -> list[int]:
        for b in v:
            if b < 1:
                raise ValueError(f"batch sizes must be >= 1 (got {b})")
        if len(set(v)) != len(v):
            raise ValueError(f"batch sizes must be unique (got {v})")
        return v

    @property
    def display(self) -> str:
        return self.name or f"p{self.prompt_len}-g{self.gen_len}"


class Repetitions(_Strict):
    """Warm-up runs are discarded; measured runs continue until both minima are met (capped)."""

    warmup: int = Field(default=1, ge=0, le=100)
    min_reps: int = Field(default=3, ge=1, le=10000)
    min_seconds: float = Field(default=1.0, ge=0.0, le=86400.0)
    max_reps: int = Field(default=100, ge=1, le=100000)

    @model_validator(mode="after")
    def _ordered(self) -> "Repetitions":
        if self.max_reps < self.min_reps:
            raise ValueError(f"max_reps ({self.max_reps}) must be >= min_reps ({self.min_reps})")
        return self


class Output(_Strict):
    results_dir: str = "results"
    reports_dir: str = "reports"


class Experiment(_Strict):
    """A whole experiment: model x engines x workloads on one device."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    model: ModelSpec
    engines: list[EngineSpec] = Field(min_length=1)
    baseline: str | None = Field(default=None, description="label of the engine the others are ratios of")
    workloads: list[Workload] = Field(min_length=1)
    repetitions: Repetitions = Repetitions()
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    hardware: str = "auto"
    threads: int | None = Field(default=None, ge=1, le=1024, description="torch CPU threads")
    seed: int = 0
    energy: bool = True
    output: Output = Output()

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return parse_model_shorthand(v) if isinstance(v, str) else v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N (got {v!r})")

    @model_validator(mode="after")
    def _engines_consistent(self) -> "Experiment":
        labels = [e.display for e in self.engines]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"engine labels must be unique; give each a 'label' (duplicated: {', '.join(dupes)})")
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is not one of the engines' labels ({', '.join(labels)})")
        return self

    @property
    def baseline_label(self) -> str:
        return self.baseline or self.engines[0].display

    def config_hash(self) -> str:
        """Hash of the validated experiment (defaults filled in), stable across key order."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- errors


def _loc_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the schema object that holds the (unknown) key at ``loc``."""
    model: Any = Experiment
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        for candidate in (ann, *getattr(ann, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
            for inner in getattr(candidate, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break
        else:
            return None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return None


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        # pydantic adds the validator/union branch to some locations; drop function names
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        where = _loc_str(loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            msg = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif e["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and e["type"] not in ("literal_error",) and not isinstance(e["input"], (dict, list)):
                msg += f" (got {e['input']!r})"
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def validate_experiment(data: Any, source: str = "<experiment>") -> Experiment:
    """Validate a parsed YAML document, including each engine's own options."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the document must be a mapping of fields (got {type(data).__name__})")
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    from rooflens.engines.base import validate_engine_options  # engines register their own option schemas

    from rooflens.roofline.hardware import list_profiles

    problems = []
    profiles = [p.name for p in list_profiles()]
    if exp.hardware != "auto" and exp.hardware not in profiles:
        problems.append(f"{source}: hardware: unknown profile {exp.hardware!r} (allowed: auto, {', '.join(profiles)})")
    for i, spec in enumerate(exp.engines):
        problems += [f"{source}: engines[{i}].{p}" for p in validate_engine_options(spec)]
    if problems:
        raise ConfigError("\n".join(problems))
    return exp


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such experiment file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    return validate_experiment(data, str(p))


def builtin_experiment_path(name: str = BUILTIN_EXPERIMENT) -> Path:
    """Path of an experiment shipped inside the package (the quickstart)."""
    ref = resources.files("rooflens") / "experiments" / f"{name}.yaml"
    return Path(str(ref))
