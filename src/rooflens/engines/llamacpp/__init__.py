"""llama.cpp as a reference engine: the production CPU runtime, through llama-cpp-python (the optional extra
``rooflens[llamacpp]``; without it the engine is unavailable, saying so).

It runs a GGUF file, by default the built-in model's own (the shipped SmolLM2 Q4_1 file rooflens's torch copy is
dequantized from, so both share one vocabulary), batch 1 on the CPU, greedy through our own loop over llama.cpp's
logits with EOS masked, one token per ``clock.tokens(1)``; ``ftype`` requantizes the file with llama.cpp's own
quantizer first (:mod:`.requantize`, cached). The roofline's weight bytes are the GGUF's tensor sizes
(:mod:`.gguf_file`), the record names the llama.cpp build, the file and its tensor types (:mod:`.stats`). A build
that would crash this process (AMX on a VM that reports it without running it) is found in a child process first
and the engine is unavailable, naming the fix (:mod:`.smoke`).
"""

from rooflens.engines.llamacpp.engine import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
