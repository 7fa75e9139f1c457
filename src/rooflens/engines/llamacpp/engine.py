"""The ``llamacpp`` engine: a GGUF file through ``llama_cpp.Llama``, our own greedy loop over its logits."""

from __future__ import annotations

import importlib.util
import logging
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rooflens.engines.base import Engine, EngineStat, EngineUnavailable, RooflineHints, TokenClock
from rooflens.engines.decoding import eos_token_ids, mask_eos
from rooflens.engines.llamacpp.gguf_file import GgufFile, estimated_bytes, read_gguf
from rooflens.engines.llamacpp.requantize import ggml_type_of, requantize
from rooflens.engines.llamacpp.smoke import build_unusable
from rooflens.engines.llamacpp.stats import STATS, LoadInfo, stat_values, system_info
from rooflens.engines.options.llamacpp import LlamaCppOptions
from rooflens.engines.registry import register
from rooflens.engines.stat_table import stats_from_table
from rooflens.models.catalog import ModelLoadError
from rooflens.models.loader import builtin_gguf
from rooflens.roofline.analytic import decode_weight_elements

if TYPE_CHECKING:
    from rooflens.models.loader import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_CTX_CAP = 4096  # n_ctx by default: the GGUF's training context, at most this
CTX_STEP = 256  # a rebuilt context is rounded up to a multiple of this
BUILD_TIME = "5 to 9 minutes on 2 cores"  # llama-cpp-python 0.3.36's sdist: 286 s quiet, 534 s busy here (README)


class EosMask:
    """A logits processor in llama-cpp-python's signature, ``(input_ids, scores) -> scores``: the EOS ids at -inf
    (:func:`rooflens.engines.decoding.mask_eos`, so :func:`~rooflens.engines.decoding.eos_allowed` lifts it as for
    every engine). Every run then has exactly N tokens, as ``min_new_tokens`` gives the ``hf`` baseline."""

    def __init__(self, eos: list[int]):
        self.eos = eos

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return mask_eos(torch.from_numpy(scores), self.eos).numpy()


def source_gguf(options: LlamaCppOptions, model: LoadedModel) -> Path:
    """The GGUF the options name, else the built-in model's own; EngineUnavailable when there is none."""
    if options.gguf is not None:
        path = Path(options.gguf).expanduser()
        if not path.is_file():
            raise EngineUnavailable(f"engine 'llamacpp': gguf: {path} is not a file")
        return path
    if model.info.source != "builtin":
        raise EngineUnavailable(
            f"engine 'llamacpp' runs a GGUF file: the built-in model's own, or `gguf: PATH`; "
            f"model {model.info.label} ({model.info.source}) has none"
        )
    try:
        return builtin_gguf(model.info.id)
    except ModelLoadError as err:
        raise EngineUnavailable(f"engine 'llamacpp': {err}") from None


