// rooflens low-bit weight-only kernels for x86-64 CPUs with AVX2, FMA and F16C.
//
// They read rooflens's format as stored (rooflens/kernels/lowbit.py): per output row, the codes as a
// little-endian bit stream (8, 4 or 2 bits; 3-bit weights are expanded to 4 bits by the caller), fp16 scales
// and, when asymmetric, fp16 zero points per group of K; w = (u - z) * s.
//
// Layout trick: 8 consecutive bytes hold B = 8 * P codes (P = 8 / bits codes per byte). Zero-extending the 8
// bytes to 8 int32 lanes and taking bit field p of every lane gives "plane" p: the codes k = P * l + p,
// l = 0..7. Instead of shuffling the weights into K order, the activations are permuted once per call into
// the same plane order (xp), so no weight is ever repacked.
//
// y[m, n] = sum_g s[n, g] * (sum_{k in g} u[n, k] xp[m, k]) - sum_g s[n, g] z[n, g] xs[m, g],
// with xs[m, g] the sum of x over group g: fp32 throughout, accumulation order differs from a dense matmul.
//
// Built by rooflens/kernels/native.py with the system C compiler; -fopenmp links libgomp.so.1, the OpenMP
// runtime torch's CPU build has already loaded, so these loops share torch's thread pool.
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")

typedef struct {
    const float *xp;  // [M, K] activations in plane order
    const float *xs;  // [M, G] per-group sums of x
    int M, K, G, gsize, N;
    const uint8_t *codes;  // [N, row_bytes]
    size_t row_bytes;
    const uint16_t *scales, *zeros;  // fp16 [N, G]; zeros NULL when symmetric (then z = zconst)
    float zconst;
    float *y;  // [M, N]
} job_t;

INLINE void halfs_to_floats(const uint16_t *h, int n, float *out) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) out[i] = _cvtsh_ss(h[i]);
}

INLINE float hsum(__m256 a) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_hadd_ps(h, h);
    h = _mm_hadd_ps(h, h);
    return _mm_cvtss_f32(h);
}

// Row n's scales as fp32 in `s`, and its zero-point term sum_g s z xs for activation rows m0 .. m0 + mc.
INLINE void row_terms(const job_t *j, int n, int m0, int mc, float *s, float *zterm) {
    const int G = j->G;
    float z[G];
    halfs_to_floats(j->scales + (size_t)n * G, G, s);
    if (j->zeros) halfs_to_floats(j->zeros + (size_t)n * G, G, z);
    for (int m = 0; m < mc; m++) {
        const float *xs = j->xs + (size_t)(m0 + m) * G;
        float t = 0.f;
        for (int g = 0; g < G; g++) t += s[g] * (j->zeros ? z[g] : j->zconst) * xs[g];
        zterm[m] = t;
    }
}

// The 8 lanes of plane p of a block whose zero-extended bytes are v.
INLINE __m256i plane(__m256i v, int p, const int BITS) {
    const int P = 8 / BITS;
    __m256i u = p ? _mm256_srli_epi32(v, BITS * p) : v;
    return p < P - 1 ? _mm256_and_si256(u, _mm256_set1_epi32((1 << BITS) - 1)) : u;
}

INLINE __m256i load_block(const job_t *j, int n, int b) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(j->codes + (size_t)n * j->row_bytes + (size_t)b * 8)));
}

