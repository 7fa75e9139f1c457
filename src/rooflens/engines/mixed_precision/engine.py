"""The ``mixed_precision`` engine: PMPD's progressive mixed-precision decoding (Chen et al., ICLR 2025), batch 1.

The model's Linear layers become :class:`~rooflens.kernels.multiprecision.MultiPrecisionLinear` (one
rooflens low-bit copy per rung of ``ladder``, each through its fast kernel). The prompt is prefilled at
``prefill_bits`` (default: the top rung; ``original``: the unquantized weights), decoding starts at the top
rung and a scheduler steps down the ladder (:mod:`.schedulers`). A ladder of one rung is uniform
quantization run by the same loop: the fair reference for a PMPD cell.

PMPD's own set-up maps to ``prefill_bits: 4, ladder: [3, 2]`` (prefill at 4 bits, decode 3 -> 2). On a CPU
rooflens's AVX2 kernel reads 8-, 4- and 2-bit codes as stored and runs 3-bit codes in the 4-bit packing, so
4 -> 3 changes no bytes there while 3 -> 2 does (torch's int4 kernel, the fallback, runs both in 4 bits).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import torch
from torch import nn

from rooflens.data.quality import heldout_ids, perplexity
from rooflens.engines.base import Engine, EngineStat, EngineUnavailable, Fidelity, RooflineHints, TokenClock
from rooflens.engines.compiled import CompiledDecoder, compile_stats
from rooflens.engines.decoding import eos_token_ids
from rooflens.engines.mixed_precision import fidelity as pmpd
from rooflens.engines.mixed_precision.loop import MixedRun, mixed_decode
from rooflens.engines.mixed_precision.schedulers import (
    ConfidenceScheduler,
    LearnedScheduler,
    Scheduler,
    StaticScheduler,
    switch_step,
)
from rooflens.engines.mixed_precision.training import TuneSettings, cached, load, save, scheduler_path, tune
from rooflens.engines.options.mixed_precision import MixedPrecisionOptions
from rooflens.engines.quant.base import copy_for_quantization, untie_from
from rooflens.engines.quant.hqq import QUANTIZERS
from rooflens.engines.registry import register
from rooflens.engines.stat_table import StatSpec, stats_from_table
from rooflens.kernels.linear import kernel_unavailable
from rooflens.kernels.multiprecision import MultiPrecisionLinear, quantize_multiprecision, set_precision
from rooflens.lowbit_rules import ALLOWED_BITS

log = logging.getLogger(__name__)

_TUNING = "offline tuning on corpus prompts (ROUGE-L vs the original model)"
_STEP_DOWNS = [f"{high}->{low}" for high in ALLOWED_BITS for low in ALLOWED_BITS if high > low]
STATS: dict[str, StatSpec] = {
    "ladder": StatSpec("bit", "decode precisions, top first"),
    "prefill_bits": StatSpec("", "prefill precision"),
    "scheduler": StatSpec("", "precision scheduler"),
    "quantizer": StatSpec("", "how the rungs' codes were chosen: rtn (round-to-nearest) or hqq (half-quadratic)"),
    "scheduler_source": StatSpec("", "where its switch points came from"),
    "mean_decode_bits": StatSpec("bit", "rung bits averaged over the decode steps run (the prefill's token excluded)"),
    "bits_by_step": StatSpec(
        "bit",
        "[i] = rung bits at decode step i (step 0 makes the second token), mean over the generations measured",
    ),
    "decode_tokens_per_bits": StatSpec("", "decode steps run at each rung (all generations)"),
    "switch_steps": StatSpec("", "decode steps of the step-downs in the last generation"),
    "mean_first_switch_step": StatSpec(
        "", "decode step of the first step-down, mean over the generations that switched"
    ),
    "weight_storage_bytes_per_rung": StatSpec("", "bytes held by the quantized layers per precision (one copy each)"),
    "weight_storage_bytes": StatSpec(
        "B", "all precisions' copies of the quantized layers together (original: shared, not copied)"
    ),
    "quantized_layers": StatSpec("layers", "Linear layers served at every rung"),
    "skipped_layers": StatSpec("layers", "{skipped}"),
    "quantize_time_s": StatSpec("s", "copy + quantization at every rung"),
    **{
        f"decode_time_per_token_{b}bit_s": StatSpec(
            "s", f"decode seconds per step at {b} bits (perf_counter, synchronised)"
        )
        for b in ALLOWED_BITS
    },
    "learned_choices": StatSpec("", "class per step-down in the last generation: 0, T/3, 2T/3, never"),
    # the tuning report (training.tune)
    **{f"tuning_{key}": StatSpec("", _TUNING) for key in ("prompts", "gen_len", "seconds")},
    **{
        f"tuning_{figure}_{tag}": StatSpec("", _TUNING)
        for tag in _STEP_DOWNS
        for figure in (
            "rouge_l_by_switch",
            "static_switch",
            "label_counts",
            "classifier_accuracy_train",
            "classifier_accuracy_validation",
        )
    },
    **{
        f"perplexity_{b}bit": StatSpec("", "held-out perplexity with every layer at this precision")
        for b in ALLOWED_BITS
    },
}
"""What the mixed_precision engine reports (``{skipped}``: the layers left unquantized, with why)."""


@register
class MixedPrecisionEngine(Engine):
    name = "mixed_precision"
    summary = (
        "PMPD progressive mixed-precision decoding, lossy: prefill high, decode down a ladder of rooflens low-bit "
        "rungs (one fast-kernel copy each); static / confidence / learned (KV-cache classifier) schedulers"
    )
    Options = MixedPrecisionOptions
    supports_batch = False
    lossless = False
    _tiny = {"train_prompts": 4, "train_prompt_len": 6, "train_gen_len": 6, "classifier_epochs": 3, "group_size": 32}
    examples = (
        {"ladder": [8, 4], "switch_steps": [2], **_tiny},
        {"ladder": [4, 2], "scheduler": "learned", "prefill_bits": "original", **_tiny},
        {"ladder": [8, 3], "scheduler": "confidence", "confidence_warmup": 2, **_tiny},
    )

    options: MixedPrecisionOptions

    def __init__(self, options: MixedPrecisionOptions, model):
        super().__init__(options, model)
        self.module: nn.Module | None = None
        self.layers: dict[str, MultiPrecisionLinear] = {}
        self.skipped: dict[str, str] = {}
        self.scheduler: Scheduler | None = None
        self.tuning_note = ""
        self.tuning_report: dict[str, Any] = {}
        self._runs: list[MixedRun] = []
        self._prefill_rows = 1  # activation rows of the last prefill
        self._ppl: dict[str, Any] | None = None
        self._decoder: CompiledDecoder | None = None

    # -- set-up

    @classmethod
    def extra_weight_bytes(cls, options: MixedPrecisionOptions, model) -> tuple[int, str]:  # type: ignore[override]
        from rooflens.kernels.lowbit import format_bits_per_weight

        n = sum(
            m.weight.numel()
            for _, m in model.model.named_modules()
            if isinstance(m, nn.Linear) and (options.lm_head or not _.endswith("lm_head"))
        )
        bits = sum(format_bits_per_weight(b, options.group_size, options.symmetric) for b in options.precisions)
        return int(
            n * bits / 8
        ), f"one rooflens copy per precision of {list(options.precisions)} ({bits:.1f} bits per weight in all)"

    def prepare(self) -> None:
        if self.module is not None:
            return
        opts = self.options
        device = self.model.device
        why = kernel_unavailable(opts.kernel, device)
        if why:
            raise EngineUnavailable(f"options.kernel: {opts.kernel!r} cannot run here ({why})")
        original = self.model.model
        skip: tuple[str, ...] = () if opts.lm_head else ("lm_head",)
        t0 = time.perf_counter()
        dup = copy_for_quantization(original, skip)
        keep = opts.resolved_prefill_bits is None
        self.layers, self.skipped = quantize_multiprecision(
            dup,
            opts.precisions,
            opts.group_size,
            opts.symmetric,
            skip=skip,
            kernel=opts.kernel,
            keep_original=keep,
            quantizer=QUANTIZERS[opts.quantizer],
        )
        if not self.layers:
            raise EngineUnavailable(f"options.group_size: {opts.group_size} divides no Linear layer's in_features here")
        kept = {name: layer.original for name, layer in self.layers.items()}
        # the kept originals share the model's weights (read only): untie_from must not clone them
        for layer in self.layers.values():
            layer.original = None
        untie_from(dup, original)
        for name, layer in self.layers.items():
            layer.original = kept[name]
        self.quantize_s = time.perf_counter() - t0
        self.module = dup.eval()
        self._eos = eos_token_ids(original)
        self.scheduler = self._make_scheduler()
        self.reset_stats()

    def _make_scheduler(self) -> Scheduler:
        opts = self.options
        ladder = opts.ladder
        if opts.scheduler == "confidence":
            return ConfidenceScheduler(
                ladder,
                k=opts.confidence_option("confidence_k"),
                warmup=int(opts.confidence_option("confidence_warmup")),
                window=int(opts.confidence_option("confidence_window")),
            )
        if not opts.needs_tuning:
            self.tuning_note = "switch_steps from the options" if len(ladder) > 1 else "uniform: one rung"
            return StaticScheduler(ladder, opts.switch_steps or [])
        art = self._tuned()
        if opts.scheduler == "learned":
            return LearnedScheduler(ladder, art.classifiers)
        self._static_fractions = art.static_fractions
        return StaticScheduler(ladder, [None] * (len(ladder) - 1))  # steps set per generation from the fractions

    def _tuned(self):
        opts, target = self.options, self.model.model
        settings = TuneSettings.from_options(opts)
        path = scheduler_path(target, self.model.info.label, settings)
        cfg = target.config
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        if cached(path):
            try:
                art = load(path, kv_heads, head_dim)
                self.tuning_note, self.tuning_report = f"cache {path}", art.report
                return art
            except Exception:  # noqa: BLE001 - a damaged file is replaced below
                pass
        if not opts.train_if_missing:
            raise EngineUnavailable(
                f"options.scheduler: '{opts.scheduler}' needs a tuning of {self.model.info.label} with these settings "
                f"(none in {path.parent}); run `rooflens train mixed-precision {self.model.info.label}` with the same "
                f"options, or set train_if_missing: true"
            )
        t0 = time.perf_counter()
        art = tune(self.module, list(self.layers.values()), target, self.model.tokenizer, settings)
        where = save(art, path) or f"saved to {path}"  # not saved: why, and kept for this run
        self.tuning_note = f"tuned now ({time.perf_counter() - t0:.1f} s; the cache was empty), {where}"
        self.tuning_report = art.report
        log.warning("mixed_precision: no cached scheduler tuning for %s; %s", self.model.info.label, self.tuning_note)
        return art

    def reset_stats(self) -> None:
        self._runs = []

    def profiled_modules(self) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
        return (self.module if self.module is not None else self.model.model), {}

    def scoring_model(self) -> torch.nn.Module | None:
        return None  # precision changes along a generation; per-rung perplexity is in the stats

    # -- generation

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        if input_ids.shape[0] != 1:
            raise ValueError(f"engine 'mixed_precision' supports batch size 1 only (got {input_ids.shape[0]})")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        self.prepare()
        sched = self.scheduler
        assert sched is not None and self.module is not None
        if isinstance(sched, StaticScheduler) and not isinstance(sched, LearnedScheduler) and self.options.needs_tuning:
            sched.switch_steps = [switch_step(f, max_new_tokens) for f in self._static_fractions]
        run = mixed_decode(
            self.module,
            self.layers.values(),
            input_ids,
            max_new_tokens,
            self.options.resolved_prefill_bits,
            sched,
            self._eos,
            clock,
            session=self._session(input_ids, max_new_tokens),
        )
        self._runs.append(run)
        self._prefill_rows = input_ids.numel()  # the prefill's activation rows pick a kernel's dataflow
        return run.tokens

    # -- compiled

    def _session(self, input_ids: torch.Tensor, n_new: int) -> Any:
        """The compiled loop's static-cache session, None when eager (the loop's default)."""
        if not self.options.compile:
            return None
        if self._decoder is None:
            assert self.module is not None
            o = self.options
            self._decoder = CompiledDecoder(self.module, self.model.device, o.compile_mode, o.compile_gemv)
        return self._decoder.session(input_ids.shape[0], input_ids.shape[1], n_new)

    @torch.inference_mode()
    def warm(self, prompts: torch.Tensor, n_new: int) -> None:
        """Compile the prefill at its precision and the decode step at every rung for this shape: a rung is one
        graph, and a first switch to it inside a timed repetition would compile there."""
        if not self.options.compile:
            return
        self.prepare()
        session = self._session(prompts, n_new)
        assert self._decoder is not None
        where = f"batch {prompts.shape[0]}, prompt {prompts.shape[1]}"
        token = None
        for phase, bits in [
            ("prefill", self.options.resolved_prefill_bits),
            *(("decode", b) for b in self.options.ladder),
        ]:
            t0 = time.perf_counter()
            set_precision(self.layers.values(), bits)
            logits = session.prefill(prompts) if token is None else session.step(token)
            token = logits.argmax(-1, keepdim=True)
            rung = "original weights" if bits is None else f"{bits}-bit"
            self._decoder.log_warm(f"{phase} at {rung}, {where}", time.perf_counter() - t0)

    # -- statistics

    def _decode_bits(self) -> float | None:
        bits = [b for r in self._runs for b in r.bits[1:]]
        return sum(bits) / len(bits) if bits else None

    def _bits_by_step(self) -> list[float]:
        """[i] = mean rung bits at decode step i over the generations that reached it (the report's precision panel)."""
        steps = max((len(r.bits) - 1 for r in self._runs), default=0)
        out = []
        for i in range(steps):
            at = [r.bits[i + 1] for r in self._runs if len(r.bits) > i + 1]
            out.append(round(sum(at) / len(at), 4))
        return out

    def _steps_per_rung(self) -> dict[int, int]:
        """Decode steps run at each rung, all generations (first seen first)."""
        counts: dict[int, int] = {}
        for r in self._runs:
            for b in r.bits[1:]:
                counts[b] = counts.get(b, 0) + 1  # type: ignore[index]
        return counts

    def _storage_per_rung(self) -> dict[str, int]:
        storage: dict[str, int] = {}
        for layer in self.layers.values():
            for b, n in layer.storage_bytes().items():
                key = "original" if b is None else str(b)
                storage[key] = storage.get(key, 0) + n
        return storage

    def fidelity(self) -> Fidelity:
        return pmpd.fidelity(self.options)

    def stats(self) -> dict[str, EngineStat]:
        if not self._runs or self.module is None:
            return {}
        values = {**self._run_values(), **self._setup_values()}
        values.update({f"tuning_{key}": value for key, value in self.tuning_report.items()})
        values.update({f"perplexity_{rung}": ppl for rung, ppl in self._rung_perplexity().items()})
        skipped = "; ".join(f"{k}: {v}" for k, v in self.skipped.items()) or "none"
        table = stats_from_table(STATS, values, skipped=skipped)
        return dict(sorted({**table, **compile_stats(self._decoder, self.options.compile_mode)}.items()))

    def _run_values(self) -> dict[str, object]:
        """What the generations did: rungs per step, switches, time per rung, the learned scheduler's choices."""
        counts = {str(b): n for b, n in self._steps_per_rung().items()}
        times: dict[int, float] = {}
        for r in self._runs:
            for b, t in r.time_per_bits.items():
                times[b] = times.get(b, 0.0) + t
        switched = [r.switches[0] for r in self._runs if r.switches]
        values: dict[str, object] = {
            "mean_decode_bits": self._decode_bits(),
            "bits_by_step": self._bits_by_step(),
            "decode_tokens_per_bits": str(dict(sorted(counts.items(), reverse=True))),
            "switch_steps": self._runs[-1].switches,
            "mean_first_switch_step": sum(switched) / len(switched) if switched else "never",
        }
        for b, t in times.items():
            n = counts.get(str(b), 0)
            values[f"decode_time_per_token_{b}bit_s"] = t / n if n else 0.0
        if isinstance(self.scheduler, LearnedScheduler):
            values["learned_choices"] = list(self.scheduler.choices)
        return values

    def _setup_values(self) -> dict[str, object]:
        """The options and the quantized copies: ladder, prefill, scheduler, storage, layers."""
        opts = self.options
        prefill = opts.resolved_prefill_bits
        storage = self._storage_per_rung()
        return {
            "ladder": list(opts.ladder),
            "prefill_bits": "original" if prefill is None else prefill,
            "scheduler": opts.scheduler,
            "quantizer": opts.quantizer,
            "scheduler_source": self.tuning_note or "options",
            "weight_storage_bytes_per_rung": str(storage),
            "weight_storage_bytes": sum(storage.values()),
            "quantized_layers": len(self.layers),
            "skipped_layers": len(self.skipped),
            "quantize_time_s": self.quantize_s,
        }

    def _rung_perplexity(self) -> dict[str, float]:
        if self._ppl is not None or self.model.tokenizer is None or self.model.info.weights != "real":
            return self._ppl or {}
        ids = heldout_ids(self.model.tokenizer)
        self._ppl = {}
        for b in self.options.ladder:
            set_precision(self.layers.values(), b)
            self._ppl[f"{b}bit"] = perplexity(self.module, ids)[0]
        set_precision(self.layers.values(), self.options.ladder[0])
        return self._ppl

    def _read_bytes(self, bits: Optional[int], rows: int = 1) -> int:
        from rooflens.engines.quant.storage import decode_read_bytes

        set_precision(self.layers.values(), bits)
        try:
            dtype = next(self.model.model.parameters()).dtype
            return decode_read_bytes(self.module, self.layers, self.model.device, dtype, rows)  # type: ignore[arg-type]
        finally:
            set_precision(self.layers.values(), self.options.ladder[0])

    def roofline_hints(self) -> RooflineHints:
        """Prefill at its own bits; decode at the step-weighted mean of the rungs' read bytes."""
        from rooflens.roofline.analytic import decode_weight_elements

        if not self._runs or self.module is None:
            return RooflineHints()
        try:
            elements = decode_weight_elements(self.model.model.config)
        except ValueError:
            return RooflineHints()
        counts = self._steps_per_rung()
        steps = sum(counts.values())
        decode = sum(n * self._read_bytes(b) for b, n in counts.items()) / steps * 8 / elements if steps else None
        prefill = self._read_bytes(self.options.resolved_prefill_bits, self._prefill_rows) * 8 / elements
        return RooflineHints(
            prefill_weight_bits=prefill,
            decode_weight_bits=decode,
            note=f"prefill at {self.options.resolved_prefill_bits or 'original'} bits; decode bits = the rungs' read bytes "
            f"weighted by the decode steps run at each ({dict(sorted(counts.items(), reverse=True))})",
        )
