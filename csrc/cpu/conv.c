/* conv.c: 2-D convolution as im2col tiles times the weight matrix.
 *
 * x [n, h, w, cin], weight [cout, kh, kw, cin] = [cout, K] with K = kh*kw*cin,
 * out [n, ho, wo, cout]. Output pixels are cut into tiles; each tile's input
 * patches are gathered into a [tile, K] matrix (in channels-last one patch row
 * is kh contiguous runs of kw*cin floats) and multiplied by the weights on
 * OpenBLAS. 1x1 stride-1 convolutions multiply the input directly; 3x3 stride-1
 * ones with large outputs go to winograd.c. Bias and an
 * optional residual are written first and the product accumulates onto them,
 * which fuses the ResNet skip-add into the convolution.
 */
#include <string.h>

#include "../core/threads.h"
#include "cpu.h"

/* Gathered patches per tile: about 4 MiB, and enough rows that repacking the
 * weights once per tile stays small against the tile's arithmetic. */
#define TILE_BYTES (4u << 20)
#define TILE_MIN_ROWS 64
#define TILE_MAX_ROWS 1024

/* Patches of output pixels [p0, p1) (indices over n*ho*wo) into col [p1-p0, K]. */
static void im2col(const float *x, int h, int w, int cin, const d3sr_conv *cv, int ho, int wo,
                   size_t p0, size_t p1, float *col)
{
    const size_t K = (size_t)cv->kh * cv->kw * cin;
    const size_t run = (size_t)cv->kw * cin;
    const size_t per_sample = (size_t)ho * wo;
    for (size_t p = p0; p < p1; p++) {
        size_t n = p / per_sample, rem = p % per_sample;
        int oy = (int)(rem / (size_t)wo), ox = (int)(rem % (size_t)wo);
        int ix0 = ox * cv->stride - cv->pad_left;
        float *row = col + (p - p0) * K;
        for (int ky = 0; ky < cv->kh; ky++) {
            float *dst = row + ky * run;
            int iy = oy * cv->stride - cv->pad_top + ky;
            if (iy < 0 || iy >= h) {
                memset(dst, 0, run * sizeof *dst);
                continue;
            }
            const float *src = x + (((size_t)n * h + iy) * w) * cin;
            if (ix0 >= 0 && ix0 + cv->kw <= w) {
                memcpy(dst, src + (size_t)ix0 * cin, run * sizeof *dst);
                continue;
            }
            for (int kx = 0; kx < cv->kw; kx++) {
                int ix = ix0 + kx;
                if (ix < 0 || ix >= w)
                    memset(dst + (size_t)kx * cin, 0, (size_t)cin * sizeof *dst);
                else
                    memcpy(dst + (size_t)kx * cin, src + (size_t)ix * cin, (size_t)cin * sizeof *dst);
            }
        }
    }
}

d3sr_status cpu_conv2d(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_conv *cv,
                       const d3sr_tensor *residual, d3sr_tensor *out)
{
    /* Small outputs stay on im2col: there the work is reading the weights, and
     * Winograd's transformed weights are 16/9 as many. */
    size_t blocks = (size_t)out->n * ((out->h + 1) / 2) * ((out->w + 1) / 2);
    if (cv->kh == 3 && cv->kw == 3 && cv->stride == 1 && blocks >= CPU_WINOGRAD_MIN_TILES)
        return cpu_winograd_conv2d(ctx, x, cv, residual, out);
    const float *xd = x->data;
    const float *wd = cv->weight.data;
    const float *bias = cv->bias.data;
    const float *res = residual ? residual->data : NULL;
    float *od = out->data;
    const int cout = cv->cout, cin = cv->cin;
    const int K = cv->kh * cv->kw * cin;
    const size_t P = (size_t)out->n * out->h * out->w;
    const int threads = d3sr_threads();
    const int accumulate = bias || res;

    int pointwise = cv->kh == 1 && cv->kw == 1 && cv->stride == 1 && cv->pad_top == 0 &&
                    cv->pad_bottom == 0 && cv->pad_left == 0 && cv->pad_right == 0;
    if (pointwise) {
        if (accumulate) {
#pragma omp parallel num_threads(threads)
            {
                size_t r0, r1;
                cpu_share(P, &r0, &r1);
                cpu_init_rows(od, bias, res, r0, r1, cout);
            }
        }
        cpu_gemm(1, (int)P, cout, K, xd, cin, wd, K, accumulate ? 1.0f : 0.0f, od, cout);
        return D3SR_OK;
    }

    size_t tile = TILE_BYTES / ((size_t)K * sizeof(float));
    tile = tile < TILE_MIN_ROWS ? TILE_MIN_ROWS : tile > TILE_MAX_ROWS ? TILE_MAX_ROWS : tile;
    tile = tile / 16 * 16;
    size_t tiles = (P + tile - 1) / tile;

    if (tiles >= (size_t)threads) {
        /* Enough tiles: each thread gathers and multiplies whole tiles. */
        float *col;
        D3SR_CHECK(d3sr_workspace(ctx, (size_t)threads * tile * K * sizeof(float), (void **)&col));
#pragma omp parallel num_threads(threads)
        {
#ifdef _OPENMP
            float *mine = col + (size_t)omp_get_thread_num() * tile * K;
#else
            float *mine = col;
#endif
#pragma omp for schedule(dynamic)
            for (size_t t = 0; t < tiles; t++) {
                size_t p0 = t * tile, p1 = p0 + tile < P ? p0 + tile : P;
                im2col(xd, x->h, x->w, cin, cv, out->h, out->w, p0, p1, mine);
                if (accumulate) cpu_init_rows(od, bias, res, p0, p1, cout);
                cpu_gemm_serial(1, (int)(p1 - p0), cout, K, mine, K, wd, K, accumulate ? 1.0f : 0.0f,
                                od + p0 * cout, cout);
            }
        }
        return D3SR_OK;
    }

    /* Few output pixels (small latents): gather all at once, split the product by columns. */
    float *col;
    D3SR_CHECK(d3sr_workspace(ctx, P * K * sizeof(float), (void **)&col));
#pragma omp parallel num_threads(threads)
    {
        size_t p0, p1;
        cpu_share(P, &p0, &p1);
        im2col(xd, x->h, x->w, cin, cv, out->h, out->w, p0, p1, col + p0 * K);
        if (accumulate) cpu_init_rows(od, bias, res, p0, p1, cout);
    }
    cpu_gemm(1, (int)P, cout, K, col, K, wd, K, accumulate ? 1.0f : 0.0f, od, cout);
    return D3SR_OK;
}
