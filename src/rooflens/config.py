"""The experiment schema: the one place where an experiment's fields, types and values are defined.

A pure schema at the bottom of the package: it imports no engine, model or hardware registry.
Checks against those registries (engine options, model and profile names) are the plan step's
(:mod:`rooflens.bench.validate`), which is what callers use to read an experiment.

Every error names the file, the field path and what is allowed, e.g.::

    experiments/x.yaml: workloads[0].batch_sizes[1]: must be >= 1 (got 0)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Hashable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from yaml.constructor import ConstructorError
from yaml.scanner import ScannerError

from rooflens.device.spec import DEVICE_CHOICES, DeviceSpecError, parse_device
from rooflens.text import quote, safe_name, shorten

DTYPES = ("auto", "float32", "bfloat16", "float16")
GENERATED_PROMPTS = ("synthetic", "corpus")  # made on the fly: seeded random ids, windows of the shipped text
SHIPPED_PROMPT_SETS = ("chat", "summaries")  # rooflens/data/*.jsonl (rooflens.data.prompt_sets)
PROMPT_SOURCES = GENERATED_PROMPTS + SHIPPED_PROMPT_SETS
MODEL_SOURCES = ("builtin", "hf", "shape")
BUILTIN_EXPERIMENT = "quickstart"
MAX_PROMPT_LEN = 131072
MAX_NAME_LEN = 100  # experiment names, engine labels and workload names become (parts of) file names
MAX_FILE_BYTES = 1_000_000  # an experiment file is a few KB
MAX_DEPTH = 32  # an experiment is about 6 levels deep
MAX_VALUES = 100_000  # counted with YAML aliases expanded


class ConfigError(ValueError):
    """An experiment that cannot be run as written; the message is meant for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _no_separator(v: str) -> str:
    if "__" in v or v.startswith("_") or v.endswith("_"):
        raise ValueError(
            "must not contain '__' or start or end with '_' ('__' separates the parts of record file names)"
        )
    return v


RecordNamePart = Annotated[str, Field(max_length=MAX_NAME_LEN), AfterValidator(_no_separator)]
"""An engine label or workload name: one part of the record file name ``<label>__<workload>__b<batch>.json``."""


