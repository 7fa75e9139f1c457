"""Weight quantization + Hugging Face ``generate``: torchao, bitsandbytes, or rooflens's own low-bit format.

The engine is the ``hf`` baseline (greedy, fixed length, optional static cache + torch.compile) run on
a *quantized copy* of the shared model, so every other engine keeps the original weights. Each backend
is a handler of :mod:`rooflens.engines.quant` (its module's docstring has the details); the options and
format tables are in :mod:`rooflens.engines.options.quantized`. This module holds the engine, which copies
the model, lets the handler quantize the copy and measures the result, and the table of its statistics.

Backends and formats
--------------------
``torchao`` (``quantize_`` on every ``nn.Linear`` but the LM head)
    * ``int8_weight_only`` — int8 per-output-channel weights.
    * ``int8_dynamic`` — int8 weights, activations quantized to int8 per token at run time (W8A8).
    * ``int4_weight_only`` — the tinygemm int4 kernel, **CUDA and bfloat16 only** (on CPU the cell is
      unavailable with the reason).
    * ``intx_weight_only`` — 2 to 8 bits in groups, **accuracy emulation**: the codes are stored one per
      int8, so memory and bytes moved are those of int8 (+ scales and zero points). The engine's
      statistics and roofline hints use that real storage, not the nominal bits, and say ``emulated: true``.
``bitsandbytes`` (``Linear8bitLt`` / ``Linear4bit`` swapped in for every ``nn.Linear`` but the LM head)
    * ``int8`` — LLM.int8() (outlier threshold 6.0).
    * ``nf4`` — 4-bit NormalFloat, blocks of ``group_size`` (64), fp32 absmax per block. Storage is
      measured after one forward pass: bitsandbytes may repack 4-bit weights for its CPU kernel then.
``rooflens`` (``rooflens.kernels.quantize_linear_layers``)
    * ``groupwise`` — our packed group-wise format, ``bits`` 8/4/3/2, ``group_size`` 32/64/128,
      ``symmetric`` or not (see :mod:`rooflens.kernels.lowbit` for the exact layout and bits per weight).
      On CUDA the forward is the Triton dequant-matmul kernel; on CPU rooflens's AVX2 kernel, where it cannot
      be built torch's int4 CPU kernel; elsewhere the plain-torch reference (dequantize every call, then a
      matmul): a correctness path, not a fast one. The ``kernel`` option forces one.

The embeddings stay in the model dtype, and so does the LM head unless ``lm_head: true`` (a tied
embedding is then untied and keeps its dense table).

Measured at ``prepare()`` and reported as engine statistics: storage bytes of all weights after
quantization, of the quantized layers alone, bits per weight over the quantized layers and over all
parameters, the number of quantized layers, the quantization time, and the weight bytes a decode step
reads. ``roofline_hints().weight_bits`` is those read bytes x 8 / the weight elements the analytic model
reads, so the roofline's bytes per token are what the kernels read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from rooflens.engines.base import EngineStat, EngineUnavailable, RooflineHints, TokenClock, synchronize
from rooflens.engines.hf import HFEngine
from rooflens.engines.options.quantized import QuantizedOptions
from rooflens.engines.quant import (
    RooflensHandler,
    copy_for_quantization,
    decode_read_bytes,
    get_handler,
    linear_targets,
    model_weight_bytes,
    untie_from,
)
from rooflens.engines.quant.base import skip_entry
from rooflens.engines.quant.lowbit import kernel_path
from rooflens.engines.registry import register
from rooflens.engines.stat_table import StatSpec, stats_from_table
from rooflens.kernels.native import native_unavailable
from rooflens.roofline.analytic import decode_weight_elements

if TYPE_CHECKING:
    from rooflens.kernels import QuantizationReport
    from rooflens.models.loader import LoadedModel

# ---------------------------------------------------------------------------- the engine


@dataclass
class QuantizationSummary:
    """What prepare() measured (all sizes in bytes)."""

    total_bytes: int  # every weight after quantization (quantized layers + what stays dense)
    quantized_bytes: int  # quantized layers' weights incl. scales / zero points / quant state
    quantized_params: int  # elements of those weights before quantization
    original_bytes: int  # every weight of the original model
    n_params: int  # parameters of the original model (tied counted once)
    quantized_layers: int
    skipped: dict[str, str] = field(default_factory=dict)
    quantize_s: float = 0.0
    copy_s: float = 0.0

    @property
    def bits_quantized(self) -> float:
        return self.quantized_bytes * 8 / self.quantized_params if self.quantized_params else float("nan")

    @property
    def bits_model(self) -> float:
        return self.total_bytes * 8 / self.n_params


EMULATED = (
    "accuracy emulation: torchao IntxUnpackedToInt8Tensor keeps each int{nominal} code in an int8, so memory and "
    "bytes moved are those of int8 (+ scales and zero points), not {nominal}-bit; the roofline uses the real storage"
)
NOT_EMULATED = "the codes are stored at their nominal width (weight storage reflects the format)"

STATS: dict[str, StatSpec] = {
    "format": StatSpec(description="backend, format, bits, group size, symmetry"),
    "library": StatSpec(description="the quantization library and its version"),
    "weight_storage_bytes": StatSpec(
        "B",
        "all weights after quantization (dense parameters + quantized layers' storage); quantized layers: {storage}",
    ),
    "quantized_weight_bytes": StatSpec("B", "weights of the quantized layers only; {storage}"),
    "original_weight_bytes": StatSpec("B", "all parameters of the unquantized model"),
    "compression": StatSpec("x", "original weight bytes / weight bytes after quantization"),
    "bits_per_weight_quantized": StatSpec(
        "bit", "quantized layers' weight storage x 8 / their weight elements (scales and zero points included)"
    ),
    "bits_per_weight_model": StatSpec(
        "bit", "all weight storage x 8 / all parameters (embeddings, norms and LM head stay in the model dtype)"
    ),
    "quantized_layers": StatSpec("layers", "Linear layers quantized"),
    "skipped_layers": StatSpec("layers", "Linear layers left in the model dtype: {skipped}"),
    "quantize_time_s": StatSpec(
        "s",
        "quantizing the copied model (device synchronised); a backend's lazy work at the first forward "
        "(bitsandbytes' NF4 repack for its CPU kernel) is not included",
    ),
    "copy_time_s": StatSpec("s", "deep copy of the shared model (the Linear weights to quantize are read, not copied)"),
    "nominal_bits": StatSpec("bit", "bits of a weight code in the format"),
    "emulated": StatSpec(description="{emulation}"),  # EMULATED or NOT_EMULATED
    "backend_notes": StatSpec(description="what the backend does here beyond its format"),
    "kernel": StatSpec(description="LowBitLinear forward path"),  # rooflens backend only
    "weight_read_bytes_per_step": StatSpec(
        "B",
        "weight bytes one decode step reads (batch 1): what each quantized layer's kernel reads "
        "(rooflens: its kernel's own layout, padding included), every other weight once, one embedding row",
    ),
}
"""What the engine's statistics mean; ``{storage}`` is the backend's storage note."""


def options_unavailable_reason(o: QuantizedOptions, device: torch.device, dtype: str | None = None) -> str | None:
    """Why this backend/format cannot run on ``device`` with a model of ``dtype`` (None when it can)."""
    return get_handler(o.backend).unavailable(o.spec(), device, dtype)


@register
class QuantizedEngine(HFEngine):
    name = "quantized"
    summary = (
        "HF generate on a quantized copy of the model: torchao (int8, W8A8, int4 on CUDA, intx emulation), "
        "bitsandbytes (LLM.int8, NF4) or rooflens's own group-wise low-bit format (Triton kernel on CUDA)"
    )
    Options = QuantizedOptions
    options: QuantizedOptions
    lossless = False
    examples = ({"bits": 4, "group_size": 32}, {"bits": 8, "group_size": 32, "lm_head": True, "kernel": "torch"})

    def __init__(self, options: QuantizedOptions, model: LoadedModel):
        super().__init__(options, model)
        self.spec = options.spec()
        self.handler = get_handler(options.backend)
        self._module: nn.Module | None = None
        self._layers: dict[str, nn.Module] = {}
        self.measured: QuantizationSummary | None = None
        self.report: QuantizationReport | None = None  # rooflens backend
        self._prefill_rows: int | None = None  # of the last generate()

    # -- availability

    @classmethod
    def extra_weight_bytes(cls, options: QuantizedOptions, model: LoadedModel) -> tuple[int, str]:  # type: ignore[override]
        """The quantized copy: every weight not quantized is copied, the quantized ones take their codes (at
        least a byte each below 8 bits where emulated) plus a quarter for scales and zero points, twice where
        a rooflens CPU kernel keeps a second layout beside the format (torch's int4 kernel; the native kernel's
        4-bit packing of 3-bit codes); an estimate for the memory pre-check."""
        targets = linear_targets(model.model, options.skip)
        target_params = sum(lin.weight.numel() for _, lin in targets)
        target_bytes = sum(lin.weight.numel() * lin.weight.element_size() for _, lin in targets)
        code_bits = 8 if options.emulated else options.resolved_bits
        layouts = 1
        if options.backend == "rooflens" and model.device.type == "cpu":
            kernel = options.kernel or "auto"
            int4pack = kernel == "int4pack" or (kernel == "auto" and native_unavailable() is not None)
            layouts = 2 if int4pack or (kernel in ("auto", "native", "native_a8") and options.resolved_bits == 3) else 1
        quantized = int(target_params * code_bits / 8 * 1.25 * layouts)
        return model.info.param_bytes - target_bytes + quantized, f"quantized copy ({options.describe()})"

    def unavailable_reason_here(self) -> str | None:
        """Like :meth:`unavailable_reason`, for these options (backend, format, kernel)."""
        return self.unavailable_reason(self.model.device, self.model) or options_unavailable_reason(
            self.options, self.model.device, self.model.info.dtype
        )

    # -- the model

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            raise RuntimeError("engine 'quantized': call prepare() first (it builds the quantized copy)")
        return self._module

    def prepare(self) -> None:
        if self._module is not None:
            return
        reason = self.unavailable_reason_here()
        if reason is not None:
            raise EngineUnavailable(reason)
        spec, original, device = self.spec, self.model.model, self.model.device
        t0 = time.perf_counter()
        dup = copy_for_quantization(original, spec.skip)
        t1 = time.perf_counter()
        with torch.no_grad():
            layers = self.handler.quantize(dup, spec, device)
        synchronize(device)
        t2 = time.perf_counter()
        untie_from(dup, original)
        if not layers:
            raise RuntimeError(f"{self.options.describe()}: no Linear layer of the model could be quantized")
        dup.eval()
        self._smoke(dup)
        targets = dict(linear_targets(original, spec.skip))
        skipped = {
            name: f"matches skip entry {s!r}"
            for name, mod in original.named_modules()
            if isinstance(mod, nn.Linear) and (s := skip_entry(name, spec.skip)) is not None
        }
        skipped.update({n: "left in the model dtype by the quantizer" for n in targets if n not in layers})
        if isinstance(self.handler, RooflensHandler):
            self.report = self.handler.report
            skipped.update(self.report.skipped)
        total, qbytes = model_weight_bytes(dup, layers)
        self.measured = QuantizationSummary(
            total_bytes=total,
            quantized_bytes=qbytes,
            quantized_params=sum(targets[n].weight.numel() for n in layers),
            original_bytes=self.model.info.param_bytes,
            n_params=self.model.info.n_params,
            quantized_layers=len(layers),
            skipped=skipped,
            quantize_s=t2 - t1,
            copy_s=t1 - t0,
        )
        self._module = dup
        self._layers = layers

    @torch.inference_mode()
    def _smoke(self, model: nn.Module) -> None:
        """One short forward: fails early on a broken backend, and lets lazy repacking happen (bitsandbytes)."""
        ids = torch.arange(1, 5, device=self.model.device).unsqueeze(0) % self.model.vocab_size
        logits = model(ids).logits
        if not bool(torch.isfinite(logits).all()):
            raise RuntimeError(f"{self.options.describe()}: the quantized model produced non-finite logits")

    # -- statistics

    def stats(self) -> dict[str, EngineStat]:
        s, o = self.measured, self.options
        if s is None:
            return {}
        notes = self.handler.notes(self.spec, self.module, self.model.device, self.model.info.dtype, compiled=o.compile)
        rooflens = isinstance(self.handler, RooflensHandler)
        values = {
            "format": o.describe(),
            "library": self.handler.library(),
            "weight_storage_bytes": s.total_bytes,
            "quantized_weight_bytes": s.quantized_bytes,
            "original_weight_bytes": s.original_bytes,
            "compression": s.original_bytes / s.total_bytes,
            "bits_per_weight_quantized": s.bits_quantized,
            "bits_per_weight_model": s.bits_model,
            "quantized_layers": s.quantized_layers,
            "skipped_layers": len(s.skipped),
            "quantize_time_s": s.quantize_s,
            "copy_time_s": s.copy_s,
            "nominal_bits": o.resolved_bits,
            "emulated": "true" if o.emulated else "false",
            "backend_notes": "; ".join(notes) if notes else None,
            "kernel": kernel_path(self._layers, self.model.device) if rooflens else None,
            "weight_read_bytes_per_step": self._read_bytes(),
        }
        emulation = EMULATED if o.emulated else NOT_EMULATED
        return {
            **stats_from_table(
                STATS,
                values,
                storage=self.handler.storage_note(self.spec),
                skipped="; ".join(f"{k}: {v}" for k, v in s.skipped.items()),
                emulation=emulation.format(nominal=o.resolved_bits),
            ),
            **self.compile_stats(),
        }

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        self._prefill_rows = input_ids.numel()  # the prefill's activation rows pick a kernel's dataflow
        return super().generate(input_ids, max_new_tokens, clock)

    def _read_bytes(self, rows: int = 1) -> int:
        dtype = getattr(torch, self.model.info.dtype)
        return decode_read_bytes(self.module, self._layers, self.model.device, dtype, rows)

    def roofline_hints(self) -> RooflineHints:
        s, o = self.measured, self.options
        if s is None:
            return RooflineHints()
        read = self._read_bytes()
        try:
            elements = decode_weight_elements(self.model.model.config)
        except ValueError:  # a model type the analytic model does not know: it places no roofline point either
            return RooflineHints(
                weight_bits=s.bits_model, note=f"{o.describe()}: weight_bits = weight storage x 8 / parameters"
            )
        note = (
            f"{o.describe()}: weight_bits = weight bytes a decode step reads ({read / 1e6:.2f} MB: each quantized "
            f"layer's kernel's reads, every other weight once, one embedding row) x 8 / weight elements the analytic "
            f"model reads ({elements / 1e6:.2f} M), so the roofline's weight bytes are what the kernels read; "
            f"{s.bits_quantized:.3g} bits/weight stored on the {s.quantized_layers} quantized layers incl. scales"
        )
        if o.emulated:
            note += (
                f"; emulation: int{o.resolved_bits} codes are stored in int8, so the bytes are int8's, "
                f"not {o.resolved_bits}-bit"
            )
        prefill = self._read_bytes(self._prefill_rows) if self._prefill_rows else read
        if prefill != read:
            note += (
                f"; prefill ({self._prefill_rows} rows) reads {prefill / 1e6:.2f} MB: the kernels' dense path also "
                f"writes and reads back the dequantized weights"
            )
        return RooflineHints(weight_bits=read * 8 / elements, prefill_weight_bits=prefill * 8 / elements, note=note)
