"""rooflens: hardware-aware benchmarking and roofline analysis for LLM inference."""

import os as _os

__version__ = "0.1.0"

# The user's own TORCHINDUCTOR_CACHE_DIR, read before torch's inductor sets its default into the environment at its
# first use: rooflens's compiled engines keep inductor's cache under rooflens's cache folder unless the user chose one
# (rooflens.engines.compiled.inductor_cache).
USER_INDUCTOR_CACHE = _os.environ.get("TORCHINDUCTOR_CACHE_DIR")