def _clashes(names: list[str]) -> str:
    """The names that would share a record file name part, e.g. ``'a/b' and 'a-b' map to ...``; '' when none."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(safe_name(name), []).append(name)
    out = []
    for part, group in groups.items():
        distinct = [quote(n) for n in dict.fromkeys(group)]
        if len(distinct) > 1:
            out.append(f"{' and '.join(distinct)} map to the same record file name part {part!r}")
        elif len(group) > 1:
            out.append(f"duplicated: {distinct[0]}")
    return "; ".join(out)


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
    def _hf_only_options(self) -> ModelSpec:
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

    name: str = Field(min_length=1, max_length=MAX_NAME_LEN)
    label: RecordNamePart | None = None
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None, description="this engine's model dtype (default: the experiment's)"
    )
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name


class Workload(_Strict):
    """Prompt length, generation length and the batch sizes to sweep."""

    name: RecordNamePart | None = None
    prompt_len: int | Literal["from-data"] = Field(
        description="exact prompt length in tokens, or from-data: a prompt set's median length (the timed prompts "
        "are fitted to it; the record keeps the set's p10/p50/p90 in prompt_lengths)"
    )
    prompt_lengths: dict[str, float] | None = Field(
        default=None,
        description="set by rooflens when prompt_len is from-data: p10/p50/p90 of the set's prompt lengths in tokens",
    )
    gen_len: int = Field(ge=2, le=65536, description="new tokens per sequence; >= 2 so that TPOT exists")
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1)
    prompt: str = Field(
        default="synthetic",
        description="synthetic (seeded random ids), corpus (windows of the shipped text), chat or summaries (the "
        "shipped prompt sets, with reference answers), file:PATH (JSON Lines: 'prompt' or chat 'messages', "
        "optional 'reference' and 'id') or dataset:SOURCE[:split[:field[:reference]]] (the datasets library: a "
        "save_to_disk folder, data files, or a hub id); a set's prompts are fitted to prompt_len (longer: the "
        "middle cut; shorter: corpus text put before)",
    )
    chat_template: bool = Field(
        default=True, description="a prompt set's items go through the model's chat template when it has one"
    )
    task_items: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="a prompt set with reference answers: how many of its items (the first ones) each engine answers "
        "after its timed repetitions, for task quality (ROUGE-L, token F1, exact match); default all, 0: none",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_source(cls, v: str) -> str:
        if v in PROMPT_SOURCES or any(v.startswith(p) and v[len(p) :].strip() for p in ("file:", "dataset:")):
            return v
        raise ValueError(
            f"must be one of {', '.join(PROMPT_SOURCES)}, file:PATH or dataset:SOURCE[:split[:field[:reference]]]"
        )

    @field_validator("batch_sizes")
    @classmethod
    def _positive_unique(cls, v: list[int]) -> list[int]:
        for b in v:
            if b < 1:
                raise ValueError(f"batch sizes must be >= 1 (got {quote(b)})")
        if len(set(v)) != len(v):
            raise ValueError(f"batch sizes must be unique (got {quote(v)})")
        return v

    @field_validator("prompt_len", mode="before")
    @classmethod
    def _length_or_from_data(cls, v: Any) -> Any:
        """One message for both forms (a union's would list each branch's)."""
        if v == "from-data" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_PROMPT_LEN):
            return v
        raise ValueError(f"must be a number of tokens from 1 to {MAX_PROMPT_LEN}, or from-data")

    @model_validator(mode="after")
    def _lengths_from_a_set(self) -> Workload:
        if self.prompt_len == "from-data" and self.prompt in GENERATED_PROMPTS:
            raise ValueError(
                f"prompt_len: from-data needs a prompt set (prompt: {', '.join(SHIPPED_PROMPT_SETS)}, file:PATH or "
                f"dataset:SOURCE), not prompt: {self.prompt}"
            )
        return self

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
    def _ordered(self) -> Repetitions:
        if self.max_reps < self.min_reps:
            raise ValueError(f"max_reps ({self.max_reps}) must be >= min_reps ({self.min_reps})")
        return self


class ValidityLimits(_Strict):
    """When a cell's measurement counts as valid; the rules are :mod:`rooflens.bench.validity`'s."""

    max_cv: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="largest CV (std / mean) of the primary metric (decode tok/s) over the repetitions, a fraction "
        "(0.1 = 10%); default 0.05 on a GPU, 0.10 on a CPU (the device the cell ran on)",
    )
    max_other_load: float = Field(
        default=0.5,
        ge=0,
        le=64,
        description="largest 1-minute load average beyond the run's own threads, as a share of the logical CPUs, "
        "at the start and at the end of a cell's measured window",
    )
    max_clock_drop: float = Field(
        default=0.10,
        gt=0,
        le=1,
        description="largest drop of the CPU clock across a CPU cell's measured window, a fraction of its highest",
    )


class Output(_Strict):
    results_dir: str = "results"
    reports_dir: str = "reports"


class Experiment(_Strict):
    """A whole experiment: model x engines x workloads on one device."""

    name: str = Field(max_length=MAX_NAME_LEN, description="also the name of the experiment's results folder")
    description: str = ""
    model: ModelSpec
    engines: list[EngineSpec] = Field(min_length=1)
    baseline: str | None = Field(default=None, description="label of the engine the others are ratios of")
    workloads: list[Workload] = Field(min_length=1)
    repetitions: Repetitions = Repetitions()
    validity: ValidityLimits = ValidityLimits()
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    hardware: str = "auto"
    threads: int | None = Field(default=None, ge=1, le=1024, description="torch CPU threads")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    energy: bool = True
    output: Output = Output()
    executor: Literal["inline", "subprocess", "ray"] = Field(
        default="inline",
        description="where the cells run: this process, a fresh process per job (per engine under schedule: blocks, "
        "the whole experiment when interleaved), or Ray tasks",
    )
    schedule: Literal["interleaved", "blocks"] = Field(
        default="interleaved",
        description="interleaved: the engines of each workload and batch size are measured in rounds (one repetition "
        "of each per round, in a rotating order), so the machine's drift hits all of them alike and speedups come "
        "from paired rounds; it falls back to blocks when their prepared states do not fit in memory together. "
        "blocks: each engine's repetitions in one block, one engine after another (one process per engine under "
        "the subprocess and ray executors)",
    )
    cell_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="the longest a cell may go without progress (no repetition finished) before its worker is "
        "killed and the cell recorded failed ('timeout after N s'); the sweep goes on. Needs a worker process: "
        "with the default executor it runs under subprocess; 'inline' cannot stop a hung engine, and `rooflens run` "
        "refuses it. "
        "Unset: 900 s to prepare an engine, then 120 s + 10x the slowest repetition (subprocess and ray)",
    )
    attribution: bool = Field(
        default=True,
        description="after each cell's timed repetitions, one more repetition under torch.profiler says where a "
        "pass's time goes: per operator class of the analytic model (q/k/v/o projections, MLP, attention, norms, "
        "...), the engine's own work and the time outside operators, each on the roofline (record: attribution). "
        "Never inside the timed repetitions; false skips it",
    )
    attribution_repetitions: int = Field(
        default=3,
        ge=1,
        le=100,
        description="profiled repetitions per cell (attribution on): each phase's table is their median one, and "
        "each is paired with a bare generation run just before it (profiler off, not instrumented): the check that "
        "the parts add up (record: attribution.phases[].agreement). More pairs tighten that check on a noisy "
        "machine; each costs about two generations and two prefills",
    )
    probe: Literal["never", "auto"] = Field(
        default="never",
        description="auto: on a device with neither datasheet ceilings nor a valid saved probe at the run's "
        "threads, measure them first (as `rooflens hw probe` does, 10-40 s on a CPU; saved and reused only when "
        "valid, else refused and the records say why), so every record has a roofline efficiency",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return parse_model_shorthand(v) if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("must start with a letter or digit and contain only letters, digits, '_', '.' and '-'")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        try:
            parse_device(v)
        except DeviceSpecError:
            raise ValueError(f"must be one of {DEVICE_CHOICES}") from None
        return v

    @field_validator("engines")
    @classmethod
    def _unique_labels(cls, v: list[EngineSpec]) -> list[EngineSpec]:
        if clashes := _clashes([e.display for e in v]):
            raise ValueError(f"engine labels must be unique; give each a distinct 'label' ({clashes})")
        return v

    @field_validator("workloads")
    @classmethod
    def _unique_workload_names(cls, v: list[Workload]) -> list[Workload]:
        if clashes := _clashes([w.display for w in v]):
            raise ValueError(
                f"workload names must be unique (an unnamed workload is called p<prompt_len>-g<gen_len>); "
                f"give each a distinct 'name' ({clashes})"
            )
        return v

    @model_validator(mode="after")
    def _from_data_needs_a_tokenizer(self) -> Experiment:
        for i, w in enumerate(self.workloads):
            if w.prompt_len == "from-data" and self.model.source == "shape":
                raise ValueError(
                    f"workloads[{i}].prompt_len: from-data counts the set's tokens, and a shape: model has no tokenizer "
                    "(give a number, or a builtin or hf model)"
                )
        return self

    @model_validator(mode="after")
    def _baseline_is_an_engine(self) -> Experiment:
        labels = [e.display for e in self.engines]
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"baseline {quote(self.baseline)} is not one of the engines' labels ({', '.join(labels)})")
        return self

    @property
    def baseline_label(self) -> str:
        return self.baseline or self.engines[0].display

    def config_hash(self) -> str:
        """Hash of the validated experiment (defaults filled in), stable across key order.

        ``executor`` says where cells run, ``schedule`` in what order their repetitions are taken, ``probe``
        whether missing ceilings are measured first, ``validity`` how a measurement is judged,
        ``cell_timeout_s`` when a hung one is stopped, ``attribution`` and ``attribution_repetitions`` whether and
        how often the cell is profiled after the timed repetitions, not what is measured: they are left out, so runs
        of one experiment under different executors, schedules or limits (and records from before the fields
        existed) compare.
        """
        blob = json.dumps(
            self.model_dump(
                mode="json",
                exclude={
                    "executor",
                    "schedule",
                    "probe",
                    "validity",
                    "cell_timeout_s",
                    "attribution",
                    "attribution_repetitions",
                },
            ),
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- errors


def _loc_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + shorten(str(part))
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


def format_validation_error(err: ValidationError, source: str, limit: int = 20) -> str:
    """One line per problem (at most ``limit``): ``source: field.path: what is wrong (got value)``."""
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
                msg += f" (got {quote(e['input'])})"
        lines.append(f"{source}: {where}: {msg}")
    if len(lines) > limit:
        lines[limit:] = [f"{source}: ... and {len(lines) - limit} more problems"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- validating and loading


def _check_size(data: Any, source: str) -> None:
    """Refuse data nested deeper than MAX_DEPTH or holding more than MAX_VALUES values, before anything
    recurses into it. YAML aliases count each time they are used, so alias bombs and self-referencing
    aliases are refused too."""
    todo: list[tuple[Any, int]] = [(data, 1)]
    count = 0
    while todo:
        value, depth = todo.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise ConfigError(f"{source}: nested more than {MAX_DEPTH} levels deep")
        if count > MAX_VALUES:
            raise ConfigError(f"{source}: more than {MAX_VALUES} values (counting each use of a YAML alias)")
        if isinstance(value, dict):
            todo += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            todo += [(v, depth + 1) for v in value]


def parse_experiment(data: Any, source: str = "<experiment>") -> Experiment:
    """Check a parsed YAML document against the schema (fields, types, values). Registry checks (engine
    options, model and profile names) are :func:`rooflens.bench.validate.validate_experiment`'s."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the document must be a mapping of fields (got {type(data).__name__})")
    _check_size(data, source)
    try:
        return Experiment.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


