"""What a GGUF file holds, read with the ``gguf`` package (no llama.cpp, no torch): its file type, the type and byte
size of every tensor, and from those the weight bytes one decode step reads.

A decode step of a llama-style model reads every tensor once, except the token embedding table, of which it looks
up one row; when the file has no ``output.weight`` the output head is that table (tied embeddings, as llama.cpp
does then), read whole. This is the analytic model's convention (:func:`rooflens.roofline.analytic.decode_weight_elements`:
every weight once, one embedding row), in the bytes the file stores.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

EMBEDDING = "token_embd.weight"
OUTPUT = "output.weight"


@dataclass(frozen=True)
class GgufTensor:
    name: str
    type: str  # a ggml type name: F32, F16, Q4_1, Q8_0, ...
    shape: tuple[int, ...]  # ggml order: shape[0] is a row's length
    n_elements: int
    n_bytes: int  # as stored, blocks and their scales included (gguf's reader)


@dataclass(frozen=True)
class ReadBytes:
    """The weight bytes one decode step reads and where the figure comes from."""

    total: int
    how: str


@dataclass(frozen=True)
class GgufFile:
    path: Path
    architecture: str
    file_type: str  # general.file_type as llama.cpp names it (MOSTLY_Q4_1), or "unknown"
    vocab_size: int | None  # rows of the token embedding table
    context_length: int | None  # <arch>.context_length: the training context
    tensors: tuple[GgufTensor, ...]

    @property
    def type_counts(self) -> dict[str, int]:
        """Tensors per ggml type, most common first."""
        return dict(Counter(t.type for t in self.tensors).most_common())

    def describe_types(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.type_counts.items())

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    def tensor(self, name: str) -> GgufTensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    @property
    def tied(self) -> bool:
        """No ``output.weight``: llama.cpp uses the token embedding table as the output head."""
        return self.tensor(OUTPUT) is None and self.tensor(EMBEDDING) is not None

    def decode_read_bytes(self) -> ReadBytes:
        """Weight bytes of one decode step at batch 1: every tensor once, one row of the token embedding table, the
        whole table again when it is the (tied) output head."""
        embd = self.tensor(EMBEDDING)
        rest = sum(t.n_bytes for t in self.tensors if t is not embd)
        if embd is None:
            return ReadBytes(rest, f"GGUF tensor sizes (gguf reader): all {len(self.tensors)} tensors once")
        rows = embd.shape[1] if len(embd.shape) > 1 else 1
        row = embd.n_bytes // rows
        total = rest + row + (embd.n_bytes if self.tied else 0)
        head = (
            f"plus the whole {EMBEDDING} ({embd.type}, {embd.n_bytes} B) as the tied output head"
            if self.tied
            else f"the rest of {EMBEDDING} is not read"
        )
        how = (
            f"GGUF tensor sizes (gguf reader): {len(self.tensors) - 1} tensors once ({rest} B), one {EMBEDDING} "
            f"row ({embd.type}, {row} B), {head}"
        )
        return ReadBytes(total, how)


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def file_type_name(value: int | None) -> str:
    """llama.cpp's name of a ``general.file_type`` value (``MOSTLY_Q4_1``)."""
    from gguf import LlamaFileType

    if value is None:
        return "unknown (no general.file_type)"
    try:
        return LlamaFileType(int(value)).name
    except ValueError:
        return f"unknown ({value})"


def read_gguf(path: Path) -> GgufFile:
    """The header and tensor table of ``path`` (memory-mapped; no tensor data is read). Kept per file version: gguf's
    reader parses every metadata array in Python (SmolLM2's vocabulary and merges: seconds on a small CPU), and the
    memory pre-check, the engine and its statistics each ask."""
    stat = Path(path).stat()
    return _read(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _read(path: str, size: int, mtime_ns: int) -> GgufFile:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = str(_field(reader, "general.architecture") or "unknown")
    tensors = tuple(
        GgufTensor(
            name=t.name,
            type=t.tensor_type.name,
            shape=tuple(int(d) for d in t.shape),
            n_elements=int(t.n_elements),
            n_bytes=int(t.n_bytes),
        )
        for t in reader.tensors
    )
    embd = next((t for t in tensors if t.name == EMBEDDING), None)
    context = _field(reader, f"{arch}.context_length")
    return GgufFile(
        path=Path(path),
        architecture=arch,
        file_type=file_type_name(_field(reader, "general.file_type")),
        vocab_size=embd.shape[1] if embd is not None and len(embd.shape) > 1 else None,
        context_length=int(context) if context is not None else None,
        tensors=tensors,
    )


def estimated_bytes(source: GgufFile, ggml_type: str) -> int:
    """Bytes of ``source``'s tensors stored as ``ggml_type`` (1-D tensors stay as they are, as llama.cpp's quantizer
    leaves them): an estimate of a requantized file for the memory pre-check (the quantizer may pick other types
    for some tensors)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    return sum(t.n_bytes if len(t.shape) < 2 else t.n_elements // block * size for t in source.tensors)
