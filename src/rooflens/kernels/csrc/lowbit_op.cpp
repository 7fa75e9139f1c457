// rooflens's AVX2 low-bit kernel as a C++ torch operator, rooflens_native::linear: a compiled graph calls it through
// torch's dispatcher alone, with no Python, ctypes or Python custom-op trampoline per call (about 200 calls per
// decoded token on a small model).
//
// The kernel itself stays in lowbit_avx2.c, built and loaded once by rooflens/kernels/native.py; this shim gets its
// entry points' addresses from there (rooflens_native::bind), so both paths run the very same machine code. The
// dataflow is cpu_native.native_lowbit_linear's, step for step: flat tiles below DENSE_FROM_ROWS rows, else the
// exact dequantized slices times torch's fp32 GEMM, and the same output layouts (the fake in kernels/ops.py).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace {

using gemm_fn = int (*)(const void*, int, int, int, const void*, const void*, float, int, const float*, int, float*,
                        int);
using dequant_fn = int (*)(const void*, int, int, int, const void*, const void*, float, int, int, int, float*, int);
using permute_fn = void (*)(const float*, int, int, int, float*);

gemm_fn gemm = nullptr, gemm_a8 = nullptr;
dequant_fn dequant = nullptr;
permute_fn permute = nullptr;

void bind(int64_t gemm_addr, int64_t gemm_a8_addr, int64_t dequant_addr, int64_t permute_addr) {
    gemm = reinterpret_cast<gemm_fn>(gemm_addr);
    gemm_a8 = reinterpret_cast<gemm_fn>(gemm_a8_addr);
    dequant = reinterpret_cast<dequant_fn>(dequant_addr);
    permute = reinterpret_cast<permute_fn>(permute_addr);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                  const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& bias, int64_t kbits,
                  double zconst, int64_t group_size, int64_t n, int64_t k, bool int8_activations,
                  int64_t dense_from_rows, int64_t slice_elements) {
    TORCH_CHECK(gemm && dequant && permute, "rooflens_native::linear: the kernel is not bound (rooflens_native::bind)");
    TORCH_CHECK(x.device().is_cpu() && x.size(-1) == k, "rooflens_native::linear: x must be a CPU tensor [..., ", k,
                "]");
    TORCH_CHECK(codes.is_contiguous() && scales.is_contiguous() && (!zeros || zeros->is_contiguous()),
                "rooflens_native::linear: the weight's tensors must be contiguous");
    const at::Tensor x2 = x.scalar_type() == at::kFloat ? x.contiguous() : x.to(at::kFloat).contiguous();
    const int64_t m = x2.numel() / k;
    const void* z = zeros ? zeros->data_ptr() : nullptr;
    const int threads = at::get_num_threads();
    auto shape = x.sizes().vec();
    shape.back() = n;
    const auto f32 = x.options().dtype(at::kFloat);
    at::Tensor y;
    if (m < dense_from_rows) {
        y = at::empty(shape, f32);
        gemm_fn fn = int8_activations ? gemm_a8 : gemm;
        TORCH_CHECK(fn, "rooflens_native::linear: the int8-activation kernel is not bound");
        const int rc = fn(codes.data_ptr(), kbits, n, k, scales.data_ptr(), z, zconst, group_size,
                          x2.data_ptr<float>(), m, y.data_ptr<float>(), threads);
        TORCH_CHECK(rc == 0, "rooflens native kernel rejected its arguments (code ", rc, ")");
    } else {
        at::Tensor xp = at::empty({m, k}, f32);
        permute(x2.data_ptr<float>(), m, k, kbits, xp.data_ptr<float>());
        at::Tensor yt = at::empty({n, m}, f32);  // y transposed: each slice of rows is contiguous
        const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(n, slice_elements / k));
        at::Tensor w = at::empty({rows, k}, f32);
        for (int64_t n0 = 0; n0 < n; n0 += rows) {
            const int64_t n1 = std::min(n, n0 + rows);
            const int rc = dequant(codes.data_ptr(), kbits, n, k, scales.data_ptr(), z, zconst, group_size, n0, n1,
                                   w.data_ptr<float>(), threads);
            TORCH_CHECK(rc == 0, "rooflens native kernel rejected its arguments in dequant (code ", rc, ")");
            at::Tensor out = yt.narrow(0, n0, n1 - n0);
            at::mm_out(out, w.narrow(0, 0, n1 - n0), xp.t());
        }
        y = yt.t().reshape(shape);
    }
    if (y.scalar_type() != x.scalar_type()) y = y.to(x.scalar_type());
    return bias ? at::add(y, *bias) : y;
}

}  // namespace

TORCH_LIBRARY(rooflens_native, m) {
    m.def("bind(int gemm, int gemm_a8, int dequant, int permute) -> ()", bind);  // no tensors: every key
    m.def(
        "linear(Tensor x, Tensor codes, Tensor scales, Tensor? zeros, Tensor? bias, int kbits, float zconst, "
        "int group_size, int n, int k, bool int8_activations, int dense_from_rows, int slice_elements) -> Tensor");
}

TORCH_LIBRARY_IMPL(rooflens_native, CPU, m) { m.impl("linear", linear); }