class _Loader(yaml.SafeLoader):
    """Safe loading (tags never run code) where a key repeated in a mapping is an error, a value
    that cannot be built (an integer of 5000 digits, a 30 February) is a YAML error at its line, and
    brackets nest at most MAX_DEPTH deep (PyYAML's scanner slows down with the square of that depth)."""

    def fetch_flow_collection_start(self, TokenClass: type) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise ScannerError(None, None, f"brackets nested more than {MAX_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as err:
            raise ConstructorError(None, None, f"cannot read this value ({err})", node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports it
            if key in first_line:
                problem = f"duplicate key {quote(key)} (first at line {first_line[key]})"
                raise ConstructorError(None, None, problem, key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _describe_yaml_error(err: yaml.YAMLError) -> str:
    """`` at line L, column C: what is wrong`` from PyYAML's multi-line message."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(x for x in (err.context, err.problem) if x)
    else:
        where, what = "", str(err).partition("\n")[0]
    return f"{where}: {shorten(what, 160)}"


def _read_text(p: Path) -> str:
    """The text of an experiment file; a directory, a missing, unreadable, huge or non-UTF-8 file is a ConfigError."""
    try:
        if p.is_dir():
            raise ConfigError(f"{p}: is a directory")
        if not p.is_file():
            raise ConfigError(f"{p}: {'not a regular file' if p.exists() else 'no such experiment file'}")
        with p.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the file ({err.strerror or err})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_FILE_BYTES} bytes; an experiment file is a few KB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = f"byte 0x{raw[err.start]:02x} at offset {err.start}"
        raise ConfigError(f"{p}: not UTF-8 text ({bad}); save it as UTF-8") from None


def read_experiment_file(path: str | Path) -> Any:
    """The parsed YAML document of an experiment file (not yet validated); a missing, unreadable, huge,
    non-UTF-8 or invalid YAML file is a :class:`ConfigError`."""
    p = Path(path)
    text = _read_text(p)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML{_describe_yaml_error(err)}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not valid YAML: nested too deeply") from None
    return data


def builtin_experiment_path(name: str = BUILTIN_EXPERIMENT) -> Path:
    """Path of an experiment shipped inside the package (the quickstart)."""
    ref = resources.files("rooflens") / "experiments" / f"{name}.yaml"
    return Path(str(ref))
