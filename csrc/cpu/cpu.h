/* cpu.h: the CPU backend's kernels and shared helpers.
 *
 * Float32 throughout, channels-last. Each kernel parallelises with OpenMP
 * over d3sr_threads() threads; matrix products go to OpenBLAS, called
 * single-threaded from inside those regions (see core/threads.h).
 */
#ifndef D3SR_CPU_CPU_H
#define D3SR_CPU_CPU_H

#include <stddef.h>

#include "../core/status.h"
#include "../ops/backend.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Compiles a loop-heavy function for AVX-512, AVX2+FMA and baseline x86-64,
 * chosen at load time: elementwise work runs at the machine's vector width
 * while the build stays portable. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CPU_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CPU_VECTOR_CLONES
#endif

/* Inside a parallel region: this thread's share [begin, end) of total items. */
static inline void cpu_share(size_t total, size_t *begin, size_t *end)
{
#ifdef _OPENMP
    size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
#else
    size_t t = 0, nt = 1;
#endif
    size_t step = (total + nt - 1) / nt;
    *begin = t * step < total ? t * step : total;
    *end = *begin + step < total ? *begin + step : total;
}

/* ---- gemm.c: matrix products, and linear layers --------------------------- */

/* C[M, N] = A[M, K] op(B) + beta C, row-major. op(B) = B^T when b_trans
 * (B is [N, K]), else B is [K, N]. cpu_gemm splits the work over threads;
 * cpu_gemm_serial runs on the calling thread. */
void cpu_gemm(int b_trans, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc);
void cpu_gemm_serial(int b_trans, int M, int N, int K, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc);
/* Fills rows [row0, row1) of a [rows, cols] matrix with bias (or 0) plus residual
 * (when not NULL); the matrix product then accumulates with beta = 1. */
void cpu_init_rows(float *out, const float *bias, const float *residual, size_t row0, size_t row1,
                   int cols);
d3sr_status cpu_linear(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_linear *lin,
                       const d3sr_tensor *residual, d3sr_tensor *out);

/* ---- conv.c, winograd.c: convolutions ------------------------------------- */

d3sr_status cpu_conv2d(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_conv *conv,
                       const d3sr_tensor *residual, d3sr_tensor *out);
/* 3x3 stride-1 convolutions by Winograd F(2x2, 3x3) (winograd.c); worth it
 * when the output has at least CPU_WINOGRAD_MIN_TILES blocks of 2x2 pixels. */
#define CPU_WINOGRAD_MIN_TILES 256
d3sr_status cpu_winograd_conv2d(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_conv *conv,
                                const d3sr_tensor *residual, d3sr_tensor *out);

/* ---- norm.c, attention.c ---------------------------------------------------- */

d3sr_status cpu_group_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, int silu,
                           d3sr_tensor *out);
d3sr_status cpu_layer_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, d3sr_tensor *out);
/* Tiled GroupNorm (backend.h): a region's statistics, and normalising with given ones. */
d3sr_status cpu_group_stats(d3sr_ctx *ctx, const d3sr_tensor *x, int groups, const int region[4], double *stats);
d3sr_status cpu_group_norm_with(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, const float *mean_rstd,
                                int silu, d3sr_tensor *out);
d3sr_status cpu_attention(d3sr_ctx *ctx, const d3sr_tensor *q, const d3sr_tensor *k,
                          const d3sr_tensor *v, int heads, d3sr_tensor *out);

/* ---- elementwise.c: the memory-bound ops ------------------------------------ */

d3sr_status cpu_upsample_nearest(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out);
d3sr_status cpu_geglu(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out);
d3sr_status cpu_activation(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_activation_kind kind, float param,
                           d3sr_tensor *out);
d3sr_status cpu_add_inplace(d3sr_ctx *ctx, d3sr_tensor *a, const d3sr_tensor *b);
d3sr_status cpu_add_channel_offset(d3sr_ctx *ctx, d3sr_tensor *x, const d3sr_tensor *offset);
d3sr_status cpu_concat_channels(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b, d3sr_tensor *out);

/* ---- pool.c, metric_reductions.c: the perceptual metrics' ops (CPU only) ---- */

d3sr_status cpu_max_pool(d3sr_ctx *ctx, const d3sr_tensor *x, int kernel, int stride, d3sr_tensor *out);
d3sr_status cpu_l2_pool(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out);
d3sr_status cpu_lpips_distance(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                               const d3sr_tensor *weight, d3sr_tensor *out);
d3sr_status cpu_pair_moments(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b, d3sr_tensor *out);

/* exp(x) to about 2 ulp, written so the compiler vectorises loops that call it.
 * Inputs are clamped to [-87, 88], where float exp is finite and normal. */
static inline float cpu_expf(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick, which needs no rounding instruction. */
    const float shifter = 12582912.0f;
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f; /* ln 2 split in two for precision */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    union {
        int i;
        float f;
    } scale;
    scale.i = ((int)n + 127) << 23;
    return y * scale.f;
}

static inline float cpu_siluf(float x) { return x / (1.0f + cpu_expf(-x)); }

/* erf(x) within 2e-7 (Abramowitz & Stegun 7.1.26), vectorisable like cpu_exp. */
static inline float cpu_erff(float x)
{
    float a = x < 0.0f ? -x : x;
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    float y = 1.0f - poly * cpu_expf(-a * a);
    return x < 0.0f ? -y : y;
}

/* The exact GELU, x * Phi(x), as PyTorch's F.gelu(approximate="none"). */
static inline float cpu_geluf(float x) { return 0.5f * x * (1.0f + cpu_erff(x * 0.70710678118654752f)); }

#endif /* D3SR_CPU_CPU_H */
