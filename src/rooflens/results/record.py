"""The result record: one JSON document per cell (engine x workload x batch size).

Every number says where it came from: ``measured`` (read from a clock, counter or allocator),
``derived`` (arithmetic on measured numbers), ``datasheet`` (a hardware profile) or
``modelled`` (an analytic estimate, never mixed with measured fields).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rooflens.results.stat import EngineStat, Fidelity

SCHEMA_VERSION = 1
Provenance = Literal["measured", "derived", "datasheet", "modelled"]
Status = Literal["ok", "failed", "unavailable"]


class ModelInfo(BaseModel):
    """What a record says about the model it measured."""

    source: Literal["builtin", "hf", "shape"]
    id: str
    label: str
    weights: Literal["real", "random"]
    weights_note: str
    weights_origin: str | None = None  # "checkpoint", "dequantized from GGUF Q4_1", "random init" (None: older records)
    model_type: str
    architecture: str
    n_params: int
    param_bytes: int
    dtype: str
    dtype_reason: str | None = None
    num_layers: int | None
    hidden_size: int | None
    vocab_size: int | None
    has_tokenizer: bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metric(_Model):
    """A metric over the measured repetitions, with its unit, provenance and raw samples."""

    unit: str
    source: Provenance
    how: str
    n: int
    median: float
    p10: float
    p90: float
    mean: float
    std: float
    cv: float
    min: float
    max: float
    samples: list[float]


class Quantity(_Model):
    """A single value with its unit and provenance."""

    value: float | None
    unit: str
    source: Provenance
    how: str


class EnergyResult(_Model):
    measured: bool
    meter: str
    domain: str = ""
    reason: str | None = None
    window_s: float | None = None
    short_window: bool = False
    warnings: list[str] = Field(default_factory=list)
    joules: Quantity | None = None
    joules_per_rep: Quantity | None = None
    tokens_per_joule: Quantity | None = None
    mean_power_w: Quantity | None = None


class MemoryResult(_Model):
    kind: Literal["cuda_allocator", "process_rss"]
    peak_bytes: Quantity
    baseline_bytes: Quantity
    how: str


class TaskScore(_Model):
    """A task metric's mean over the scored items, with a 95 % percentile-bootstrap interval (measured)."""

    mean: float
    low: float
    high: float


class TaskItem(_Model):
    """One item of the prompt set: the engine's answer and its scores."""

    id: str
    prompt_tokens: int
    answer: str
    answer_tokens: int
    ended: bool  # the answer ended with EOS within gen_len tokens (else it was cut at gen_len)
    vs_reference: dict[str, float]
    vs_baseline: dict[str, float] | None = None


class TaskQuality(_Model):
    """Quality on the prompt set's task: each item with a reference answer, answered by the engine (untimed,
    after the timed repetitions) and scored against the reference and against the baseline engine's answer."""

    prompt_set: str
    how: str
    items: list[TaskItem]
    prompt_tokens: dict[str, float]  # p10 / p50 / p90 of the items' prompt lengths
    vs_reference: dict[str, TaskScore]  # by metric: rouge_l, token_f1, exact_match
    vs_baseline: dict[str, TaskScore] | None = None  # the same metrics, the baseline's answers as references
    note: str | None = None


class QualityResult(_Model):
    """Output quality against a reference (the baseline engine's greedy tokens, a held-out text, a task's answers)."""

    reference: str
    agreement: Quantity | None = None
    first_divergence: Quantity | None = None
    rouge_l: Quantity | None = None
    perplexity: Quantity | None = None
    task: TaskQuality | None = None
    note: str | None = None


class ProbeRef(_Model):
    """The probe a set of measured ceilings came from, and how good it was when the record was made.

    Enough to judge it again later against the rules of the day (``rooflens show`` marks positions
    whose probe no longer validates): its spread, its age at the run and its verdict.
    """

    file: str  # the probe file's name in the user's probes folder: <device-slug>-t<threads>.json
    device_name: str
    threads: int  # the CPU threads it was measured at (0: a GPU probe, whatever the CPU threads)
    measured_at: str  # UTC ISO 8601
    age_s: float  # derived: the record's time minus measured_at
    bandwidth_cv: float  # measured: CV of the copy bandwidth's reps
    peak_flops_cv: float  # measured: CV of this dtype's GEMM reps
    bandwidth_median_to_best: float  # measured: median rep / best rep
    peak_flops_median_to_best: float
    valid: bool  # its verdict under ``rules`` when the record was made
    rules: dict[str, float] = Field(default_factory=dict)  # the limits it was judged by


