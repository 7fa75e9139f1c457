"""rooflens's AVX2 kernel (kernels/csrc/lowbit_avx2.c) against the plain-torch reference of the format."""

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from rooflens.kernels import LowBitLinear, quantize, reference_linear
from rooflens.kernels.cpu_native import DENSE_FROM_ROWS, native_lowbit_linear, plan_for
from rooflens.kernels.lowbit import dequantize
from rooflens.kernels.native import native_library, native_unavailable

pytestmark = pytest.mark.skipif(native_unavailable() is not None, reason=str(native_unavailable()))

ROWS = (1, 3, 8, 13, DENSE_FROM_ROWS + 5)  # GEMV, flat tiles of 2 / 4 / 8 and a remainder, the dense path


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def summation_error(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, qw) -> float:
    """max |out - ref| over the scale of the terms the kernel sums, sum_k |x_k| (|u_k s| + |z s|): it sums the
    codes times x and subtracts the zero point once per group, so that is where its fp32 rounding is bounded
    (relative to the result itself a cancelling sum could look arbitrarily bad)."""
    z = qw.zeros.float() if qw.zeros is not None else torch.full(qw.scales.shape, 2.0 ** (qw.bits - 1))
    zs = (z * qw.scales.float()).repeat_interleave(qw.group_size, dim=1)
    terms = x.abs() @ (dequantize(qw).abs() + 2 * zs).t()
    return float((out - ref).abs().max() / terms.max())


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@torch.no_grad()
def test_native_kernel_matches_the_reference(bits, group_size, symmetric):
    gen = torch.Generator().manual_seed(bits * 1000 + group_size + symmetric)
    for n, k in ((37, 3 * group_size), (130, 2 * group_size), (1, group_size), (6, 4 * group_size)):  # ragged N
        w = torch.randn(n, k, generator=gen) * 0.05
        qw = quantize(w, bits=bits, group_size=group_size, symmetric=symmetric)
        plan = plan_for(qw)
        bias = torch.randn(n, generator=gen)
        for m in ROWS:
            x = torch.randn(m, k, generator=gen)
            out = native_lowbit_linear(x, plan, bias)
            assert out.shape == (m, n) and out.dtype == torch.float32
            # fp32 throughout: only the summation order differs from the reference
            assert summation_error(out, reference_linear(x, qw, bias), x, qw) < 1e-6, (n, k, m)
        x3 = torch.randn(2, 3, k, generator=gen).to(torch.bfloat16)  # leading dims and bf16 inputs
        out3 = native_lowbit_linear(x3, plan)
        assert out3.shape == (2, 3, n) and out3.dtype == torch.bfloat16
        assert rel(out3, reference_linear(x3.float(), qw)) < 1e-2


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_dense_path_dequantizes_exactly(bits):
    """rl_lowbit_dequant writes (u - z) s in plane order: un-permuted, it is the reference's weight bit for bit."""
    n, k = 19, 128
    qw = quantize(torch.randn(n, k), bits=bits, group_size=32, symmetric=False)
    plan = plan_for(qw)
    w = torch.empty(n - 3, k)
    assert native_library().rl_lowbit_dequant(*plan.weight_args, 3, n, w.data_ptr(), 2) == 0  # rows 3 .. n
    planes = 8 // bits
    unpermuted = w.reshape(n - 3, k // (8 * planes), planes, 8).transpose(-1, -2).reshape(n - 3, k)
    assert torch.equal(unpermuted, dequantize(qw)[3:])


def test_the_kernel_rejects_what_it_cannot_read():
    lib, qw = native_library(), quantize(torch.randn(8, 64), bits=4, group_size=32)
    y, x = torch.empty(1, 8), torch.randn(1, 64)
    codes, scales = qw.packed.data_ptr(), qw.scales.data_ptr()
    rows = (x.data_ptr(), 1, y.data_ptr(), 1)
    assert lib.rl_lowbit_gemm(codes, 4, 8, 64, scales, None, 8.0, 32, *rows) == 0
    assert lib.rl_lowbit_gemm(codes, 3, 8, 64, scales, None, 4.0, 32, *rows) == -1  # 3-bit codes straddle words
    assert lib.rl_lowbit_gemm(codes, 4, 8, 64, scales, None, 8.0, 24, *rows) == -2  # a group the format lacks
    assert lib.rl_lowbit_dequant(codes, 4, 8, 64, scales, None, 8.0, 32, 0, 9, y.data_ptr(), 1) == -4  # rows > N


def test_results_do_not_depend_on_the_thread_count():
    qw = quantize(torch.randn(300, 256), bits=4, group_size=64)
    plan, x = plan_for(qw), torch.randn(5, 256)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native_lowbit_linear(x, plan)
        torch.set_num_threads(2)
        two = native_lowbit_linear(x, plan)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # each output row is computed by one thread, in one order


@pytest.mark.parametrize("bits, packed_bits", [(8, 8), (4, 4), (3, 4), (2, 2)])
def test_bytes_read_are_what_the_kernel_reads(bits, packed_bits):
    """8/4/2-bit weights are read as stored; 3-bit codes run in the 4-bit packing and are credited with it."""
    qw = quantize(torch.randn(40, 256), bits=bits, group_size=64, symmetric=False)
    plan = plan_for(qw)
    assert plan.read_bytes == 40 * 256 * packed_bits // 8 + 2 * 40 * 4 * 2  # codes + fp16 scales and zeros
    if bits != 3:
        assert plan.read_bytes == qw.storage_bytes and plan.codes.data_ptr() == qw.packed.data_ptr()  # no copy
    layer = LowBitLinear(qw, kernel="native")
    cpu = torch.device("cpu")
    assert layer.read_bytes(cpu, torch.float32, rows=1) == plan.read_bytes
    dense = layer.read_bytes(cpu, torch.float32, rows=DENSE_FROM_ROWS)  # + the fp32 weight written and read
    assert dense == plan.read_bytes + 2 * 40 * 256 * 4


def test_auto_takes_the_native_kernel_on_the_cpu():
    layer = LowBitLinear.from_linear(torch.nn.Linear(64, 48), bits=4, group_size=32)
    assert layer.path(torch.device("cpu")) == "native"
    x = torch.randn(2, 64)
    torch.testing.assert_close(layer(x), reference_linear(x, layer.qweight, layer.bias), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "cc, why",
    [
        ("false", "could not build or load the native kernel: false failed"),
        ("no-such-cc", "no C compiler"),
        ("'no such cc' -O2", "no C compiler"),  # quoted as a shell would: one program name with spaces
        ("env true", "could not build or load the native kernel"),  # a wrapper (as ccache gcc): env runs true
    ],
)
def test_a_missing_or_broken_compiler_is_a_reason_not_a_crash(cc, why, monkeypatch, tmp_path):
    from rooflens.kernels import native

    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", cc)
    native._load.cache_clear()
    try:
        assert native.native_unavailable().startswith(why)
        assert LowBitLinear.from_linear(torch.nn.Linear(64, 8), bits=4, group_size=32).path(torch.device("cpu")) != (
            "native"
        )
    finally:
        native._load.cache_clear()  # the next caller builds (or finds) the real kernel again


def test_a_cc_with_a_wrapper_is_split_as_a_shell_would(monkeypatch):
    from rooflens.kernels import native

    monkeypatch.setenv("CC", "env  'gcc'")  # as CC="ccache gcc": a wrapper, then the compiler
    assert native.compiler() == ["env", "gcc"]


def test_a_cached_library_without_the_kernel_symbols_is_a_reason_not_a_crash(monkeypatch, tmp_path):
    from rooflens.kernels import native

    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path))
    cc = native.compiler()
    if cc is None:
        pytest.skip("no C compiler here")
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True).stdout
    source = tmp_path / "other.c"
    source.write_text("int something_else(void) { return 1; }\n")
    monkeypatch.setattr(native, "SOURCE", source)  # a library of the same name, built from other code
    other = native._build(cc)
    assert other.exists() and version
    native._load.cache_clear()
    try:
        why = native.native_unavailable()
        assert why is not None and "lacks rl_lowbit_gemm" in why
    finally:
        native._load.cache_clear()


