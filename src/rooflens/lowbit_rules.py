"""What the rooflens low-bit format accepts (bit widths, group sizes, precision ladders): plain checks
without torch, shared by the kernels and by the option schemas that validate experiments."""

from __future__ import annotations

from collections.abc import Sequence

ALLOWED_BITS: tuple[int, ...] = (8, 4, 3, 2)
ALLOWED_GROUP_SIZES: tuple[int, ...] = (32, 64, 128)
# Forward paths of a rooflens low-bit layer (``LowBitLinear(kernel=...)``, the engines' ``kernel`` option).
KERNEL_CHOICES: dict[str, str] = {
    "auto": "Triton on CUDA; on CPU the native kernel where it builds, else int4pack, else torch",
    "native": "rooflens's C kernel for x86-64 AVX2 CPUs (built once with the system C compiler)",
    "native_a8": "the same C kernel with activations quantized to int8 per 32 values below 16 rows (integer dot "
    "products, as llama.cpp's q8 blocks: faster, lossy in the activations)",
    "int4pack": "torch's int4 CPU kernel (bf16 activations; 8-bit as two 4-bit halves)",
    "triton": "rooflens's Triton kernel (on CPU only under TRITON_INTERPRET=1)",
    "torch": "the plain-torch reference (dequantize every call; slow, exact)",
}
KERNELS: tuple[str, ...] = tuple(KERNEL_CHOICES)


def describe_kernels() -> str:
    return "; ".join(f"{k}: {v}" for k, v in KERNEL_CHOICES.items())


def check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        raise ValueError(f"bits={bits!r} is not supported; allowed bit widths: {sorted(ALLOWED_BITS)}")
    return bits


def check_group_size(group_size: object, k: int | None = None) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size not in ALLOWED_GROUP_SIZES:
        raise ValueError(
            f"group_size={group_size!r} is not supported; allowed group sizes: {list(ALLOWED_GROUP_SIZES)}"
        )
    if k is not None and k % group_size != 0:
        raise ValueError(
            f"group_size={group_size} does not divide the input dimension K={k}; K must be a multiple of "
            f"group_size (allowed group sizes: {list(ALLOWED_GROUP_SIZES)})"
        )
    return group_size


def check_ladder(ladder: Sequence[int]) -> tuple[int, ...]:
    """A ladder of strictly decreasing supported bit widths; ValueError naming what is allowed."""
    rungs = tuple(int(b) for b in ladder)
    if not rungs:
        raise ValueError("the ladder needs at least one rung (bits in 8, 4, 3, 2)")
    for b in rungs:
        check_bits(b)
    if any(a <= b for a, b in zip(rungs, rungs[1:])):
        raise ValueError(f"ladder {list(rungs)}: bits must strictly decrease (e.g. [8, 4] or [4, 3, 2])")
    return rungs
