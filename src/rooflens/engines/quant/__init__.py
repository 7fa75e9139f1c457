"""Weight quantization, one handler per backend (gpt-fast's quantize.py pattern).

A handler takes a :class:`~rooflens.engines.options.quantized.QuantSpec` (one quantization, plain values) and
reads the format tables of :mod:`rooflens.engines.options.quantized`; that torch-free module never imports
this package.

* :mod:`~rooflens.engines.quant.base` — the :class:`QuantHandler` protocol, the layer selection and the model
  copy every backend shares;
* :mod:`~rooflens.engines.quant.storage` — storage accounting: what quantized layers hold and a decode step reads;
* :mod:`~rooflens.engines.quant.torchao`, :mod:`~rooflens.engines.quant.bitsandbytes`,
  :mod:`~rooflens.engines.quant.lowbit` (rooflens's own low-bit format) — one handler each (their libraries are
  imported only when used).
"""

from rooflens.engines.quant.base import (
    QuantHandler,
    copy_for_quantization,
    linear_targets,
    untie_from,
)
from rooflens.engines.quant.bitsandbytes import BitsandbytesHandler
from rooflens.engines.quant.lowbit import RooflensHandler
from rooflens.engines.quant.storage import decode_read_bytes, layer_weight_bytes, model_weight_bytes
from rooflens.engines.quant.torchao import TorchaoHandler

HANDLERS: dict[str, type[QuantHandler]] = {h.name: h for h in (TorchaoHandler, BitsandbytesHandler, RooflensHandler)}

__all__ = [
    "HANDLERS",
    "BitsandbytesHandler",
    "QuantHandler",
    "RooflensHandler",
    "TorchaoHandler",
    "copy_for_quantization",
    "decode_read_bytes",
    "get_handler",
    "layer_weight_bytes",
    "linear_targets",
    "model_weight_bytes",
    "untie_from",
]


def get_handler(backend: str) -> QuantHandler:
    """A new handler of ``backend`` (new, since a handler keeps what its last ``quantize`` reported)."""
    if backend not in HANDLERS:
        raise KeyError(f"unknown quantization backend '{backend}' (known: {', '.join(HANDLERS)})")
    return HANDLERS[backend]()