// One activation row (decode): R output rows at once; codes times x summed unscaled within a group, then
// scaled once per group (one multiply per group instead of one per vector).
INLINE void tile_gemv(const job_t *j, int n0, int m0, const int R, const int BITS) {
    const int P = 8 / BITS, B = 8 * P, G = j->G, bpg = j->gsize / B;
    float s[R][G], zterm[R];
    for (int r = 0; r < R; r++) row_terms(j, n0 + r, m0, 1, s[r], &zterm[r]);
    const float *xp = j->xp + (size_t)m0 * j->K;
    __m256 tot[4];  // fixed sizes: variable-length arrays of vectors would live in memory, not in registers
    UNROLL for (int r = 0; r < R; r++) tot[r] = _mm256_setzero_ps();
    for (int g = 0; g < G; g++) {
        __m256 part[4][2];
        UNROLL for (int r = 0; r < R; r++) part[r][0] = part[r][1] = _mm256_setzero_ps();
        UNROLL for (int b = g * bpg; b < (g + 1) * bpg; b++) {
            UNROLL for (int r = 0; r < R; r++) {
                const __m256i v = load_block(j, n0 + r, b);
                UNROLL for (int p = 0; p < P; p++) {
                    const __m256 w = _mm256_cvtepi32_ps(plane(v, p, BITS));
                    part[r][p & 1] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xp + (size_t)b * B + p * 8), part[r][p & 1]);
                }
            }
        }
        UNROLL for (int r = 0; r < R; r++)
            tot[r] = _mm256_fmadd_ps(_mm256_add_ps(part[r][0], part[r][1]), _mm256_broadcast_ss(&s[r][g]), tot[r]);
    }
    UNROLL for (int r = 0; r < R; r++) j->y[(size_t)m0 * j->N + n0 + r] = hsum(tot[r]) - zterm[r];
}

// MC activation rows (flat GEMM: batch or speculation width): each dequantized weight vector is reused MC times.
INLINE void tile_flat(const job_t *j, int n0, int m0, const int R, const int MC, const int BITS) {
    const int P = 8 / BITS, B = 8 * P, G = j->G, K = j->K, bpg = j->gsize / B;
    float s[R][G], zterm[R][MC];
    for (int r = 0; r < R; r++) row_terms(j, n0 + r, m0, MC, s[r], zterm[r]);
    const float *xp = j->xp + (size_t)m0 * K;
    __m256 acc[4][8];  // fixed sizes, as in tile_gemv
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int m = 0; m < MC; m++) acc[r][m] = _mm256_setzero_ps();
    for (int g = 0; g < G; g++) {
        for (int b = g * bpg; b < (g + 1) * bpg; b++) {
            UNROLL for (int r = 0; r < R; r++) {
                const __m256i v = load_block(j, n0 + r, b);
                const __m256 sc = _mm256_broadcast_ss(&s[r][g]);
                UNROLL for (int p = 0; p < P; p++) {
                    const __m256 w = _mm256_mul_ps(_mm256_cvtepi32_ps(plane(v, p, BITS)), sc);
                    UNROLL for (int m = 0; m < MC; m++)
                        acc[r][m] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xp + (size_t)m * K + (size_t)b * B + p * 8), acc[r][m]);
                }
            }
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int m = 0; m < MC; m++)
        j->y[(size_t)(m0 + m) * j->N + n0 + r] = hsum(acc[r][m]) - zterm[r][m];
}

// Output rows [n0, n0 + rows) (rows <= 4) for every activation row, in chunks of 8 / 4 / 2 / 1 activation rows;
// tiles keep <= 8 accumulators in registers.
INLINE void rows_all_m(const job_t *j, int n0, int rows, const int BITS) {
    for (int m0 = 0; m0 < j->M;) {
        const int left = j->M - m0;
        if (left >= 8) {
            for (int r = 0; r < rows; r++) tile_flat(j, n0 + r, m0, 1, 8, BITS);
            m0 += 8;
        } else if (left >= 4) {
            int r = 0;
            for (; r + 2 <= rows; r += 2) tile_flat(j, n0 + r, m0, 2, 4, BITS);
            for (; r < rows; r++) tile_flat(j, n0 + r, m0, 1, 4, BITS);
            m0 += 4;
        } else if (left >= 2) {
            if (rows == 4) tile_flat(j, n0, m0, 4, 2, BITS);
            else for (int r = 0; r < rows; r++) tile_flat(j, n0 + r, m0, 1, 2, BITS);
            m0 += 2;
        } else {
            if (rows == 4) tile_gemv(j, n0, m0, 4, BITS);
            else for (int r = 0; r < rows; r++) tile_gemv(j, n0 + r, m0, 1, BITS);
            m0 += 1;
        }
    }
}