class CeilingRef(_Model):
    """One set of roofline ceilings: from the hardware profile's datasheet, or measured by `hw probe`."""

    source: Literal["datasheet", "measured"]
    ref: str
    dtype: str
    bandwidth: Quantity
    peak_flops: Quantity
    probe: ProbeRef | None = None  # measured ceilings: the probe they came from (None in older records)


class PhasePosition(_Model):
    """Where one phase of a measured run sits on the roofline.

    Prefill: one pass over the prompt for the whole batch, timed by TTFT. Decode: one generated
    token position for the whole batch (a decode step; divided by tokens per target pass under
    speculation), timed by TPOT, at the mean decode context.
    """

    phase: Literal["prefill", "decode"]
    weight_bits: float | None = None  # bits per weight this phase's analytic bytes use
    flops: Quantity
    weight_bytes: Quantity
    kv_bytes: Quantity
    act_bytes: Quantity
    bytes: Quantity
    intensity: Quantity
    time_s: Quantity
    achieved_flops: Quantity
    achieved_bandwidth: Quantity
    attainable_flops: dict[str, Quantity] = Field(default_factory=dict)
    efficiency: dict[str, Quantity] = Field(default_factory=dict)
    bound: dict[str, Literal["memory", "compute"]] = Field(default_factory=dict)

    def efficiency_pct(self) -> float | None:
        """Efficiency against the measured ceilings when probed, else the datasheet's."""
        for source in ("measured", "datasheet"):
            q = self.efficiency.get(source)
            if q is not None and q.value is not None:
                return 100 * q.value
        return None


class RooflineResult(_Model):
    analytic_model: str
    weight_bits: float | None = None  # the decode phase's (each phase's own: prefill.weight_bits, decode.weight_bits)
    act_bits: float | None = None
    kv_bits: float | None = None
    decode_context: int | None = None
    tokens_per_pass: float | None = None
    layers_executed: float | None = None
    engine_note: str = ""
    ceilings: list[CeilingRef] = Field(default_factory=list)
    prefill: PhasePosition | None = None
    decode: PhasePosition | None = None
    reason: str | None = None
    probe_note: str | None = None  # why there are no measured ceilings (no valid probe at this thread count, ...)


class OpClassRow(_Model):
    """One class of a pass's time (per pass, the mean over the profiled passes): an operator class of the analytic
    model (``operator``), an engine's own work (``engine``) or the time outside every operator (``outside``).

    ``modelled`` names the analytic ops the class is compared with (empty: the analytic model has none); then
    ``predicted_s`` is their time at each ceiling source and ``predicted_to_measured`` that over the measured time:
    the analytic model's error for this class (1.0 = exact, 0.3 = the class runs at 30 % of the roof).
    """

    name: str
    kind: Literal["operator", "engine", "outside"]
    time_s: Quantity
    share: float  # of the attributed pass time
    calls: float | None = None  # top-level operators per pass
    modelled: list[str] = Field(default_factory=list)
    flops: Quantity | None = None
    bytes: Quantity | None = None
    intensity: float | None = None
    achieved_flops: Quantity | None = None
    achieved_bandwidth: Quantity | None = None
    predicted_s: dict[str, Quantity] = Field(default_factory=dict)
    predicted_to_measured: dict[str, Quantity] = Field(default_factory=dict)
    efficiency: dict[str, Quantity] = Field(default_factory=dict)  # achieved / attainable FLOP/s per ceiling source


class PhaseAttribution(_Model):
    """Where the time of one phase's pass goes, from the median of a cell's profiled repetitions."""

    phase: Literal["prefill", "decode"]
    passes: int  # passes profiled (prefill: 1; decode: emissions after the first)
    pass_time_s: Quantity  # profiled, mean per pass
    removed_s: Quantity  # the profiler's and instrumentation's estimated cost per pass, taken out
    attributed_pass_time_s: Quantity  # pass_time_s - removed_s: what the rows add up to
    timed_pass_time_s: Quantity | None = (
        None  # the same pass in the timed repetitions (median TTFT; TPOT x tokens/pass)
    )
    profiler_overhead: Quantity | None = None  # pass_time_s / timed_pass_time_s - 1
    # does the split add up? attributed / bare - 1, the median over agreement_pairs (the prefill's is the check; the
    # decode's is near 0 by construction on a CPU), else (no pairs) attributed_pass_time_s / timed_pass_time_s - 1
    agreement: Quantity | None = None
    agreement_pairs: list[list[float]] = Field(default_factory=list)  # [bare pass, attributed profiled pass], s
    inside_operators: float  # share of the attributed pass time inside operators
    coverage: float  # share of the time inside operators in named classes (not the catch-alls setup, loop)
    rows: list[OpClassRow] = Field(default_factory=list)


