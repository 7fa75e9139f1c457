"""Requantizing a GGUF file with llama.cpp's own quantizer (``llama_model_quantize``), once per source file, file
type and llama-cpp-python version, into rooflens's cache.

``allow_requantize`` lets it start from an already quantized file (the shipped SmolLM2 is Q4_1): each tensor is
dequantized to fp32 and quantized again, so a requantized file carries the source's rounding as well as its own.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rooflens.engines.options.llamacpp import FTYPES
from rooflens.fsutil import atomic_output, cache_dir

LIBRARY_LOGGER = "llama-cpp-python"  # llama-cpp-python prints llama.cpp's log lines at or above this logger's level


@dataclass(frozen=True)
class Requantized:
    path: Path
    seconds: float | None  # None: found in the cache
    warnings: tuple[str, ...] = ()  # the quantizer's warning lines (a tensor that fell back to another type)


def ggml_type_of(ftype: str) -> str:
    """The ggml type most tensors of file type ``ftype`` get (``q4_k_m`` -> ``Q4_K``)."""
    return ftype.upper().removesuffix("_M")


def cached_path(source: Path, ftype: str, version: str) -> Path:
    """Where ``source`` requantized to ``ftype`` by llama-cpp-python ``version`` is kept (the source's size and
    modification time in the name: a changed source is requantized again)."""
    stat = source.stat()
    key = f"{source.stem}-{stat.st_size}-{int(stat.st_mtime)}-{ftype}-llama-cpp-python{version}.gguf"
    return cache_dir("llamacpp") / key


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """The process's stderr (the file descriptor: llama.cpp's quantizer writes there from C) into a list of lines,
    filled on exit, instead of the terminal."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


@contextmanager
def library_log(level: int) -> Iterator[None]:
    """llama.cpp's log lines at ``level`` and above meanwhile, errors only afterwards: rooflens runs it quiet, as
    ``Llama(verbose=False)`` does (its info lines, one per tensor while quantizing, are not for the user)."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(logging.ERROR)


def requantize(source: Path, ftype: str, threads: int) -> Requantized:
    """``source`` requantized to ``ftype`` (a key of :data:`FTYPES`), from the cache when it was done before."""
    import llama_cpp

    target = cached_path(source, ftype, llama_cpp.__version__)
    if target.is_file():
        return Requantized(target, None)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{FTYPES[ftype]}")
    params.allow_requantize = True
    params.nthread = threads
    t0 = time.perf_counter()
    with library_log(logging.WARNING), atomic_output(target) as tmp:
        with captured_stderr() as lines:
            rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            tail = "; ".join(lines[-3:])
            raise RuntimeError(f"llama_model_quantize({source.name} -> {ftype}) returned {rc}: {tail}")
    seconds = time.perf_counter() - t0
    return Requantized(target, seconds, tuple(line.strip() for line in lines if "warning" in line.lower()))
