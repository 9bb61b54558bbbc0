/* elementwise.c: the memory-bound ops: resizing, GEGLU, activations,
 * additions and channel concatenation. */
#include <math.h>
#include <string.h>

#include "../core/threads.h"
#include "cpu.h"

/* PyTorch's nearest source index (aten's nearest_idx). */
static int nearest_source(int dst, int in, int out)
{
    if (out == in) return dst;
    if (out == 2 * in) return dst >> 1;
    float scale = (float)in / (float)out;
    int src = (int)floorf((float)dst * scale);
    return src < in - 1 ? src : in - 1;
}

d3sr_status cpu_upsample_nearest(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out)
{
    (void)ctx;
    const size_t c = (size_t)x->c;
    const size_t rows = (size_t)out->n * out->h;
    const float *src = x->data;
    float *dst = out->data;
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (size_t r = 0; r < rows; r++) {
        size_t n = r / (size_t)out->h;
        int sy = nearest_source((int)(r % (size_t)out->h), x->h, out->h);
        const float *in_row = src + ((size_t)n * x->h + sy) * x->w * c;
        float *out_row = dst + r * (size_t)out->w * c;
        for (int ox = 0; ox < out->w; ox++)
            memcpy(out_row + (size_t)ox * c, in_row + (size_t)nearest_source(ox, x->w, out->w) * c, c * sizeof(float));
    }
    return D3SR_OK;
}

CPU_VECTOR_CLONES
static void geglu_rows(const float *x, size_t rows, int half, float *y)
{
    for (size_t r = 0; r < rows; r++) {
        const float *value = x + r * 2 * (size_t)half, *gate = value + half;
        float *dst = y + r * (size_t)half;
        for (int j = 0; j < half; j++) dst[j] = value[j] * cpu_geluf(gate[j]);
    }
}

d3sr_status cpu_geglu(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out)
{
    (void)ctx;
    const size_t rows = d3sr_tensor_numel(out) / (size_t)out->c;
#pragma omp parallel num_threads(d3sr_threads())
    {
        size_t r0, r1;
        cpu_share(rows, &r0, &r1);
        geglu_rows((const float *)x->data + r0 * 2 * out->c, r1 - r0, out->c, (float *)out->data + r0 * out->c);
    }
    return D3SR_OK;
}

CPU_VECTOR_CLONES
static void activation_span(const float *x, size_t count, d3sr_activation_kind kind, float param, float *y)
{
    switch (kind) {
    case D3SR_ACT_SILU:
        for (size_t i = 0; i < count; i++) y[i] = cpu_siluf(x[i]);
        break;
    /* x < 0 rather than x > 0: NaN stays NaN, as in PyTorch, instead of
     * becoming 0 (a NaN network reporting "identical" images). */
    case D3SR_ACT_RELU:
        for (size_t i = 0; i < count; i++) y[i] = x[i] < 0.0f ? 0.0f : x[i];
        break;
    case D3SR_ACT_LEAKY_RELU:
        for (size_t i = 0; i < count; i++) y[i] = x[i] < 0.0f ? param * x[i] : x[i];
        break;
    case D3SR_ACT_GELU:
        for (size_t i = 0; i < count; i++) y[i] = cpu_geluf(x[i]);
        break;
    }
}

d3sr_status cpu_activation(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_activation_kind kind, float param,
                           d3sr_tensor *out)
{
    (void)ctx;
    const size_t count = d3sr_tensor_numel(x);
#pragma omp parallel num_threads(d3sr_threads())
    {
        size_t i0, i1;
        cpu_share(count, &i0, &i1);
        activation_span((const float *)x->data + i0, i1 - i0, kind, param, (float *)out->data + i0);
    }
    return D3SR_OK;
}

d3sr_status cpu_concat_channels(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b, d3sr_tensor *out)
{
    (void)ctx;
    const size_t pixels = (size_t)a->n * a->h * a->w, ca = (size_t)a->c, cb = (size_t)b->c;
    const float *ad = a->data, *bd = b->data;
    float *od = out->data;
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (size_t p = 0; p < pixels; p++) {
        memcpy(od + p * (ca + cb), ad + p * ca, ca * sizeof(float));
        memcpy(od + p * (ca + cb) + ca, bd + p * cb, cb * sizeof(float));
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

CPU_VECTOR_CLONES
static void add_offset_rows(float *x, size_t rows, int c, const float *offset)
{
    for (size_t r = 0; r < rows; r++)
        for (int j = 0; j < c; j++) x[r * c + j] += offset[j];
}

d3sr_status cpu_add_channel_offset(d3sr_ctx *ctx, d3sr_tensor *x, const d3sr_tensor *offset)
{
    (void)ctx;
    const size_t pixels = d3sr_tensor_pixels(x);
    for (int n = 0; n < x->n; n++) {
        float *xs = (float *)x->data + (size_t)n * pixels * x->c;
        const float *off = (const float *)offset->data + (size_t)n * x->c;
#pragma omp parallel num_threads(d3sr_threads())
        {
            size_t p0, p1;
            cpu_share(pixels, &p0, &p1);
            add_offset_rows(xs + p0 * x->c, p1 - p0, x->c, off);
        }
    }
    return D3SR_OK;
}
