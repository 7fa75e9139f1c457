"""Weight quantization, one handler per backend (gpt-fast's quantize.py pattern).

* :mod:`~rooflens.engines.quant.base` — the :class:`QuantHandler` protocol, :class:`QuantSpec` (one quantization,
  plain values), the layer selection and the model copy every backend shares;
* :mod:`~rooflens.engines.quant.storage` — storage accounting: what quantized layers hold and a decode step reads;
* :mod:`~rooflens.engines.quant.torchao`, :mod:`~rooflens.engines.quant.bitsandbytes`,
  :mod:`~rooflens.engines.quant.rooflens` — one handler each (their libraries are imported only when used).
"""

from rooflens.engines.quant.base import (
    SKIP,
    FormatSpec,
    QuantHandler,
    QuantSpec,
    copy_for_quantization,
    linear_targets,
    untie_from,
)
from rooflens.engines.quant.bitsandbytes import BitsandbytesHandler
from rooflens.engines.quant.rooflens import RooflensHandler
from rooflens.engines.quant.storage import decode_read_bytes, layer_weight_bytes, model_weight_bytes
from rooflens.engines.quant.torchao import TorchaoHandler

HANDLERS: dict[str, type[QuantHandler]] = {h.name: h for h in (TorchaoHandler, BitsandbytesHandler, RooflensHandler)}

__all__ = [
    "HANDLERS",
    "SKIP",
    "BitsandbytesHandler",
    "FormatSpec",
    "QuantHandler",
    "QuantSpec",
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