class Attribution(_Model):
    """Per-operator attribution of a cell: one repetition after the timed ones, under ``torch.profiler``."""

    profiler: str
    phases: list[PhaseAttribution] = Field(default_factory=list)
    reason: str | None = None  # why there is none
    note: str = ""


class CellSpec(_Model):
    engine: str
    engine_label: str
    engine_options: dict[str, Any]
    workload: str
    prompt_len: int
    gen_len: int
    batch_size: int
    prompt_source: str


class RepetitionInfo(_Model):
    warmup: int
    measured: int
    measured_seconds: float = Field(
        description="blocks: the measured window; interleaved: this engine's own repetitions"
    )
    stopped_by: Literal["min_reps_and_seconds", "max_reps"]
    schedule: Literal["blocks", "interleaved", "ab"] = Field(
        default="blocks",
        description="blocks: the repetitions in one block; interleaved: in rounds with the engines of ``rounds_with``; "
        "ab: in blocks alternating with another revision's worker (rooflens ab), ``rounds`` pairing them",
    )
    rounds: list[int] | None = Field(
        default=None, description="interleaved: the round of each measured repetition (the order of the samples)"
    )
    rounds_with: list[str] = Field(
        default_factory=list, description="interleaved: the other engines' labels measured in the same rounds"
    )
    schedule_note: str = Field(default="", description="why this schedule (e.g. why not interleaved)")


ValidityCheck = Literal[
    "cv", "repetitions", "seconds", "load_at_start", "load_at_end", "cpu_clock", "gpu_throttle", "other_measurement"
]


class ValidityReason(_Model):
    """One broken rule of a cell's validity: what was measured, and the limit it broke."""

    check: ValidityCheck
    value: float
    limit: float | None  # None where the rule has no number (an NVML slowdown reason, another measurement)
    unit: str
    source: Provenance
    message: str  # short, for tables: "cv 14% > 10%"


class Validity(_Model):
    """Whether a cell's figures can be vouched for: ``valid``, or ``invalid`` with the reasons.

    ``n/a``: not judged (the cell did not measure, or its record predates the check). The rules are
    :mod:`rooflens.bench.validity`'s; ``limits`` holds those applied, ``measured`` the conditions they were
    applied to, ``notes`` what could not be checked here and why (never a reason).
    """

    status: Literal["valid", "invalid", "n/a"] = "n/a"
    reasons: list[ValidityReason] = Field(default_factory=list)
    limits: dict[str, float] = Field(default_factory=dict)
    measured: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    other_measurement: bool | None = None  # another measurement on the machine in the window; None: not checked

    @property
    def invalid(self) -> bool:
        return self.status == "invalid"

    def summary(self) -> str:
        """``valid``, ``n/a`` or ``invalid (cv 14% > 10%; ...)``."""
        if not self.invalid:
            return self.status
        return f"invalid ({'; '.join(r.message for r in self.reasons)})"


class ErrorInfo(_Model):
    type: str
    message: str
    traceback: str | None = None


class Record(_Model):
    schema_version: int = SCHEMA_VERSION
    record_id: str
    status: Status
    reason: ErrorInfo | None = None
    experiment: dict[str, Any]
    cell: CellSpec
    model: ModelInfo | None
    device: str
    hardware_profile: dict[str, Any]
    metrics: dict[str, Metric] = Field(default_factory=dict)
    energy: EnergyResult | None = None
    memory: MemoryResult | None = None
    engine_stats: dict[str, EngineStat] = Field(default_factory=dict)
    fidelity: Fidelity | None = None  # a technique engine's run against its paper's reference setup
    quality: QualityResult | None = None
    roofline: RooflineResult | None = None
    attribution: Attribution | None = None
    repetitions: RepetitionInfo | None = None
    validity: Validity = Field(default_factory=Validity)
    environment: dict[str, Any]
    started_at: str
    finished_at: str
