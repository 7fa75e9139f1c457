"""Progressive mixed-precision decoding (PMPD): the engine, its decode loop, schedulers and their offline tuning."""

from rooflens.engines.mixed_precision.engine import MixedPrecisionEngine, MixedPrecisionOptions

__all__ = ["MixedPrecisionEngine", "MixedPrecisionOptions"]