// One function per bit width, so that BITS is a constant inside the OpenMP region (the planes unroll).
#define DEFINE_GEMM(BITS)                                                      \
    static void gemm##BITS(const job_t *j, int nthreads) {                     \
        const int ntiles = (j->N + 3) / 4;                                     \
        _Pragma("omp parallel for num_threads(nthreads) schedule(static)")     \
        for (int t = 0; t < ntiles; t++) {                                     \
            const int n0 = t * 4;                                              \
            rows_all_m(j, n0, j->N - n0 < 4 ? j->N - n0 : 4, BITS);            \
        }                                                                      \
    }
DEFINE_GEMM(2)
DEFINE_GEMM(4)
DEFINE_GEMM(8)

static int check(int bits, int K, int gsize) {
    if (bits != 2 && bits != 4 && bits != 8) return -1;
    if (gsize <= 0 || K % gsize || gsize % (64 / bits)) return -2;
    return 0;
}

// Activations into plane order, for the caller's dense path: xp[m, b*B + p*8 + l] = x[m, b*B + P*l + p].
void rl_permute_x(const float *x, int M, int K, int bits, float *xp) {
    const int P = 8 / bits, B = 8 * P;
    for (int m = 0; m < M; m++)
        for (int k0 = 0; k0 < K; k0 += B)
            for (int p = 0; p < P; p++)
                for (int l = 0; l < 8; l++) xp[(size_t)m * K + k0 + p * 8 + l] = x[(size_t)m * K + k0 + P * l + p];
}

// Both entry points take the weight first: its codes (bits each), shape [N, K], fp16 scales, fp16 zeros or NULL
// (then z = zconst) and group size.
//
// y[M, N] = x[M, K] @ W^T. Returns 0, or a negative number for arguments the kernel does not take.
int rl_lowbit_gemm(const uint8_t *codes, int bits, int N, int K, const uint16_t *scales, const uint16_t *zeros,
                   float zconst, int gsize, const float *x, int M, float *y, int nthreads) {
    const int bad = check(bits, K, gsize);
    if (bad) return bad;
    const int G = K / gsize;
    float *xp = aligned_alloc(64, ((size_t)M * K * sizeof(float) + 63) / 64 * 64);
    float *xs = malloc((size_t)M * G * sizeof(float) + 1);
    if (!xp || !xs) {
        free(xp);
        free(xs);
        return -3;
    }
    rl_permute_x(x, M, K, bits, xp);
    for (int m = 0; m < M; m++)
        for (int g = 0; g < G; g++) {
            float t = 0.f;
            for (int k = 0; k < gsize; k++) t += x[(size_t)m * K + (size_t)g * gsize + k];
            xs[(size_t)m * G + g] = t;
        }
    const job_t j = {xp, xs, M, K, G, gsize, N, codes, (size_t)K * bits / 8, scales, zeros, zconst, y};
    if (bits == 2) gemm2(&j, nthreads);
    else if (bits == 4) gemm4(&j, nthreads);
    else gemm8(&j, nthreads);
    free(xp);
    free(xs);
    return 0;
}

