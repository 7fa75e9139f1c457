// rooflens's AVX2 kernels as C++ torch operators: rooflens_native::linear (low-bit weights) and ::dense_linear (fp32
// weights, few rows). A compiled graph calls them through torch's dispatcher alone, with no Python, ctypes or Python
// custom-op trampoline per call (about 200 calls per decoded token on a small model).
//
// The kernel itself stays in lowbit_avx2.c, built and loaded once by rooflens/kernels/native.py; this shim gets its
// entry points' addresses from there (rooflens_native::bind), so both paths run the very same machine code. The
// dataflow is cpu_native.native_lowbit_linear's, step for step: flat tiles below DENSE_FROM_ROWS rows, else the
// exact dequantized slices times torch's fp32 GEMM, and the same output layouts (the fake in kernels/ops.py).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace {

using gemm_fn = int (*)(const void*, int, int, int, const void*, const void*, float, int, const float*, int, float*,
                        int);
using dequant_fn = int (*)(const void*, int, int, int, const void*, const void*, float, int, int, int, float*, int);
using permute_fn = void (*)(const float*, int, int, int, float*);
using f32_gemm_fn = int (*)(const float*, int, int, const float*, int, float*, int);

gemm_fn gemm = nullptr, gemm_a8 = nullptr;
dequant_fn dequant = nullptr;
permute_fn permute = nullptr;
f32_gemm_fn f32_gemm = nullptr;

void bind(int64_t gemm_addr, int64_t gemm_a8_addr, int64_t dequant_addr, int64_t permute_addr, int64_t f32_addr) {
    gemm = reinterpret_cast<gemm_fn>(gemm_addr);
    gemm_a8 = reinterpret_cast<gemm_fn>(gemm_a8_addr);
    dequant = reinterpret_cast<dequant_fn>(dequant_addr);
    permute = reinterpret_cast<permute_fn>(permute_addr);
    f32_gemm = reinterpret_cast<f32_gemm_fn>(f32_addr);
}

// y = x @ weight^T + bias for an fp32 weight [N, K]: rooflens's fp32 GEMV (rl_f32_gemm) below max_rows rows of x,
// else (or for any other dtype or layout) torch's own linear.
at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t max_rows) {
    TORCH_CHECK(weight.dim() == 2 && x.size(-1) == weight.size(1), "rooflens_native::dense_linear: x [..., ",
                weight.size(1), "] and weight [N, K] expected");
    const int64_t n = weight.size(0), k = weight.size(1), m = x.numel() / k;
    const bool fp32 = x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat;
    if (!f32_gemm || !fp32 || m >= max_rows || m == 0 || !weight.is_contiguous() || !x.device().is_cpu())
        return at::linear(x, weight, bias);
    const at::Tensor x2 = x.contiguous();
    auto shape = x.sizes().vec();
    shape.back() = n;
    at::Tensor y = at::empty(shape, x.options());
    const int rc = f32_gemm(weight.data_ptr<float>(), n, k, x2.data_ptr<float>(), m, y.data_ptr<float>(),
                            at::get_num_threads());
    TORCH_CHECK(rc == 0, "rooflens fp32 GEMV rejected its arguments (code ", rc, ")");
    return bias ? at::add(y, *bias) : y;
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
    m.def("bind(int gemm, int gemm_a8, int dequant, int permute, int f32_gemm) -> ()", bind);  // no tensors: every key
    m.def("dense_linear(Tensor x, Tensor weight, Tensor? bias, int max_rows) -> Tensor");
    m.def(
        "linear(Tensor x, Tensor codes, Tensor scales, Tensor? zeros, Tensor? bias, int kbits, float zconst, "
        "int group_size, int n, int k, bool int8_activations, int dense_from_rows, int slice_elements) -> Tensor");
}

TORCH_LIBRARY_IMPL(rooflens_native, CPU, m) {
    m.impl("linear", linear);
    m.impl("dense_linear", dense_linear);
}