# ---------------------------------------------------------------------------- the kernel cache is trusted only as the user's own


def _real_target(native, cc) -> tuple[Path, Path]:
    """Where _build keeps the kernel library for this compiler, and its recorded digest."""
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(native.SOURCE.read_bytes() + " ".join(native.CFLAGS).encode() + version.encode())
    stem = f"{native.SOURCE.stem}-{key.hexdigest()[:16]}"
    folder = native.cache_dir("kernels")
    return folder / f"{stem}.so", folder / f"{stem}.sha256"


def _forged_library(cc, where: Path) -> Path:
    """A library of other code that carries the kernel's symbols (what a planted file would look like)."""
    source = where / "forged.c"
    source.write_text(
        "int rl_lowbit_gemm(void) { return 42; } int rl_lowbit_dequant(void) { return 42; }\n"
        "void rl_permute_x(void) {}\n"
    )
    out = where / "forged.so"
    subprocess.run([*cc, "-shared", "-fPIC", str(source), "-o", str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("digest", ["none", "stale"])
def test_a_library_planted_in_the_cache_is_rebuilt_not_loaded(digest, monkeypatch, tmp_path):
    from rooflens.kernels import native

    cc = native.compiler()
    if cc is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "cache"))
    target, recorded = _real_target(native, cc)
    target.parent.mkdir(parents=True, mode=0o700)
    shutil.copy(_forged_library(cc, tmp_path), target)  # the name hashes public inputs: anyone can compute it
    if digest == "stale":
        recorded.write_text("0" * 64 + "\n")  # a digest that is not this file's (another build, a restored cache)
    forged = target.read_bytes()
    native._load.cache_clear()
    try:
        assert native.native_unavailable() is None
        assert target.read_bytes() != forged  # rebuilt from rooflens's source
        assert recorded.read_text().strip() == hashlib.sha256(target.read_bytes()).hexdigest()
        x = torch.randn(2, 64)
        layer = LowBitLinear.from_linear(torch.nn.Linear(64, 16), bits=4, group_size=32, kernel="native")
        torch.testing.assert_close(layer(x), reference_linear(x, layer.qweight, layer.bias), rtol=1e-5, atol=1e-6)
    finally:
        native._load.cache_clear()