// Rows [n0, n1) of W = (u - z) s as fp32, in plane order along K (the dense path multiplies it with rl_permute_x's
// output): w[n - n0, b*B + p*8 + l] = W[n, b*B + P*l + p]. Exact: (u - z) is a small integer, s an fp16 value.
#define DEFINE_DEQUANT(BITS)                                                                              \
    static void dequant##BITS(const job_t *j, int n0, int n1, float *w, int nthreads) {                   \
        const int P = 8 / BITS, B = 8 * P, G = j->G, K = j->K, bpg = j->gsize / B;                        \
        _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                                \
        for (int n = n0; n < n1; n++) {                                                                   \
            float s[G], z[G];                                                                             \
            halfs_to_floats(j->scales + (size_t)n * G, G, s);                                             \
            if (j->zeros) halfs_to_floats(j->zeros + (size_t)n * G, G, z);                                \
            float *out = w + (size_t)(n - n0) * K;                                                        \
            for (int g = 0; g < G; g++) {                                                                 \
                const __m256 sc = _mm256_broadcast_ss(&s[g]);                                             \
                const __m256 off = _mm256_set1_ps(-(j->zeros ? z[g] : j->zconst) * s[g]);                 \
                for (int b = g * bpg; b < (g + 1) * bpg; b++) {                                           \
                    const __m256i v = load_block(j, n, b);                                                \
                    UNROLL for (int p = 0; p < P; p++)                                                    \
                        _mm256_storeu_ps(out + (size_t)b * B + p * 8,                                     \
                                         _mm256_fmadd_ps(_mm256_cvtepi32_ps(plane(v, p, BITS)), sc, off)); \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }
DEFINE_DEQUANT(2)
DEFINE_DEQUANT(4)
DEFINE_DEQUANT(8)

int rl_lowbit_dequant(const uint8_t *codes, int bits, int N, int K, const uint16_t *scales, const uint16_t *zeros,
                      float zconst, int gsize, int n0, int n1, float *w, int nthreads) {
    const int bad = check(bits, K, gsize);
    if (bad) return bad;
    if (n0 < 0 || n1 > N || n0 > n1) return -4;
    const job_t j = {NULL, NULL, 0, K, K / gsize, gsize, N, codes, (size_t)K * bits / 8, scales, zeros, zconst, NULL};
    if (bits == 2) dequant2(&j, n0, n1, w, nthreads);
    else if (bits == 4) dequant4(&j, n0, n1, w, nthreads);
    else dequant8(&j, n0, n1, w, nthreads);
    return 0;
}

// ---- int8 activations (kernel: native_a8): integer dot products, as llama.cpp's q8 blocks -------------------
//
// x is quantized per chunk of 32 values along K: q = round(x / d), d = max|x| / 127, q in -127..127; then
// y[m, n] = sum_c s[n, c] (d[m, c] sum_{k in c} u q - z[n, c] d[m, c] sum_{k in c} q), the inner sums in int32
// (s, z: the weight's scale and zero point of the group holding chunk c). Codes are read 32 bytes (a "block",
// 32 * P codes) at a time and multiplied with _mm256_maddubs_epi16 (u8 x s8, pairs summed into s16): at 4 and 2
// bits each bit plane of the block is unsigned and <= 15, so the planes' s16 sums cannot saturate; at 8 bits the
// codes are taken as u - 128 (signed) with their sign moved onto q (|u - 128| <= 128, 2 * 128 * 127 < 2^15).
// int32 lane l of a block's sums covers codes 4Pl .. 4Pl + 4P - 1, inside one chunk and one group, so every
// scale is applied per lane: the activations' terms are laid out per lane once per call (dx, dql), the weight's
// scales and zero points are read per block straight from their fp16 rows (no per-row preparation: SmolLM2's
// rows are 9 to 24 blocks long).

typedef struct {
    const int8_t *q;   // [M, nblk * 32P] activations in plane order per block (zero past K)
    const float *dx;   // [M, nblk * 8] per lane: d of the lane's chunk (zero past K)
    const float *dql;  // [M, nblk * 8] per lane: d * sum(q) of the lane's chunk / lanes per chunk
    int M, N, nblk, G, gsize;
    const uint8_t *codes;
    size_t row_bytes;
    const uint16_t *scales, *zeros;  // fp16 [N, G]; zeros NULL when symmetric (then z = zconst)
    float zconst;
    float *y;  // [M, N]
} job8_t;

// Block b of row n's codes; the last block of a row may be short (K * bits / 8 not a multiple of 32): zero-padded.
INLINE __m256i load_block8(const job8_t *j, int n, int b) {
    const uint8_t *src = j->codes + (size_t)n * j->row_bytes + (size_t)b * 32;
    const size_t left = j->row_bytes - (size_t)b * 32;
    if (left >= 32) return _mm256_loadu_si256((const __m256i *)src);
    uint8_t tmp[32] __attribute__((aligned(32))) = {0};
    for (size_t i = 0; i < left; i++) tmp[i] = src[i];
    return _mm256_load_si256((const __m256i *)tmp);
}

// The 8 int32 sums of codes times q for one block (q: the block's 32P activation bytes in plane order).
INLINE __m256i block_dot(__m256i v, const int8_t *q, const int BITS) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (BITS == 8) {
        const __m256i w = _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80));
        const __m256i qs = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)q), w);
        return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), qs), ones);
    }
    const int P = 8 / BITS;
    const __m256i mask = _mm256_set1_epi8((char)((1 << BITS) - 1));
    __m256i s = _mm256_setzero_si256();
    UNROLL for (int p = 0; p < P; p++) {
        const __m256i plane_p = _mm256_and_si256(p ? _mm256_srli_epi16(v, BITS * p) : v, mask);
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(plane_p, _mm256_loadu_si256((const __m256i *)(q + 32 * p))));
    }
    return _mm256_madd_epi16(s, ones);
}