@register
class LlamaCppEngine(Engine):
    name = "llamacpp"
    summary = (
        "llama.cpp (llama-cpp-python) on a GGUF file, CPU, batch 1: the built-in model's own GGUF or gguf: PATH, "
        "as it is or requantized by llama.cpp's quantizer (ftype); the production CPU runtime as a reference"
    )
    Options = LlamaCppOptions
    options: LlamaCppOptions
    devices = ("cpu",)
    requires_packages = ("llama_cpp",)
    supports_batch = False
    # the contract test's tiny random model has no GGUF: this example is skipped there, and
    # tests/engines/test_llamacpp.py runs the contract on a GGUF written from that model
    examples = ({},)

    def __init__(self, options: LlamaCppOptions, model: LoadedModel):
        super().__init__(options, model)
        self.gguf: GgufFile | None = None  # the file llama.cpp runs
        self.source: GgufFile | None = None  # the file it came from (the same unless requantized)
        self.quantize_s: float | None = None  # None: not requantized now (source, or found in the cache)
        self.load: LoadInfo | None = None
        self._llm: Any = None
        self._close: weakref.finalize | None = None
        self.rebuilds = 0  # contexts rebuilt for a longer generation since reset_stats

    @classmethod
    def unavailable_reason(cls, device: torch.device, model: LoadedModel | None = None) -> str | None:
        """The base class's reasons, with the package to install named as PyPI knows it (not its module)."""
        if device.type in cls.devices and importlib.util.find_spec("llama_cpp") is None:
            return (
                f"engine 'llamacpp' needs llama-cpp-python (pip install 'rooflens[llamacpp]': it compiles llama.cpp "
                f'from source, {BUILD_TIME}; README, "The llamacpp engine", has the build flags)'
            )
        return super().unavailable_reason(device, model)

    @classmethod
    def extra_weight_bytes(cls, options: LlamaCppOptions, model: LoadedModel) -> tuple[int, str]:  # type: ignore[override]
        """llama.cpp's own copy of the weights (the file, memory-mapped): its tensor bytes, or for a requantized file
        the tensors at the asked type; 0 when there is no file (the engine is unavailable then)."""
        try:
            source = read_gguf(source_gguf(options, model))
        except EngineUnavailable:
            return 0, ""
        if options.ftype == "source":
            return source.tensor_bytes, f"llama.cpp's GGUF weights ({source.file_type})"
        return estimated_bytes(source, ggml_type_of(options.ftype)), f"llama.cpp's GGUF weights ({options.ftype})"

    # -- set-up

    def prepare(self) -> None:
        if self._llm is not None:
            return
        reason = self.unavailable_reason(self.model.device, self.model)
        if reason is not None:
            raise EngineUnavailable(reason)
        path = source_gguf(self.options, self.model)
        self.source = read_gguf(path)
        vocab = self.source.vocab_size
        if vocab != self.model.vocab_size:
            raise EngineUnavailable(
                f"engine 'llamacpp': {path.name} has a vocabulary of {vocab} tokens, model {self.model.info.label} "
                f"{self.model.vocab_size}: prompt ids go in as they are, so the two must be one vocabulary"
            )
        if self.options.ftype != "source":
            done = requantize(path, self.options.ftype, torch.get_num_threads())
            path, self.quantize_s = done.path, done.seconds
            for line in done.warnings:  # a tensor the type does not fit (a k-quant on rows not a multiple of 256)
                log.info("llama.cpp's quantizer: %s", line)
        self.gguf = read_gguf(path)
        unusable = build_unusable(system_info(), str(path))  # a build that would crash this process (AMX on a VM)
        if unusable is not None:
            raise EngineUnavailable(unusable)
        context = self.gguf.context_length or DEFAULT_CTX_CAP
        self._build(self.options.n_ctx or min(context, DEFAULT_CTX_CAP))

    def _build(self, n_ctx: int) -> None:
        """(Re)load the file into a ``Llama`` with ``n_ctx`` tokens of KV cache, at torch's CPU threads (the
        experiment's ``threads``: the measuring process sets them before any engine is prepared)."""
        from llama_cpp import Llama

        assert self.gguf is not None
        threads = torch.get_num_threads()
        if self._close is not None:
            self._close()  # the previous context and model, now
        t0 = time.perf_counter()
        self._llm = Llama(
            model_path=str(self.gguf.path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=0,
            flash_attn=self.options.flash_attn,
            verbose=False,
        )
        self.load = LoadInfo.of(self._llm, threads, time.perf_counter() - t0)
        # closed with the engine, or at exit before the interpreter tears llama_cpp's module down (Llama.__del__
        # at teardown finds its library functions gone and prints a traceback)
        self._close = weakref.finalize(self, self._llm.close)

    # -- generation

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, clock: TokenClock) -> torch.Tensor:
        if input_ids.shape[0] != 1:
            raise ValueError(f"engine 'llamacpp' decodes one sequence at a time (got a batch of {input_ids.shape[0]})")
        if self._llm is None:
            raise RuntimeError("engine 'llamacpp': call prepare() first (it loads the GGUF)")
        prompt = [int(t) for t in input_ids[0]]
        need = len(prompt) + max_new_tokens
        if need > self._llm.n_ctx():
            self._build(-(-need // CTX_STEP) * CTX_STEP)
            self.rebuilds += 1
        llm, mask = self._llm, EosMask(self._eos_ids())
        llm.reset()  # n_tokens = 0: eval() first drops every cached K/V from position 0 on (llama_memory_seq_rm)
        out: list[int] = []
        tokens = prompt
        for _ in range(max_new_tokens):
            llm.eval(tokens)
            token = self._greedy(llm, mask)
            out.append(token)
            clock.tokens(1)
            tokens = [token]
        return torch.tensor([out], dtype=torch.long, device=input_ids.device).view(1, max_new_tokens)

    def _eos_ids(self) -> list[int]:
        """What the ``hf`` baseline masks (the loaded model's EOS, read now: a test may change it) and the GGUF's."""
        ids = set(eos_token_ids(self.model.model))
        eos = self._llm.token_eos()
        if 0 <= eos < self.model.vocab_size:
            ids.add(int(eos))
        return sorted(ids)

    @staticmethod
    def _greedy(llm: Any, mask: EosMask) -> int:
        """The argmax of the last evaluated position's logits, EOS masked."""
        import llama_cpp

        n_vocab = llm.n_vocab()
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(np.argmax(mask(llm.input_ids[: llm.n_tokens], logits)))

    # -- what the record says

    def reset_stats(self) -> None:
        self.rebuilds = 0

    def scoring_model(self) -> None:
        return None  # llama.cpp computes the logits; the loaded torch model is not what runs

    def why_not_attributed(self) -> str:
        return "llama.cpp runs outside torch: the profiler sees none of its operators (its ggml graph is not traced)"

    def stats(self) -> dict[str, EngineStat]:
        if self.gguf is None or self.source is None or self.load is None:
            return {}
        values = stat_values(self.gguf, self.source, self.options, self.load, self.quantize_s, self.rebuilds)
        return stats_from_table(STATS, values, read_how=self.gguf.decode_read_bytes().how)

    def roofline_hints(self) -> RooflineHints:
        if self.gguf is None:
            return RooflineHints()
        read = self.gguf.decode_read_bytes()
        where = f"{self.gguf.path.name} ({self.gguf.file_type}; {self.gguf.describe_types()})"
        kv_type = self.load.kv_type if self.load else "f16"
        kv = f"; llama.cpp's KV cache is {kv_type} (the analytic model counts it in the model dtype)"
        try:
            elements = decode_weight_elements(self.model.model.config)
        except ValueError:  # a model type the analytic model does not know: it places no roofline point either
            bits = self.gguf.tensor_bytes * 8 / self.gguf.n_elements
            return RooflineHints(weight_bits=bits, note=f"{where}: weight_bits = GGUF tensor bytes x 8 / elements{kv}")
        note = (
            f"{where}: weight_bits = weight bytes a decode step reads ({read.total / 1e6:.2f} MB; {read.how}) x 8 / "
            f"weight elements the analytic model reads ({elements / 1e6:.2f} M), both phases (a prefill reads the "
            f"same tensors once){kv}"
        )
        return RooflineHints(weight_bits=read.total * 8 / elements, note=note)
