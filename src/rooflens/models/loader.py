"""One loader for the three model sources: builtin (shipped real weights), hf, shape (random weights)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from rooflens.config import ModelSpec
from rooflens.device import spec as device_spec
from rooflens.device.cpu import detect_cpu
from rooflens.device.lock import measuring
from rooflens.fsutil import atomic_folder, cache_dir
from rooflens.models.catalog import BUILTIN_MODELS, ModelLoadError, shipped_config_data
from rooflens.results.record import ModelInfo

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any | None
    info: ModelInfo
    device: torch.device

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @property
    def special_token_ids(self) -> set[int]:
        cfg = self.model.config
        ids: set[int] = set()
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(cfg, attr, None)
            ids.update(v if isinstance(v, list) else [v] if v is not None else [])
        if self.tokenizer is not None:
            ids.update(getattr(self.tokenizer, "all_special_ids", []) or [])
        return ids


# ---------------------------------------------------------------------------- device / dtype


def resolve_device(spec: str) -> torch.device:
    """The torch device to load a model onto (:func:`rooflens.device.spec.resolve_device`); a device string
    this machine cannot run raises :class:`ModelLoadError`."""
    try:
        return device_spec.resolve_device(spec)
    except (device_spec.DeviceSpecError, device_spec.DeviceUnavailableError) as err:
        raise ModelLoadError(str(err)) from None


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str


def _gemv_seconds(dtype: torch.dtype, n: int = 2048, reps: int = 30) -> float:
    """Median time of an ``[1, n] x [n, n]`` matmul (a decode step's shape) in ``dtype`` on the CPU."""
    import statistics
    import time

    x, w = torch.randn(1, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    times = []
    for i in range(reps + 5):
        t0 = time.perf_counter()
        torch.nn.functional.linear(x, w)
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def choose_dtype(spec: str, device: torch.device) -> DtypeChoice:
    """The model dtype and why. ``auto``: bfloat16 on CUDA; on a CPU bfloat16 only where it has native
    bf16 instructions (AVX512_BF16 / AMX, from /proc/cpuinfo) *and* a decode-shaped matmul measures
    faster than in float32 (fp16 has no fast path on most CPUs); float32 otherwise."""
    if spec != "auto":
        return DtypeChoice(TORCH_DTYPES[spec], f"{spec}, as the experiment says")
    if device.type == "cuda":
        return DtypeChoice(torch.bfloat16, "auto: bfloat16 on CUDA")
    native = [f for f in NATIVE_BF16_FLAGS if f in detect_cpu().interesting_flags]
    if not native:
        return DtypeChoice(torch.float32, "auto: float32; this CPU has no native bfloat16 (no AVX512_BF16 or AMX)")
    with measuring("the dtype: auto micro-benchmark"):  # timed alone, as the run it decides for will be
        t32, t16 = _gemv_seconds(torch.float32), _gemv_seconds(torch.bfloat16)
    measured = f"a 1x2048 @ 2048x2048 matmul took {t16 * 1e6:.0f} us in bfloat16, {t32 * 1e6:.0f} us in float32"
    if t16 < 0.9 * t32:
        return DtypeChoice(torch.bfloat16, f"auto: bfloat16; native bf16 ({', '.join(native)}) and {measured}")
    return DtypeChoice(torch.float32, f"auto: float32; native bf16 ({', '.join(native)}) but {measured}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------- shipped configs


def shipped_config(name: str) -> tuple[Any, dict[str, Any]]:
    """A transformers config built from a shipped JSON, and the file's ``_rooflens`` metadata."""
    from transformers import AutoConfig

    data, meta = shipped_config_data(name)
    return AutoConfig.for_model(**data), meta


# ---------------------------------------------------------------------------- loaders


def _builtin_dir(name: str) -> Path:
    entry = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(entry["package"])  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the built-in model '{name}' needs the package {entry['package']}; install it with: {entry['pip']}"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / entry["gguf"]).is_file():
        raise ModelLoadError(f"{folder / entry['gguf']} is missing; reinstall with: {entry['pip']} --force-reinstall")
    return folder


def builtin_gguf(name: str) -> Path:
    """The GGUF file the built-in model ``name`` ships as (what rooflens dequantizes, and what llama.cpp runs)."""
    if name not in BUILTIN_MODELS:
        raise ModelLoadError(f"unknown built-in model '{name}' (built-in: {', '.join(BUILTIN_MODELS)})")
    return _builtin_dir(name) / BUILTIN_MODELS[name]["gguf"]


def converted_builtin(name: str) -> Path:
    """Path of the builtin model converted once from GGUF to safetensors (GGUF dequant takes ~15 s)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = builtin_gguf(name)
    folder = gguf.parent
    stat = gguf.stat()
    key = f"{name}-{stat.st_size}-{int(stat.st_mtime)}-tf{transformers.__version__}"
    target = cache_dir("models") / key
    if (target / "config.json").is_file():
        return target
    # transformers' GGUF reader draws a tqdm bar on stderr; rooflens shows its own progress
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantized weights are plain tensors
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    try:
        with atomic_folder(target) as tmp:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError as err:
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return target
        return _converted_elsewhere(plain, tokenizer, target, err)
    return target


def _converted_elsewhere(plain: Any, tokenizer: Any, target: Path, err: OSError) -> Path:
    """The cache cannot take the converted model (read-only, full): a temporary folder serves this process
    (converted again next time); ModelLoadError when that fails too."""
    import tempfile

    why = f"the converted model could not be cached in {target} ({err.strerror or err})"
    try:
        spare = Path(tempfile.mkdtemp(prefix="rooflens-model-"))
        plain.save_pretrained(spare)
        tokenizer.save_pretrained(spare)
    except OSError as again:
        raise ModelLoadError(
            f"{why}, nor in a temporary folder ({again.strerror or again}); set ROOFLENS_CACHE to a writable folder"
        ) from None
    log.warning("%s: using %s for this run (converted again next time)", why, spare)
    return spare


def load_tokenizer(spec: ModelSpec) -> Any | None:
    """The tokenizer of a builtin or hf model without its weights (None: a shape model, or a checkpoint without one)."""
    from transformers import AutoTokenizer

    if spec.source == "shape":
        return None
    if spec.source == "builtin":
        path, kwargs = str(converted_builtin(spec.id)), {}
    else:
        path, kwargs = spec.id, {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, TypeError):
        return None


def _check_fits(n_params: int, dtype: torch.dtype, device: torch.device, label: str) -> None:
    need = n_params * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where, have = f"{device} free memory", free
    else:
        where, have = "available RAM", psutil.virtual_memory().available
    if need > 0.9 * have:
        raise ModelLoadError(
            f"model {label} does not fit: its weights alone need {need / 1e9:.1f} GB in {dtype_name(dtype)}, "
            f"{where} is {have / 1e9:.1f} GB (use a smaller model, a lower-precision dtype, or another device)"
        )


def _count_params(model: torch.nn.Module) -> tuple[int, int]:
    params = list(model.parameters())  # shared (tied) tensors are yielded once
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def load_model(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0, dtype_reason: str | None = None
) -> LoadedModel:
    """Load ``spec`` onto ``device`` in ``dtype``, in eval mode; ``dtype_reason`` (why this dtype) goes into its info."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # rooflens shows its own progress

    tokenizer = None
    if spec.source == "shape":
        config, meta = shipped_config(spec.id)
        with torch.device("meta"):
            n_meta, _ = _count_params(AutoModelForCausalLM.from_config(config))
        _check_fits(n_meta, dtype, device, spec.label)
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        weights, note = "random", f"random init from the shipped config of {meta.get('hf_id', spec.id)}"
        origin = "random init"
    else:
        if spec.source == "builtin":
            if spec.id not in BUILTIN_MODELS:
                raise ModelLoadError(f"unknown built-in model '{spec.id}' (built-in: {', '.join(BUILTIN_MODELS)})")
            path, kwargs = str(converted_builtin(spec.id)), {}
            note, origin = BUILTIN_MODELS[spec.id]["note"], BUILTIN_MODELS[spec.id]["origin"]
        else:
            path = spec.id
            kwargs = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
            note, origin = f"from_pretrained('{spec.id}')", "checkpoint"
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(path, **kwargs)
            with torch.device("meta"):
                n_meta, _ = _count_params(AutoModelForCausalLM.from_config(config))
            _check_fits(n_meta, dtype, device, spec.label)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).to(device)
        except ModelLoadError:
            raise
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load model '{spec.id}' ({spec.source}): {err}") from err
        weights = "real"
        try:  # a checkpoint without a tokenizer still runs synthetic prompts
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        except (OSError, ValueError, TypeError):
            tokenizer = None
    model.eval()
    n_params, param_bytes = _count_params(model)
    cfg = model.config
    info = ModelInfo(
        source=spec.source,
        id=spec.id,
        label=spec.label,
        weights=weights,
        weights_note=note,
        weights_origin=origin,
        model_type=cfg.model_type,
        architecture=type(model).__name__,
        n_params=n_params,
        param_bytes=param_bytes,
        dtype=dtype_name(dtype),
        dtype_reason=dtype_reason,
        num_layers=getattr(cfg, "num_hidden_layers", None),
        hidden_size=getattr(cfg, "hidden_size", None),
        vocab_size=getattr(cfg, "vocab_size", None),
        has_tokenizer=tokenizer is not None,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, device=device)
