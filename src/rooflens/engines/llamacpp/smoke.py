"""Whether this llama.cpp build survives a forward pass on this machine, asked in a child process.

A build compiled with ``-march=native`` on a CPU that reports AMX uses ggml's AMX matmul, and on a VM that
reports AMX without supporting it (the Firecracker VMs rooflens is developed on) the first quantized matmul dies
with SIGSEGV at ``ldtilecfg``: in the measuring process that would end the whole run. Only builds whose
``llama_print_system_info()`` names AMX are asked (a second or two, once per file and process).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import cache

AMX_FLAGS = ("AMX_INT8 = 1", "AMX_TILE = 1", "AMX_BF16 = 1")

SCRIPT = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
llm.eval([0, 1, 2, 3])
"""


def uses_amx(system_info: str) -> bool:
    return any(flag in system_info for flag in AMX_FLAGS)


@cache
def forward_fails(path: str, script: str = SCRIPT) -> str | None:
    """Why a four-token forward pass on ``path`` fails in a child process (None when it runs)."""
    try:
        done = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "a four-token forward pass did not finish in 300 s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return f"a four-token forward pass died with {name}"
    tail = done.stderr.strip().splitlines()[-1:] or ["no message"]
    return f"a four-token forward pass exited {done.returncode} ({tail[0]})"


def build_unusable(system_info: str, path: str) -> str | None:
    """Why this llama.cpp build cannot run ``path`` here (None when it can, or when it needs no asking)."""
    if not uses_amx(system_info):
        return None
    why = forward_fails(path)
    if why is None:
        return None
    return (
        f"engine 'llamacpp': this llama.cpp build uses AMX (llama_print_system_info) and, in a child process, {why}: "
        f"the CPU reports AMX it cannot run (a VM); rebuild llama-cpp-python with "
        f'CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" and the same CXXFLAGS (README, "The llamacpp engine")'
    )
