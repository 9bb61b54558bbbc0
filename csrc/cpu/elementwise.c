/* elementwise.c: linear layers, nearest upsampling and in-place addition. */
#include <string.h>

#include "../core/threads.h"
#include "cpu.h"

d3sr_status cpu_linear(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_linear *lin,
                       const d3sr_tensor *residual, d3sr_tensor *out)
{
    (void)ctx;
    const size_t rows = d3sr_tensor_numel(x) / (size_t)lin->in;
    const float *bias = lin->bias.data;
    const float *res = residual ? residual->data : NULL;
    const int accumulate = bias || res;
    if (accumulate) {
#pragma omp parallel num_threads(d3sr_threads())
        {
            size_t r0, r1;
            cpu_share(rows, &r0, &r1);
            cpu_init_rows(out->data, bias, res, r0, r1, lin->out);
        }
    }
    cpu_gemm(1, (int)rows, lin->out, lin->in, x->data, lin->in, lin->weight.data, lin->in,
             accumulate ? 1.0f : 0.0f, out->data, lin->out);
    return D3SR_OK;
}

d3sr_status cpu_upsample_nearest2x(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out)
{
    (void)ctx;
    const size_t c = (size_t)x->c;
    const size_t rows = (size_t)x->n * x->h; /* input rows; each becomes two output rows */
    const float *src = x->data;
    float *dst = out->data;
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *in_row = src + r * x->w * c;
        float *out_row = dst + 2 * r * (size_t)out->w * c;
        for (int ix = 0; ix < x->w; ix++) {
            memcpy(out_row + (2 * (size_t)ix) * c, in_row + ix * c, c * sizeof(float));
            memcpy(out_row + (2 * (size_t)ix + 1) * c, in_row + ix * c, c * sizeof(float));
        }
        memcpy(out_row + (size_t)out->w * c, out_row, (size_t)out->w * c * sizeof(float));
    }
    return D3SR_OK;
}

CPU_VECTOR_CLONES
static void add_to(float *a, const float *b, size_t count)
{
    for (size_t i = 0; i < count; i++) a[i] += b[i];
}

d3sr_status cpu_add_inplace(d3sr_ctx *ctx, d3sr_tensor *a, const d3sr_tensor *b)
{
    (void)ctx;
    const size_t count = d3sr_tensor_numel(a);
    float *ad = a->data;
    const float *bd = b->data;
#pragma omp parallel num_threads(d3sr_threads())
    {
        size_t i0, i1;
        cpu_share(count, &i0, &i1);
        add_to(ad + i0, bd + i0, i1 - i0);
    }
    return D3SR_OK;
}