// One row's fp16 per-group values (scales or zero points) as fp32, zero-padded by 8.
INLINE void row_groups(const uint16_t *h, int G, float *out) {
    halfs_to_floats(h, G, out);
    for (int g = G; g < G + 8; g++) out[g] = 0.f;
}

// The 8 lanes' values of block b from a row's per-group fp32 values f: one group per block or fewer (gpb = 0:
// group b >> bpg_shift), else gpb = 2 or 4 groups side by side.
INLINE __m256 lane_groups(const float *f, int b, int gpb, int bpg_shift, __m256i idx) {
    if (!gpb) return _mm256_broadcast_ss(f + (b >> bpg_shift));
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(f + (size_t)b * gpb), idx);
}

// R output rows times MC activation rows; fp32 accumulators, one per pair (all in registers: R * MC <= 8).
INLINE void tile_a8(const job8_t *j, int n0, int m0, const int R, const int MC, const int BITS) {
    const int P = 8 / BITS, G = j->G, G1 = G + 8, full = (int)(j->row_bytes / 32), nblk = j->nblk;
    const int KP = nblk * 32 * P, codes = 32 * P, gpb = j->gsize >= codes ? 0 : codes / j->gsize;
    const int bpg_shift = j->gsize >= 4 * codes ? 2 : (j->gsize >= 2 * codes ? 1 : 0);
    const __m256i idx = gpb == 2 ? _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1) : _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const int asym = j->zeros != NULL;
    const __m256 zshift = _mm256_set1_ps(BITS == 8 ? 128.f : 0.f), zconst = _mm256_sub_ps(_mm256_set1_ps(j->zconst), zshift);
    float sw[R * G1], zw[asym ? R * G1 : 1];
    for (int r = 0; r < R; r++) {
        row_groups(j->scales + (size_t)(n0 + r) * G, G, sw + r * G1);
        if (asym) row_groups(j->zeros + (size_t)(n0 + r) * G, G, zw + r * G1);
    }
    const uint8_t *rows = j->codes + (size_t)n0 * j->row_bytes;
    const int8_t *q = j->q + (size_t)m0 * KP;
    const float *dxb = j->dx + (size_t)m0 * nblk * 8, *dqb = j->dql + (size_t)m0 * nblk * 8;
    __m256 acc[4][4];  // fixed sizes: a variable-length array would live in memory, not in registers
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int m = 0; m < MC; m++) acc[r][m] = _mm256_setzero_ps();
    for (int b = 0; b < nblk; b++) {
        UNROLL for (int r = 0; r < R; r++) {
            const __m256i v = b < full ? _mm256_loadu_si256((const __m256i *)(rows + (size_t)r * j->row_bytes + (size_t)b * 32))
                                       : load_block8(j, n0 + r, b);
            const __m256 ws = lane_groups(sw + r * G1, b, gpb, bpg_shift, idx);
            const __m256 z = asym ? _mm256_sub_ps(lane_groups(zw + r * G1, b, gpb, bpg_shift, idx), zshift) : zconst;
            UNROLL for (int m = 0; m < MC; m++) {
                const __m256i isum = block_dot(v, q + (size_t)m * KP + (size_t)b * codes, BITS);
                const __m256 dx = _mm256_loadu_ps(dxb + ((size_t)m * nblk + b) * 8);  // from L1: registers are
                const __m256 dql = _mm256_loadu_ps(dqb + ((size_t)m * nblk + b) * 8);  // for the accumulators
                const __m256 t = _mm256_fnmadd_ps(z, dql, _mm256_mul_ps(dx, _mm256_cvtepi32_ps(isum)));
                acc[r][m] = _mm256_fmadd_ps(ws, t, acc[r][m]);
            }
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int m = 0; m < MC; m++)
        j->y[(size_t)(m0 + m) * j->N + n0 + r] = hsum(acc[r][m]);
}

