/* pool.c: max pooling and DISTS' L2 pooling, channels-last.
 *
 * Each output pixel reads its window's input pixels as contiguous runs of c
 * floats, so the channel loop is the inner, vectorised one. Rows of the
 * output are split across threads.
 */
#include <math.h>
#include <string.h>

#include "../core/threads.h"
#include "cpu.h"


CPU_VECTOR_CLONES
static void max_into(float *dst, const float *src, int c)
{
    /* NaN wins, as in PyTorch's max_pool2d: a max that skipped it would hide it. */
    for (int j = 0; j < c; j++) dst[j] = src[j] > dst[j] || src[j] != src[j] ? src[j] : dst[j];
}

d3sr_status cpu_max_pool(d3sr_ctx *ctx, const d3sr_tensor *x, int kernel, int stride, d3sr_tensor *out)
{
    (void)ctx;
    const size_t c = (size_t)x->c, rows = (size_t)out->n * out->h;
    const float *src = x->data;
    float *dst = out->data;
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        size_t n = r / (size_t)out->h, oy = r % (size_t)out->h;
        for (int ox = 0; ox < out->w; ox++) {
            float *o = dst + (r * out->w + ox) * c;
            const float *first = src + (((size_t)n * x->h + oy * stride) * x->w + (size_t)ox * stride) * c;
            memcpy(o, first, c * sizeof *o);
            for (int ky = 0; ky < kernel; ky++)
                for (int kx = 0; kx < kernel; kx++)
                    max_into(o, first + ((size_t)ky * x->w + kx) * c, (int)c);
        }
    }
    return D3SR_OK;
}

CPU_VECTOR_CLONES
static void add_weighted_squares(float *dst, const float *src, float weight, int c)
{
    for (int j = 0; j < c; j++) dst[j] += weight * (src[j] * src[j]);
}

CPU_VECTOR_CLONES
static void sqrt_eps(float *x, int c)
{
    for (int j = 0; j < c; j++) x[j] = sqrtf(x[j] + 1e-12f);
}

d3sr_status cpu_l2_pool(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out)
{
    (void)ctx;
    static const float taps[3] = {0.25f, 0.5f, 0.25f}; /* hanning(5)[1:-1], normalised */
    const size_t c = (size_t)x->c, rows = (size_t)out->n * out->h;
    const float *src = x->data;
    float *dst = out->data;
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        size_t n = r / (size_t)out->h;
        int oy = (int)(r % (size_t)out->h);
        for (int ox = 0; ox < out->w; ox++) {
            float *o = dst + (r * out->w + ox) * c;
            memset(o, 0, c * sizeof *o);
            for (int ky = 0; ky < 3; ky++) {
                int iy = 2 * oy - 1 + ky;
                if (iy < 0 || iy >= x->h) continue;
                for (int kx = 0; kx < 3; kx++) {
                    int ix = 2 * ox - 1 + kx;
                    if (ix < 0 || ix >= x->w) continue;
                    add_weighted_squares(o, src + (((size_t)n * x->h + iy) * x->w + ix) * c, taps[ky] * taps[kx], (int)c);
                }
            }
            sqrt_eps(o, (int)c);
        }
    }
    return D3SR_OK;
}