def test_a_cache_folder_others_can_write_is_refused_with_the_fix(monkeypatch, tmp_path):
    from rooflens.kernels import native

    if native.compiler() is None:
        pytest.skip("no C compiler here")
    kernels = tmp_path / "cache" / "kernels"
    kernels.mkdir(parents=True)
    kernels.chmod(0o777)  # a shared cache folder
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "cache"))
    native._load.cache_clear()
    try:
        why = native.native_unavailable()
        assert why is not None and "untrusted cache" in why and str(kernels) in why
        assert "writable by group or others (mode 0777)" in why and f"chmod go-w {kernels}" in why
        assert not list(kernels.iterdir())  # nothing built, nothing loaded
        kernels.chmod(0o755)
        native._load.cache_clear()
        assert native.native_unavailable() is None
    finally:
        native._load.cache_clear()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a folder away")
def test_a_cache_folder_of_another_user_is_refused(monkeypatch, tmp_path):
    from rooflens.kernels import native

    if native.compiler() is None:
        pytest.skip("no C compiler here")
    kernels = tmp_path / "cache" / "kernels"
    kernels.mkdir(parents=True, mode=0o755)
    os.chown(kernels, 65534, 65534)
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "cache"))
    native._load.cache_clear()
    try:
        why = native.native_unavailable()
        assert why is not None and "owned by another user (uid 65534)" in why and str(kernels) in why
    finally:
        native._load.cache_clear()


def test_a_new_kernel_cache_folder_is_private(monkeypatch, tmp_path):
    from rooflens.kernels import native

    if native.compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("ROOFLENS_CACHE", str(tmp_path / "fresh"))
    native._load.cache_clear()
    try:
        assert native.native_unavailable() is None
        assert stat.S_IMODE((tmp_path / "fresh" / "kernels").stat().st_mode) == 0o700  # whatever the umask
    finally:
        native._load.cache_clear()


def int8_activations(x: torch.Tensor) -> torch.Tensor:
    """x as the int8 path sees it, computed independently: per chunk of 32 values q = round(x * 127 / max|x|)
    (ties to even, as the kernel's cvtss2si), times max|x| / 127."""
    chunks = x.float().reshape(*x.shape[:-1], -1, 32)
    amax = chunks.abs().amax(-1, keepdim=True)
    # a true division, as the kernel's (a scalar over a tensor is computed as reciprocal(amax) * 127 in torch)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(chunks * inv).clamp(-127, 127)
    return (q * (amax / 127.0)).reshape(x.shape)


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@torch.no_grad()
def test_int8_activation_path_is_the_reference_on_quantized_activations(bits, group_size, symmetric):
    """kernel: native_a8 computes the format's product with x quantized per 32 values: exact in integers, so
    against the reference on those activations only fp32 summation error remains; ragged N, short last blocks
    of codes (K * bits / 8 not a multiple of 32 bytes) and every tile of rows."""
    gen = torch.Generator().manual_seed(bits * 100 + group_size + symmetric)
    for n, k in ((37, 3 * group_size), (130, 2 * group_size), (1, group_size), (6, 4 * group_size)):
        w = torch.randn(n, k, generator=gen) * 0.05
        qw = quantize(w, bits=bits, group_size=group_size, symmetric=symmetric)
        plan, bias = plan_for(qw), torch.randn(n, generator=gen)
        for m in (1, 2, 3, 4, 7, DENSE_FROM_ROWS - 1):
            x = torch.randn(m, k, generator=gen) * torch.rand(m, k, generator=gen) * 3
            out = native_lowbit_linear(x, plan, bias, int8_activations=True)
            xq = int8_activations(x)
            assert summation_error(out, reference_linear(xq, qw, bias), xq, qw) < 1e-6, (n, k, m)
            exact = reference_linear(x, qw, bias)
            assert summation_error(out, exact, x, qw) < 2e-2, (n, k, m)  # the activations' rounding, bounded
            assert summation_error(out, exact, x, qw) > 1e-6  # and present: this is not the fp32 path
        x = torch.randn(DENSE_FROM_ROWS + 3, k, generator=gen)  # the dense path is the exact one
        dense = native_lowbit_linear(x, plan, bias, int8_activations=True)
        assert summation_error(dense, reference_linear(x, qw, bias), x, qw) < 1e-6