// Output rows [n0, n0 + rows) (rows <= 4) for every activation row: 4 x 1, 4 x 2 and 2 x 4 tiles (<= 8 accumulators).
INLINE void rows_all_m_a8(const job8_t *j, int n0, int rows, const int BITS) {
    for (int m0 = 0; m0 < j->M;) {
        const int left = j->M - m0;
        if (left >= 4) {
            int r = 0;
            for (; r + 2 <= rows; r += 2) tile_a8(j, n0 + r, m0, 2, 4, BITS);
            for (; r < rows; r++) tile_a8(j, n0 + r, m0, 1, 4, BITS);
            m0 += 4;
        } else if (left >= 2) {
            if (rows == 4) tile_a8(j, n0, m0, 4, 2, BITS);
            else for (int r = 0; r < rows; r++) tile_a8(j, n0 + r, m0, 1, 2, BITS);
            m0 += 2;
        } else {
            if (rows == 4) tile_a8(j, n0, m0, 4, 1, BITS);
            else for (int r = 0; r < rows; r++) tile_a8(j, n0 + r, m0, 1, 1, BITS);
            m0 += 1;
        }
    }
}

#define DEFINE_GEMM_A8(BITS)                                                   \
    static void gemm_a8_##BITS(const job8_t *j, int nthreads) {                \
        const int ntiles = (j->N + 3) / 4;                                     \
        _Pragma("omp parallel for num_threads(nthreads) schedule(static)")     \
        for (int t = 0; t < ntiles; t++) {                                     \
            const int n0 = t * 4;                                              \
            rows_all_m_a8(j, n0, j->N - n0 < 4 ? j->N - n0 : 4, BITS);         \
        }                                                                      \
    }
DEFINE_GEMM_A8(2)
DEFINE_GEMM_A8(4)
DEFINE_GEMM_A8(8)

