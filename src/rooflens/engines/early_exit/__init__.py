"""Early exit (SpecEE): the engine, its draft head and predictors, their training, and the exit oracle."""

from rooflens.engines.early_exit.engine import EarlyExitEngine, EarlyExitOptions

__all__ = ["EarlyExitEngine", "EarlyExitOptions"]
