"""rooflens: hardware-aware benchmarking and roofline analysis for LLM inference."""

__version__ = "0.1.0"