// One chunk of 32 values of x quantized: q (in K order), d = max|x| / 127; returns sum(q).
INLINE int quantize_chunk(const float *x, int32_t q[32], float *d) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 mx = _mm256_setzero_ps();
    for (int i = 0; i < 32; i += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(x + i), absmask));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    const float amax = _mm_cvtss_f32(h);
    *d = amax / 127.f;
    const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
    __m256i sum = _mm256_setzero_si256();
    for (int i = 0; i < 32; i += 8) {  // cvtps2dq: round to nearest even, as MXCSR says by default
        __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
        v = _mm256_max_epi32(_mm256_min_epi32(v, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
        _mm256_storeu_si256((__m256i *)(q + i), v);
        sum = _mm256_add_epi32(sum, v);
    }
    int32_t s8[8], total = 0;
    _mm256_storeu_si256((__m256i *)s8, sum);
    for (int i = 0; i < 8; i++) total += s8[i];
    return total;
}

// x [M, K] fp32 -> q in plane order (per block of 32P codes: plane p's 32 bytes are x[P * i + p]) and, per lane of
// every block, its chunk's d and d * sum(q) / lanes per chunk (zero past K).
static void quantize_x(const float *x, int M, int K, int bits, int nblk, int8_t *q, float *dx, float *dql) {
    const int P = 8 / bits, C = K / 32, KP = nblk * 32 * P, lanes = 8 / P, logp = P == 1 ? 0 : (P == 2 ? 1 : 2);
    for (int m = 0; m < M; m++) {
        int8_t *qm = q + (size_t)m * KP;
        float *dm = dx + (size_t)m * nblk * 8, *sm = dql + (size_t)m * nblk * 8;
        memset(qm, 0, (size_t)KP);
        for (int i = 0; i < nblk * 8; i++) dm[i] = sm[i] = 0.f;
        for (int c = 0; c < C; c++) {
            int32_t qc[32];
            float d;
            const int sum = quantize_chunk(x + (size_t)m * K + 32 * c, qc, &d);
            // chunk c is local chunk c % P of block c / P: its codes k = 32 (c % P) + i of the block sit in plane
            // k % P at byte k / P
            int8_t *blk = qm + (size_t)(c >> logp) * 32 * P;
            const int base = 32 * (c & (P - 1));
            for (int i = 0; i < 32; i++) {
                const int k = base + i;
                blk[(k & (P - 1)) * 32 + (k >> logp)] = (int8_t)qc[i];
            }
            for (int l = 0; l < lanes; l++) {  // its lanes: (c % P) * lanes .. + lanes - 1
                dm[(c >> logp) * 8 + (c & (P - 1)) * lanes + l] = d;
                sm[(c >> logp) * 8 + (c & (P - 1)) * lanes + l] = d * (float)sum / (float)lanes;
            }
        }
    }
}

// y[M, N] = x[M, K] @ W^T with x quantized to int8 per chunk of 32 (the arguments as rl_lowbit_gemm's).
int rl_lowbit_gemm_a8(const uint8_t *codes, int bits, int N, int K, const uint16_t *scales, const uint16_t *zeros,
                      float zconst, int gsize, const float *x, int M, float *y, int nthreads) {
    const int bad = check(bits, K, gsize);
    if (bad) return bad;
    if (K % 32 || gsize % 32) return -5;
    const int P = 8 / bits;
    const size_t row_bytes = (size_t)K * bits / 8;
    const int nblk = (int)((row_bytes + 31) / 32);
    int8_t *q = malloc((size_t)M * nblk * 32 * P + 32);
    float *dx = malloc((size_t)M * nblk * 8 * sizeof(float));
    float *dql = malloc((size_t)M * nblk * 8 * sizeof(float));
    if (!q || !dx || !dql) {
        free(q);
        free(dx);
        free(dql);
        return -3;
    }
    quantize_x(x, M, K, bits, nblk, q, dx, dql);
    const job8_t j = {q, dx, dql, M, N, nblk, K / gsize, gsize, codes, row_bytes, scales, zeros, zconst, y};
    if (bits == 2) gemm_a8_2(&j, nthreads);
    else if (bits == 4) gemm_a8_4(&j, nthreads);
    else gemm_a8_8(&j, nthreads);
    free(q);
    free(dx);
    free(dql);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// fp32 weights: y[M, N] = x[M, K] @ W[N, K]^T for the few activation rows of a decode step (M small), what an fp32
// model's linear layers are at batch 1. Each thread streams its rows of W one after the other (one sequential stream:
// 26.6 GB/s on a 49152x576 matrix on a 2-core Zen 3, where 4 rows at a time read 23.6), four accumulators per dot
// product; a row (at most a few KB) stays in L1 for the other activation rows. Summation order: lanes of 8 strided by
// 32, then a tree; not a dense GEMM's order.

INLINE float f32_dot(const float *w, const float *x, int K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < K; k++) s += w[k] * x[k];
    return s;
}

// Returns 0, or -1 for a shape it does not take.
int rl_f32_gemm(const float *w, int N, int K, const float *x, int M, float *y, int nthreads) {
    if (N <= 0 || K <= 0 || M <= 0) return -1;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int n = 0; n < N; n++)
        for (int m = 0; m < M; m++) y[(size_t)m * N + n] = f32_dot(w + (size_t)n * K, x + (size_t)m * K, K);
    return 0;
}
