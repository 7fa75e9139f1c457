"""The ``mixed_precision`` engine: PMPD's progressive mixed-precision decoding (Chen et al., ICLR 2025), batch 1.

The model's Linear layers become :class:`~rooflens.kernels.multiprecision.MultiPrecisionLinear` (one
rooflens low-bit copy per rung of ``ladder``, each through its fast kernel). The prompt is prefilled at
``prefill_bits`` (default: the top rung; ``original``: the unquantized weights), decoding starts at the top
rung and a scheduler steps down the ladder (:mod:`.schedulers`). A ladder of one rung is uniform
quantization run by the same loop: the fair reference for a PMPD cell.

PMPD's own set-up maps to ``prefill_bits: 4, ladder: [3, 2]`` (prefill at 4 bits, decode 3 -> 2). On a CPU
the rooflens kernels run 3- and 2-bit codes in the 4-bit layout, so only 8 -> 4 changes speed there.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import torch
from torch import nn

from rooflens.engines.base import (
    Engine,
    EngineStat,
    EngineUnavailable,
    RooflineHints,
    TokenClock,
    register,
)
from rooflens.engines.decoding import eos_token_ids
from rooflens.engines.mixed_precision.loop import MixedRun, mixed_decode
from rooflens.engines.mixed_precision.schedulers import (
    ConfidenceScheduler,
    LearnedScheduler,
    Scheduler,
    StaticScheduler,
    switch_step,
)
from rooflens.engines.mixed_precision.training import load, save, scheduler_path, tune
from rooflens.engines.options.mixed_precision import MixedPrecisionOptions
from rooflens.engines.quant.base import copy_for_quantization, untie_from
from rooflens.kernels.linear import kernel_unavailable
from rooflens.kernels.multiprecision import MultiPrecisionLinear, quantize_multiprecision, set_precision

log = logging.getLogger(__name__)


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
            dup, opts.precisions, opts.group_size, opts.symmetric, skip=skip, kernel=opts.kernel, keep_original=keep
        )
        if not self.layers:
            raise EngineUnavailable(f"options.group_size: {opts.group_size} divides no Linear layer's in_features here")
        kept = {name: layer.original for name, layer in self.layers.items()}
        for (
            layer
        ) in self.layers.values():  # the kept originals share the model's weights (read only): do not clone them
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
                k=1.0 if opts.confidence_k is None else opts.confidence_k,
                warmup=opts.confidence_warmup or 10,
                window=opts.confidence_window or 1,
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
        settings = opts.tune_settings()
        path = scheduler_path(target, self.model.info.label, settings)
        cfg = target.config
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        if path.is_file():
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
        save(art, path)
        self.tuning_note = f"tuned now ({time.perf_counter() - t0:.1f} s; the cache was empty), saved to {path}"
        self.tuning_report = art.report
        log.warning("mixed_precision: no cached scheduler tuning for %s; %s", self.model.info.label, self.tuning_note)
        return art

    def reset_stats(self) -> None:
        self._runs = []

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
        )
        self._runs.append(run)
        self._prefill_rows = input_ids.numel()  # the prefill's activation rows pick a kernel's dataflow
        return run.tokens

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

    def stats(self) -> dict[str, EngineStat]:
        if not self._runs or self.module is None:
            return {}
        opts = self.options
        prefill = opts.resolved_prefill_bits
        counts: dict[str, int] = {}
        for r in self._runs:
            for b in r.bits[1:]:
                counts[str(b)] = counts.get(str(b), 0) + 1
        times: dict[int, float] = {}
        for r in self._runs:
            for b, t in r.time_per_bits.items():
                times[b] = times.get(b, 0.0) + t
        storage: dict[str, int] = {}
        for layer in self.layers.values():
            for b, n in layer.storage_bytes().items():
                storage["original" if b is None else str(b)] = storage.get("original" if b is None else str(b), 0) + n
        s: dict[str, EngineStat] = {
            "ladder": EngineStat(value=list(opts.ladder), unit="bit", description="decode precisions, top first"),
            "prefill_bits": EngineStat(
                value="original" if prefill is None else prefill, description="prefill precision"
            ),
            "scheduler": EngineStat(value=opts.scheduler, description="precision scheduler"),
            "scheduler_source": EngineStat(
                value=self.tuning_note or "options", description="where its switch points came from"
            ),
            "mean_decode_bits": EngineStat(
                value=self._decode_bits(),
                unit="bit",
                description="rung bits averaged over the decode steps run (the prefill's token excluded)",
            ),
            "bits_by_step": EngineStat(
                value=self._bits_by_step(),
                unit="bit",
                description="[i] = rung bits at decode step i (step 0 makes the second token), mean over the "
                "generations measured",
            ),
            "decode_tokens_per_bits": EngineStat(
                value=str(dict(sorted(counts.items(), reverse=True))),
                description="decode steps run at each rung (all generations)",
            ),
            "switch_steps": EngineStat(
                value=[r.switches for r in self._runs][-1] if self._runs else [],
                description="decode steps of the step-downs in the last generation",
            ),
            "mean_first_switch_step": EngineStat(
                value=(sum(r.switches[0] for r in self._runs if r.switches) / sum(1 for r in self._runs if r.switches))
                if any(r.switches for r in self._runs)
                else "never",
                description="decode step of the first step-down, mean over the generations that switched",
            ),
            "weight_storage_bytes_per_rung": EngineStat(
                value=str(storage), description="bytes held by the quantized layers per precision (one copy each)"
            ),
            "weight_storage_bytes": EngineStat(
                value=sum(storage.values()),
                unit="B",
                description="all precisions' copies of the quantized layers together (original: shared, not copied)",
            ),
            "quantized_layers": EngineStat(
                value=len(self.layers), unit="layers", description="Linear layers served at every rung"
            ),
            "skipped_layers": EngineStat(
                value=len(self.skipped),
                unit="layers",
                description="; ".join(f"{k}: {v}" for k, v in self.skipped.items()) or "none",
            ),
            "quantize_time_s": EngineStat(
                value=self.quantize_s, unit="s", description="copy + quantization at every rung"
            ),
        }
        for b, t in times.items():
            n = counts.get(str(b), 0)
            s[f"decode_time_per_token_{b}bit_s"] = EngineStat(
                value=t / n if n else 0.0,
                unit="s",
                description=f"decode seconds per step at {b} bits (perf_counter, synchronised)",
            )
        if isinstance(self.scheduler, LearnedScheduler):
            s["learned_choices"] = EngineStat(
                value=list(self.scheduler.choices),
                description="class per step-down in the last generation: 0, T/3, 2T/3, never",
            )
        for key, value in self.tuning_report.items():
            s[f"tuning_{key}"] = EngineStat(
                value=value, description="offline tuning on corpus prompts (ROUGE-L vs the original model)"
            )
        for rung, ppl in self._rung_perplexity().items():
            s[f"perplexity_{rung}"] = EngineStat(
                value=ppl, description="held-out perplexity with every layer at this precision"
            )
        return dict(sorted(s.items()))

    def _rung_perplexity(self) -> dict[str, float]:
        if self._ppl is not None or self.model.tokenizer is None or self.model.info.weights != "real":
            return self._ppl or {}
        from rooflens.bench.quality import heldout_ids, perplexity

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
        counts: dict[int, int] = {}
        for r in self._runs:
            for b in r.bits[1:]:
                counts[b] = counts.get(b, 0) + 1  # type: ignore[index]
        steps = sum(counts.values())
        decode = sum(n * self._read_bytes(b) for b, n in counts.items()) / steps * 8 / elements if steps else None
        prefill = self._read_bytes(self.options.resolved_prefill_bits, self._prefill_rows) * 8 / elements
        return RooflineHints(
            prefill_weight_bits=prefill,
            decode_weight_bits=decode,
            note=f"prefill at {self.options.resolved_prefill_bits or 'original'} bits; decode bits = the rungs' read bytes "
            f"weighted by the decode steps run at each ({dict(sorted(counts.items(), reverse=True))})",
        )
