"""rooflens.kernels: low-bit format, torch reference, Triton kernel (CPU interpreter in CI), LowBitLinear.

Without a GPU the Triton kernel runs in the interpreter: ``TRITON_INTERPRET=1`` is set here, before any
kernel is decorated (``rooflens.kernels.triton_lowbit`` decorates lazily on first launch, so this works even
if another module imported ``triton`` earlier).  On a CUDA machine the env var is left alone and the kernel
tests run the compiled kernel on the GPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from torch import nn  # noqa: E402

from rooflens.kernels import (  # noqa: E402
    ALLOWED_BITS,
    LowBitLinear,
    QuantizedWeight,
    dequantize,
    format_bits_per_weight,
    pack_codes,
    quantize,
    quantize_codes,
    quantize_linear_layers,
    reference_linear,
    unpack_codes,
)

try:
    import triton  # noqa: F401

    from rooflens.kernels.triton_lowbit import lowbit_linear

    _TRITON_SKIP = None
except Exception as exc:  # pragma: no cover - depends on the environment
    _TRITON_SKIP = f"triton not importable ({exc!r}); pip install 'rooflens[kernels]'"

needs_triton = pytest.mark.skipif(_TRITON_SKIP is not None, reason=_TRITON_SKIP or "")

KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# One fixed tile config for the bulk of the kernel cases: no autotune in the interpreter, and on a GPU it
# keeps the suite fast (one autotuned case below).  BLOCK_N=32 makes N=48 and N=37 ragged.
FIXED = {"BLOCK_N": 32, "BLOCK_K": 64}  # WIDE_LOAD (contiguous word loads) defaults to True
GATHER = {"BLOCK_N": 32, "BLOCK_K": 64, "WIDE_LOAD": False}  # one word gathered per code


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------ format


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_pack_unpack_round_trip_exact(bits):
    g = torch.Generator().manual_seed(bits)
    for n, k in [(5, 32), (7, 96), (3, 256)]:
        codes = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.int32)
        codes[0, :] = 2**bits - 1  # all ones (sign bit of the top field for 8/4/2-bit)
        packed = pack_codes(codes, bits)
        assert packed.dtype == torch.int32 and tuple(packed.shape) == (n, k * bits // 32)
        assert torch.equal(unpack_codes(packed, bits, k), codes)


def test_pack_layout_is_little_endian_bit_stream():
    codes = torch.arange(32, dtype=torch.int32).remainder(8).reshape(1, 32)  # 3-bit codes 0..7,0..7,...
    words = pack_codes(codes, 3).to(torch.int64) & 0xFFFFFFFF
    stream = sum(int(w) << (32 * i) for i, w in enumerate(words[0].tolist()))
    for k in range(32):
        assert (stream >> (3 * k)) & 7 == k % 8
    # 4-bit: 8 codes per word, code j in bits [4j, 4j+4)
    c4 = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15] * 4], dtype=torch.int32)
    assert (int(pack_codes(c4, 4)[0, 0]) & 0xFFFFFFFF) == 0xF7654321


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_quantization_error_bound_and_storage(bits, symmetric):
    torch.manual_seed(0)
    for group in (32, 64, 128):
        w = torch.randn(24, 256) * torch.rand(24, 1) * 3
        w[0, :group] = 0.0  # an all-zero group
        w[1, :group] = w[1, :group].abs() + 0.5  # an all-positive group
        qw = quantize(w, bits, group, symmetric)
        codes, _, _ = quantize_codes(w, bits, group, symmetric)
        assert torch.equal(unpack_codes(qw.packed, bits, 256), codes)
        assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
        err = (w - dequantize(qw)).abs().reshape(24, 256 // group, group)
        half_scale = qw.scales.float().unsqueeze(-1) / 2
        assert bool((err <= half_scale * (1 + 1e-6) + 1e-12).all()), (err - half_scale).max()
        assert float(err[0, 0].max()) == 0.0  # zero is exactly representable
        # storage: exactly bits + 16/g (+16/g) bits per weight
        expect = 24 * 256 * bits // 8 + 24 * (256 // group) * 2 * (1 if symmetric else 2)
        assert qw.storage_bytes == expect
        assert qw.bits_per_weight == pytest.approx(format_bits_per_weight(bits, group, symmetric))
        assert qw.bits_per_weight == bits + 16 / group + (0 if symmetric else 16 / group)
        assert (qw.zeros is None) == symmetric


def test_reference_linear_matches_dense_matmul():
    torch.manual_seed(1)
    w, x, b = torch.randn(40, 128), torch.randn(3, 5, 128), torch.randn(40)
    qw = quantize(w, 4, 64, False)
    ref = reference_linear(x, qw, b)
    assert ref.shape == (3, 5, 40) and ref.dtype == torch.float32
    torch.testing.assert_close(ref, x @ dequantize(qw).T + b)
    assert reference_linear(x.to(torch.bfloat16), qw).dtype == torch.bfloat16


def test_bad_inputs_raise_value_error():
    w = torch.randn(8, 96)
    with pytest.raises(ValueError, match=r"bits=5.*allowed bit widths: \[2, 3, 4, 8\]"):
        quantize(w, bits=5, group_size=32)
    with pytest.raises(ValueError, match=r"group_size=48.*allowed group sizes: \[32, 64, 128\]"):
        quantize(torch.randn(8, 96), bits=4, group_size=48)
    with pytest.raises(ValueError, match=r"group_size=64 does not divide .*K=96"):
        quantize(w, bits=4, group_size=64)
    with pytest.raises(ValueError, match="bits=5"):
        quantize_linear_layers(nn.Sequential(nn.Linear(64, 8)), bits=5, group_size=32)
    with pytest.raises(ValueError, match="group_size=48"):
        quantize_linear_layers(nn.Sequential(nn.Linear(96, 8)), bits=4, group_size=48)
    qw = quantize(w, 4, 32)
    with pytest.raises(ValueError, match="K=96"):
        reference_linear(torch.randn(2, 64), qw)
    with pytest.raises(ValueError, match="packed must be int32"):
        QuantizedWeight(qw.packed[:, :-1], qw.scales, None, 4, 32, True, (8, 96))


# ------------------------------------------------------------------------------------------ kernel


def _case(bits, symmetric, group, m, n, k, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    x = torch.randn(m, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g)
    qw = quantize(w, bits, group, symmetric).to(KERNEL_DEVICE)
    return x.to(KERNEL_DEVICE), qw, bias.to(KERNEL_DEVICE)


@needs_triton
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_kernel_matches_reference_fp32(bits, symmetric, group):
    seed = 0
    for m in (1, 3, 16):
        for n in (48, 37):
            seed += 1
            x, qw, bias = _case(bits, symmetric, group, m, n, 256, torch.float32, seed)
            out = torch.full((m, n), float("nan"), device=KERNEL_DEVICE)
            cfg = FIXED if (bits == 3 or seed % 2) else GATHER  # both unpack paths (3-bit always gathers)
            got = lowbit_linear(x, qw, bias if m != 3 else None, out=out, config=cfg)
            assert got.data_ptr() == out.data_ptr()
            assert not bool(torch.isnan(out).any()), f"unwritten outputs (M={m}, N={n})"
            ref = reference_linear(x, qw, bias if m != 3 else None)
            assert _rel(out, ref) < 1e-5, (m, n, _rel(out, ref))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("bits,symmetric", [(4, True), (3, False), (2, False), (8, True)])
def test_kernel_matches_reference_half_inputs(bits, symmetric, dtype):
    for m, n, group in ((1, 37, 32), (16, 48, 128), (5, 37, 128)):
        x, qw, bias = _case(bits, symmetric, group, m, n, 256, dtype, 10 * m + n)
        out = torch.full((m, n), float("nan"), dtype=dtype, device=KERNEL_DEVICE)
        lowbit_linear(x, qw, bias.to(dtype), out=out, config=FIXED)
        assert out.dtype == dtype and not bool(torch.isnan(out).any())
        assert _rel(out, reference_linear(x, qw, bias.to(dtype))) < 1e-2


@needs_triton
def test_kernel_tails_split_k_and_leading_dims():
    # K=160 is a multiple of the group (32) but not of BLOCK_K=128 -> masked K tail; BLOCK_N=16, N=21.
    for bits, wide in ((3, True), (2, True), (4, False), (8, True)):
        x, qw, bias = _case(bits, False, 32, 4, 21, 160, torch.float32, 7)
        cfg = {"BLOCK_N": 16, "BLOCK_K": 128, "WIDE_LOAD": wide, "num_warps": 4}
        torch.testing.assert_close(
            lowbit_linear(x, qw, bias, config=cfg), reference_linear(x, qw, bias), rtol=1e-5, atol=1e-5
        )
    # GEMV through the tail path as well
    x, qw, _ = _case(4, True, 32, 1, 21, 160, torch.float32, 9)
    got = lowbit_linear(x, qw, config={"BLOCK_N": 16, "BLOCK_K": 128})
    assert _rel(got, reference_linear(x, qw)) < 1e-5
    # split-K (fp32 atomics; 4 K tiles over 2 or 3 partitions, the last one possibly empty)
    x, qw, bias = _case(4, True, 32, 3, 37, 256, torch.float32, 8)
    for split in (2, 3):
        got = lowbit_linear(x, qw, bias, split_k=split, config=FIXED)
        assert _rel(got, reference_linear(x, qw, bias)) < 1e-5
    xb = x.to(torch.bfloat16)
    got = lowbit_linear(xb, qw, bias, split_k=2, config=FIXED)
    assert got.dtype == torch.bfloat16 and _rel(got, reference_linear(xb, qw, bias)) < 1e-2
    # [B, T, K] input, default config (autotuned on CUDA, fixed in the interpreter)
    x3 = torch.randn(2, 3, 256, device=KERNEL_DEVICE)
    got = lowbit_linear(x3, qw)
    assert got.shape == (2, 3, 37) and _rel(got, reference_linear(x3, qw)) < 1e-5
    with pytest.raises(ValueError, match="K=256"):
        lowbit_linear(torch.randn(2, 128, device=KERNEL_DEVICE), qw)
    with pytest.raises(ValueError, match="BLOCK_N"):
        lowbit_linear(x, qw, config={"BLOCK_N": 24, "BLOCK_K": 64})


# ----------------------------------------------------------------------------------- LowBitLinear


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def test_lowbit_linear_on_tiny_llama_8bit():
    model = _tiny_llama()
    ids = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(0))
    ref = model(input_ids=ids).logits
    report = quantize_linear_layers(model, bits=8, group_size=32, symmetric=True)

    projs = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert sorted(report.replaced_names) == sorted(
        f"model.layers.{i}.{'self_attn' if p.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{p}"
        for i in range(2)
        for p in projs
    )
    assert list(report.skipped) == ["lm_head"] and isinstance(model.lm_head, nn.Linear)
    lowbit = {n: m for n, m in model.named_modules() if isinstance(m, LowBitLinear)}
    assert sorted(lowbit) == sorted(report.replaced_names)
    assert report.total_storage_bytes == sum(m.qweight.storage_bytes for m in lowbit.values())
    assert report.bits_per_weight == pytest.approx(8.5)
    assert report.total_original_bytes == 4 * report.quantized_params
    assert report.as_dict()["total_storage_bytes"] == report.total_storage_bytes

    got = model(input_ids=ids).logits  # CPU: the native kernel (or torch's int4 kernel, bf16 activations)
    assert _rel(got, ref) < 2e-2

    # scales survive a dtype cast of the whole model (kept as fp16 bit patterns)
    layer = model.model.layers[0].self_attn.q_proj
    before = layer.qweight.scales.clone()
    model.to(torch.bfloat16)
    assert torch.equal(layer.qweight.scales, before) and layer.qweight.scales.dtype == torch.float16
    assert model(input_ids=ids).logits.dtype == torch.bfloat16


@needs_triton
@torch.no_grad()
def test_lowbit_linear_forced_triton_matches_reference_path():
    model = _tiny_llama().to(KERNEL_DEVICE)
    quantize_linear_layers(model, bits=4, group_size=32, symmetric=False)
    ids = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(1)).to(KERNEL_DEVICE)
    layers = [m for m in model.modules() if isinstance(m, LowBitLinear)]
    for m in layers:
        m.kernel = "torch"
    via_ref = model(input_ids=ids).logits
    for m in layers:
        m.kernel = "triton"
    via_kernel = model(input_ids=ids).logits
    assert _rel(via_kernel, via_ref) < 1e-4


def test_lowbit_module_paths_on_cpu():
    lin = nn.Linear(64, 10)
    mod = LowBitLinear.from_linear(lin, bits=4, group_size=32)
    assert mod.kernel == "auto" and mod.path(torch.device("cpu")) in ("native", "int4pack", "torch")
    x = torch.randn(3, 64)
    ref = reference_linear(x, mod.qweight, lin.bias)
    assert _rel(mod(x), ref) < 1e-2  # bf16 activations and scales in torch's int4 kernel, fp32 in the native one
    mod.kernel = "torch"
    torch.testing.assert_close(mod(x), ref)
    assert set(mod.state_dict()) == {"packed", "scales", "bias"}
    assert ALLOWED_BITS == (8, 4, 3, 2)
