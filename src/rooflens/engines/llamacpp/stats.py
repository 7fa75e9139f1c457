"""What the ``llamacpp`` engine records: the llama.cpp build, the GGUF file and its quantization, the context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rooflens.engines.llamacpp.gguf_file import GgufFile
from rooflens.engines.options.llamacpp import LlamaCppOptions
from rooflens.engines.stat_table import StatSpec


def system_info() -> str:
    """``llama_print_system_info()``: the CPU features this llama.cpp build uses."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


@dataclass(frozen=True)
class LoadInfo:
    """The ``Llama`` as built: its context parameters and the llama.cpp build it runs on."""

    library: str
    system_info: str
    n_ctx: int
    n_batch: int
    n_threads: int
    kv_type: str
    load_s: float

    @classmethod
    def of(cls, llm: Any, threads: int, load_s: float) -> LoadInfo:
        import llama_cpp
        from gguf import GGMLQuantizationType

        params = llm.context_params
        kv = {GGMLQuantizationType(t).name for t in (params.type_k, params.type_v)}
        return cls(
            library=f"llama-cpp-python {llama_cpp.__version__}",
            system_info=system_info(),
            n_ctx=int(llm.n_ctx()),
            n_batch=int(llm.n_batch),
            n_threads=threads,
            kv_type="/".join(sorted(kv)),
            load_s=load_s,
        )


STATS: dict[str, StatSpec] = {
    "library": StatSpec(description="the llama.cpp binding and its version (llama_cpp.__version__)"),
    "system_info": StatSpec(description="llama_print_system_info(): the CPU features this llama.cpp build uses"),
    "gguf_file": StatSpec(description="the GGUF file llama.cpp ran"),
    "file_type": StatSpec(description="its general.file_type, as llama.cpp names it"),
    "tensor_types": StatSpec(description="its tensors per ggml type (gguf reader)"),
    "requantized_from": StatSpec(
        description="the file it was requantized from by llama.cpp's llama_model_quantize (allow_requantize: each "
        "tensor dequantized to fp32, then quantized to the new type), and that file's type"
    ),
    "quantize_time_s": StatSpec("s", "requantizing now (absent: the file was run as it is or found in the cache)"),
    "weight_storage_bytes": StatSpec("B", "all tensors of the GGUF file as stored (gguf reader's byte sizes)"),
    "bits_per_weight_model": StatSpec("bit", "GGUF tensor bytes x 8 / their elements (scales included)"),
    "weight_read_bytes_per_step": StatSpec("B", "weight bytes one decode step reads (batch 1): {read_how}"),
    "n_ctx": StatSpec("tokens", "the context's KV cache length"),
    "n_batch": StatSpec("tokens", "llama.cpp's logical batch: a longer prompt is prefilled in chunks of this"),
    "n_threads": StatSpec("threads", "llama.cpp's threads, decode and prefill (torch's CPU threads at load)"),
    "kv_cache_type": StatSpec(description="the KV cache's ggml type (K/V)"),
    "flash_attn": StatSpec(description="llama.cpp's flash attention"),
    "load_time_s": StatSpec("s", "building the Llama (memory-mapping the file, the context)"),
    "context_rebuilds": StatSpec(
        "rebuilds", "contexts rebuilt during the measured repetitions for a generation longer than n_ctx"
    ),
}
"""What the engine's statistics mean; ``{read_how}`` is how the read bytes were summed."""


def stat_values(
    gguf: GgufFile,
    source: GgufFile,
    options: LlamaCppOptions,
    load: LoadInfo,
    quantize_s: float | None,
    rebuilds: int,
) -> dict[str, Any]:
    requantized = None
    if gguf.path != source.path:
        cached = " (found in the cache)" if quantize_s is None else ""
        requantized = f"{source.path} ({source.file_type}; {source.describe_types()}){cached}"
    return {
        "library": load.library,
        "system_info": load.system_info,
        "gguf_file": str(gguf.path),
        "file_type": gguf.file_type,
        "tensor_types": gguf.describe_types(),
        "requantized_from": requantized,
        "quantize_time_s": quantize_s,
        "weight_storage_bytes": gguf.tensor_bytes,
        "bits_per_weight_model": gguf.tensor_bytes * 8 / gguf.n_elements,
        "weight_read_bytes_per_step": gguf.decode_read_bytes().total,
        "n_ctx": load.n_ctx,
        "n_batch": load.n_batch,
        "n_threads": load.n_threads,
        "kv_cache_type": load.kv_type,
        "flash_attn": "on" if options.flash_attn else "off",
        "load_time_s": load.load_s,
        "context_rebuilds": rebuilds,
    }
