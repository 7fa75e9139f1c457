"""Options of the ``quantized`` engine, what each backend's formats accept, and :class:`QuantSpec`.

Plain data, torch-free, so that an experiment is checked without importing a quantization library (or
torch). This is the bottom of the quantization stack: the handlers in :mod:`rooflens.engines.quant` read
these tables and take a :class:`QuantSpec`; nothing here imports them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from rooflens.engines.options.hf import HFOptions
from rooflens.lowbit_rules import KERNELS, describe_kernels
from rooflens.text import quote

SKIP = ("lm_head",)  # Linear layers left in the model dtype (embeddings are not Linear: never touched)
Backend = Literal["torchao", "bitsandbytes", "rooflens"]  # the keys of FORMATS (and of quant.HANDLERS)
Kernel = Literal[KERNELS]  # a rooflens LowBitLinear forward path
Quantizer = Literal["rtn", "hqq"]  # how a rooflens format's codes are chosen (rooflens.engines.quant.hqq.QUANTIZERS)


@dataclass(frozen=True)
class FormatSpec:
    """What a (backend, format) accepts: allowed/default bits and group sizes, symmetric or not."""

    bits: tuple[int, ...]  # allowed bit widths (first = default)
    group_sizes: tuple[int, ...] = ()  # () -> group_size does not apply
    default_group: int | None = None
    symmetric: bool = False  # whether the symmetric option applies
    why_no_group: str = ""


FORMATS: dict[str, dict[str, FormatSpec]] = {
    # the first format of each backend is its default
    "torchao": {
        "int8_weight_only": FormatSpec((8,), why_no_group="per-output-channel scales"),
        "int8_dynamic": FormatSpec((8,), why_no_group="per-output-channel scales"),
        "int4_weight_only": FormatSpec((4,), (32, 64, 128, 256), 128),
        "intx_weight_only": FormatSpec((4, 2, 3, 5, 6, 7, 8), (32, 64, 128, 256), 32, symmetric=True),
    },
    "bitsandbytes": {
        "int8": FormatSpec((8,), why_no_group="per-output-channel scales (LLM.int8)"),
        "nf4": FormatSpec((4,), (64, 128), 64),
    },
    "rooflens": {"groupwise": FormatSpec((4, 8, 3, 2), (32, 64, 128), 128, symmetric=True)},
}


@dataclass(frozen=True)
class QuantSpec:
    """One quantization with every value resolved: what a handler needs, nothing left to default."""

    backend: str
    format: str
    bits: int
    group_size: int | None = None  # None: the format has no groups
    symmetric: bool | None = None  # None: the format has no such choice
    kernel: Kernel = "auto"  # rooflens only: the LowBitLinear forward path
    quantizer: Quantizer = "rtn"  # rooflens only: round-to-nearest or HQQ codes (same storage)
    skip: tuple[str, ...] = SKIP  # Linear layers left in the model dtype


def join(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)


class QuantizedOptions(HFOptions):
    backend: Backend = Field(default="rooflens", description="torchao, bitsandbytes or rooflens (our own format)")
    format: str | None = Field(
        default=None,
        description="torchao: int8_weight_only, int8_dynamic, int4_weight_only (CUDA+bf16), intx_weight_only "
        "(accuracy emulation, int8 storage); bitsandbytes: int8, nf4; rooflens: groupwise (default: the first)",
    )
    bits: int | None = Field(
        default=None, description="rooflens: 8/4/3/2 (default 4); torchao intx_weight_only: 2-8 (default 4)"
    )
    group_size: int | None = Field(
        default=None,
        description="rooflens: 32/64/128 (default 128); torchao intx: 32-256 (default 32); torchao int4: "
        "32-256 (default 128); bitsandbytes nf4: 64/128 (default 64)",
    )
    symmetric: bool | None = Field(
        default=None, description="rooflens and torchao intx: symmetric (default) or asymmetric with zero points"
    )
    kernel: Kernel | None = Field(default=None, description=f"rooflens only: {describe_kernels()}")
    quantizer: Quantizer | None = Field(
        default=None,
        description="rooflens only: rtn (round-to-nearest, default) or hqq (Half-Quadratic Quantization, "
        "calibration-free: each group's scale and zero point fitted to an lp-norm error; same storage, slower to load)",
    )
    lm_head: bool = Field(
        default=False,
        description="quantize the LM head too (a tied embedding is untied: the embedding keeps its dense table)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> QuantizedOptions:
        b, formats = self.backend, FORMATS[self.backend]
        if self.format is not None and self.format not in formats:
            where = [k for k, f in FORMATS.items() if self.format in f]
            hint = f"; it is a format of backend '{where[0]}'" if where else ""
            raise ValueError(
                f"format: {quote(self.format)} is not a format of backend '{b}' (allowed: {join(formats)}){hint}"
            )
        fmt = self.resolved_format
        spec = formats[fmt]
        what = f"format '{fmt}' of backend '{b}'"
        if self.bits is not None and self.bits not in spec.bits:
            if len(spec.bits) == 1:
                raise ValueError(f"bits: {what} is {spec.bits[0]}-bit (got {self.bits}); leave bits out")
            raise ValueError(f"bits: {self.bits} is not allowed for {what} (allowed: {join(sorted(spec.bits))})")
        if self.group_size is not None:
            if not spec.group_sizes:
                raise ValueError(f"group_size: does not apply to {what} ({spec.why_no_group})")
            if self.group_size not in spec.group_sizes:
                raise ValueError(
                    f"group_size: {self.group_size} is not allowed for {what} (allowed: {join(spec.group_sizes)})"
                )
        if self.symmetric is not None and not spec.symmetric:
            raise ValueError(
                f"symmetric: does not apply to {what} (applies to rooflens groupwise and torchao intx_weight_only)"
            )
        if self.kernel is not None and b != "rooflens":
            raise ValueError(f"kernel: applies to backend 'rooflens' only (backend is '{b}')")
        if self.quantizer is not None and b != "rooflens":
            raise ValueError(f"quantizer: applies to backend 'rooflens' only (backend is '{b}')")
        return self

    @property
    def skip(self) -> tuple[str, ...]:
        """Linear layers left in the model dtype."""
        return () if self.lm_head else SKIP

    # resolved values (defaults filled in per format)
    @property
    def resolved_format(self) -> str:
        return self.format or next(iter(FORMATS[self.backend]))

    @property
    def format_spec(self) -> FormatSpec:
        return FORMATS[self.backend][self.resolved_format]

    @property
    def resolved_bits(self) -> int:
        return self.bits if self.bits is not None else self.format_spec.bits[0]

    @property
    def resolved_group_size(self) -> int | None:
        return self.group_size if self.group_size is not None else self.format_spec.default_group

    @property
    def resolved_symmetric(self) -> bool | None:
        if not self.format_spec.symmetric:
            return None
        return True if self.symmetric is None else self.symmetric

    @property
    def emulated(self) -> bool:
        """Codes stored wider than their nominal bits (torchao intx below 8 bits: one code per int8)."""
        return self.backend == "torchao" and self.resolved_format == "intx_weight_only" and self.resolved_bits < 8

    def spec(self) -> QuantSpec:
        """These options as the handler's plain, resolved :class:`QuantSpec`."""
        return QuantSpec(
            backend=self.backend,
            format=self.resolved_format,
            bits=self.resolved_bits,
            group_size=self.resolved_group_size,
            symmetric=self.resolved_symmetric,
            kernel=self.kernel or "auto",
            quantizer=self.quantizer or "rtn",
            skip=self.skip,
        )

    def describe(self) -> str:
        parts = [f"{self.backend} {self.resolved_format}"]
        if len(self.format_spec.bits) > 1:
            parts.append(f"{self.resolved_bits}-bit")
        if self.resolved_group_size is not None:
            parts.append(f"g{self.resolved_group_size}")
        if self.resolved_symmetric is not None:
            parts.append("sym" if self.resolved_symmetric else "asym")
        if self.quantizer == "hqq":
            parts.append("hqq")
        return " ".join(parts)
