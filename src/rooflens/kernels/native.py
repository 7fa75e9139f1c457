"""Build and load rooflens's C kernels (``kernels/csrc/``) with the system C compiler, once per machine.

The shared library is compiled on first use into ``$ROOFLENS_CACHE/kernels/`` under a name that hashes the
source, the flags and the compiler's version, written atomically, and loaded with :mod:`ctypes` (calls
release the GIL). No torch headers and no Python headers are needed, so a build takes ~2 s. When the CPU
lacks the instruction sets, or no compiler works, :func:`native_unavailable` says why and callers fall back.

Compiled graphs call the kernel through a torch operator instead: ``csrc/lowbit_op.cpp``, built with the C++
compiler against the running torch's headers (~13 s, once per torch version), loaded with
``torch.ops.load_library`` and bound to the loaded kernel's entry points, so both run the same machine code
(:func:`native_operator_unavailable`).

Loading a library runs its code, so the cache is trusted only as the user's own: the folder must belong to
this user and be writable by no one else (else the kernel is unavailable, the reason naming the folder and
the fix), and a library is loaded only when its SHA-256 matches the digest rooflens recorded beside it when
it built it; a library without one, or that does not match (planted, truncated, restored from another
machine's cache), is rebuilt.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

from rooflens.device.cpu import detect_cpu
from rooflens.fsutil import UntrustedFolder, atomic_output, cache_dir, own_folder, write_atomic

SOURCE = Path(__file__).with_name("csrc") / "lowbit_avx2.c"
OP_SOURCE = Path(__file__).with_name("csrc") / "lowbit_op.cpp"
CPU_FLAGS = ("avx2", "fma", "f16c")
CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC", "-std=gnu11")

_P = ctypes.c_void_p
_I = ctypes.c_int
_F = ctypes.c_float
SIGNATURES = {  # name -> (argtypes, restype); see the C source for what each argument is
    "rl_lowbit_gemm": ((_P, _I, _I, _I, _P, _P, _F, _I, _P, _I, _P, _I), _I),
    "rl_lowbit_gemm_a8": ((_P, _I, _I, _I, _P, _P, _F, _I, _P, _I, _P, _I), _I),
    "rl_lowbit_dequant": ((_P, _I, _I, _I, _P, _P, _F, _I, _I, _I, _P, _I), _I),
    "rl_permute_x": ((_P, _I, _I, _I, _P), None),
    "rl_f32_gemm": ((_P, _I, _I, _P, _I, _P, _I), _I),
}


def compiler() -> list[str] | None:
    """The C compiler command to use: ``$CC`` split as a shell would (``ccache gcc``, a quoted path), else
    ``cc``, ``gcc`` or ``clang`` on the PATH."""
    env = shlex.split(os.environ.get("CC", ""))
    if env:
        return env if shutil.which(env[0]) else None
    return next(([c] for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


PLANTED = "a library planted there would run inside rooflens"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(cc: list[str], source: Path | None = None, flags: tuple[str, ...] = CFLAGS, salt: str = "") -> Path:
    """The library built from ``source`` (default: the C kernel, :data:`SOURCE`) with ``flags`` by ``cc`` (``salt``:
    anything else it depends on): the cached one if its digest is the one recorded when it was built, else built
    now (and its digest recorded)."""
    source = source or SOURCE  # read now, not when this was defined (tests point SOURCE elsewhere)
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(source.read_bytes() + " ".join(flags).encode() + (version + salt).encode()).hexdigest()[:16]
    folder = own_folder(cache_dir("kernels"), PLANTED)
    target, digest = folder / f"{source.stem}-{key}.so", folder / f"{source.stem}-{key}.sha256"
    if target.exists() and digest.exists() and digest.read_text().strip() == _sha256(target):
        return target
    with atomic_output(target) as tmp:  # the linker writes the .so executable
        done = subprocess.run([*cc, str(source), *flags, "-o", str(tmp)], capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"{shlex.join(cc)} failed on {source.name}: {done.stderr.strip()[-600:]}")
        write_atomic(digest, _sha256(tmp) + "\n")
    return target


@cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"the rooflens native kernel is x86-64 AVX2 code; this machine is {platform.machine()}"
    missing = [f for f in CPU_FLAGS if f not in detect_cpu().flags]
    if missing:
        return None, f"this CPU lacks {', '.join(missing)} (the native kernel needs {', '.join(CPU_FLAGS)})"
    cc = compiler()
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc) to build the native kernel"
    import torch  # noqa: F401  (loads torch's libgomp.so.1 first, so the kernel shares its OpenMP runtime)

    try:
        path = _build(cc)
        lib = ctypes.CDLL(str(path))
    except UntrustedFolder as err:
        return None, f"the native kernel is not loaded from an untrusted cache: {err}"
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        return None, f"could not build or load the native kernel: {err}"
    missing = [name for name in SIGNATURES if not hasattr(lib, name)]
    if missing:
        return None, f"the native kernel {path} lacks {', '.join(missing)}: not rooflens's build; delete it to rebuild"
    for name, (args, res) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib, None


def native_unavailable() -> str | None:
    """Why the native kernel cannot run here (None when it can); builds it on first call."""
    return _load()[1]


def native_library() -> ctypes.CDLL:
    lib, why = _load()
    if lib is None:
        raise RuntimeError(why)
    return lib


def cxx_compiler() -> list[str] | None:
    """The C++ compiler command: ``$CXX`` split as a shell would, else ``c++``, ``g++`` or ``clang++`` on the PATH."""
    env = shlex.split(os.environ.get("CXX", ""))
    if env:
        return env if shutil.which(env[0]) else None
    return next(([c] for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


def _torch_flags() -> tuple[str, ...]:
    """Compile and link flags for a shared library of torch operators against the running torch."""
    import torch

    root = Path(torch.__file__).parent
    include, lib = root / "include", root / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return (
        *("-O2", "-shared", "-fPIC", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"),
        *(f"-I{include}", f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}"),
        *(f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"),
    )


@cache
def _load_operator() -> str | None:
    """Build and load ``csrc/lowbit_op.cpp`` (the kernel as the torch operator ``rooflens_native::linear``) and bind it
    to the loaded kernel's entry points; None when it is ready, else why not (callers keep the Python operator)."""
    lib, why = _load()
    if lib is None:
        return why
    cxx = cxx_compiler()
    if cxx is None:
        return "no C++ compiler found (set CXX, or install g++) to build the native kernel's torch operator"
    import torch

    try:
        torch.ops.load_library(str(_build(cxx, OP_SOURCE, _torch_flags(), salt=torch.__version__)))
    except UntrustedFolder as err:
        return f"the native kernel's operator is not loaded from an untrusted cache: {err}"
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        return f"could not build or load the native kernel's torch operator: {err}"
    entries = ("rl_lowbit_gemm", "rl_lowbit_gemm_a8", "rl_lowbit_dequant", "rl_permute_x", "rl_f32_gemm")
    torch.ops.rooflens_native.bind(*(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in entries))
    return None


def native_operator_unavailable() -> str | None:
    """Why the C++ operator ``rooflens_native::linear`` cannot be used here (None when it is loaded); builds it on first
    call (~20 s against torch's headers, then cached)."""
    return _load_operator()
