"""Options of the ``llamacpp`` engine (llama.cpp through llama-cpp-python on a GGUF file), torch-free."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rooflens.engines.options import EngineOptions

FTYPES: dict[str, str] = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
    "q6_k": "MOSTLY_Q6_K",
    "q5_k_m": "MOSTLY_Q5_K_M",
    "q5_1": "MOSTLY_Q5_1",
    "q5_0": "MOSTLY_Q5_0",
    "q4_k_m": "MOSTLY_Q4_K_M",
    "q4_1": "MOSTLY_Q4_1",
    "q4_0": "MOSTLY_Q4_0",
}
"""``ftype`` option -> llama.cpp's ``llama_ftype`` name (``LLAMA_FTYPE_<name>`` in llama_cpp, ``gguf.LlamaFileType``)."""

Ftype = Literal["source", "f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_1", "q5_0", "q4_k_m", "q4_1", "q4_0"]


class LlamaCppOptions(EngineOptions):
    gguf: str | None = Field(
        default=None,
        description="the GGUF file to run (default: the built-in model's own, e.g. the shipped SmolLM2 Q4_1 file); "
        "its vocabulary must be the loaded model's (prompt ids go in as they are)",
    )
    ftype: Ftype = Field(
        default="source",
        description="source (run the file as it is) or a llama.cpp file type to requantize it to with llama.cpp's "
        "own quantizer, once, into rooflens's cache (k-quants fall back per tensor where a row is not a multiple "
        "of 256; the record lists the tensor types)",
    )
    n_ctx: int | None = Field(
        default=None,
        ge=16,
        description="KV cache length in tokens (default: the GGUF's training context, at most 4096); a generation "
        "that needs more rebuilds the context to fit (counted in the record)",
    )
    flash_attn: bool = Field(default=False, description="llama.cpp's flash attention (llama-cpp-python's default: off)")

    def describe(self) -> str:
        where = self.gguf or "the built-in model's GGUF"
        return where if self.ftype == "source" else f"{where} requantized to {self.ftype}"
