"""The machine's devices: device strings (:mod:`.spec`), the CPU (:mod:`.cpu`), NVIDIA GPUs through NVML
(:mod:`.gpu`), RAPL energy domains (:mod:`.rapl`) and the whole machine (:mod:`.detect`).

Nothing here imports torch at import time.
"""
