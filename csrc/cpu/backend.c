/* backend.c: the CPU backend's table, memory and layout conversions.
 *
 * Weights: convolutions are stored [cout, kh, kw, cin] so a gathered
 * channels-last patch row multiplies a weight row directly (winograd.c
 * transforms them per call: storing the transformed form would take 16/9 of
 * the memory); linear weights keep PyTorch's [out, in]. Memory is 64-byte
 * aligned for vector loads.
 */
#include <stdlib.h>
#include <string.h>

#include "../core/threads.h"
#include "cpu.h"

static d3sr_status cpu_alloc(d3sr_ctx *ctx, size_t bytes, void **out)
{
    (void)ctx;
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory allocating %zu bytes", bytes);
    *out = p;
    return D3SR_OK;
}

static void cpu_free(d3sr_ctx *ctx, void *p)
{
    (void)ctx;
    free(p);
}

static d3sr_status cpu_upload_weight(d3sr_ctx *ctx, d3sr_weight_kind kind, const float *host,
                                     d3sr_tensor *dst)
{
    size_t count = d3sr_tensor_numel(dst);
    float *data = NULL;
    D3SR_CHECK(cpu_alloc(ctx, count * sizeof *data, (void **)&data));
    if (kind == D3SR_WEIGHT_CONV) {
        /* PyTorch [cout, cin, kh, kw] -> [cout, kh, kw, cin]. */
        const size_t cout = (size_t)dst->n, kh = (size_t)dst->h, kw = (size_t)dst->w, cin = (size_t)dst->c;
        for (size_t o = 0; o < cout; o++)
            for (size_t i = 0; i < cin; i++)
                for (size_t y = 0; y < kh; y++)
                    for (size_t x = 0; x < kw; x++)
                        data[((o * kh + y) * kw + x) * cin + i] = host[((o * cin + i) * kh + y) * kw + x];
    } else {
        memcpy(data, host, count * sizeof *data);
    }
    dst->data = data;
    return D3SR_OK;
}

static d3sr_status cpu_upload(d3sr_ctx *ctx, const float *host, d3sr_tensor *dst)
{
    (void)ctx;
    memcpy(dst->data, host, d3sr_tensor_bytes(dst));
    return D3SR_OK;
}

static d3sr_status cpu_download(d3sr_ctx *ctx, const d3sr_tensor *src, float *host)
{
    (void)ctx;
    memcpy(host, src->data, d3sr_tensor_bytes(src));
    return D3SR_OK;
}

static d3sr_status cpu_upload_nchw(d3sr_ctx *ctx, const float *host, d3sr_tensor *dst)
{
    (void)ctx;
    const size_t c = (size_t)dst->c, hw = d3sr_tensor_pixels(dst);
    float *out = dst->data;
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (size_t np = 0; np < (size_t)dst->n * hw; np++) {
        size_t n = np / hw, p = np % hw;
        for (size_t ch = 0; ch < c; ch++) out[np * c + ch] = host[(n * c + ch) * hw + p];
    }
    return D3SR_OK;
}

static d3sr_status cpu_download_nchw(d3sr_ctx *ctx, const d3sr_tensor *src, int c0, int c1,
                                     float *host)
{
    (void)ctx;
    const size_t c = (size_t)src->c, hw = d3sr_tensor_pixels(src), kept = (size_t)(c1 - c0);
    const float *in = src->data;
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (size_t nc = 0; nc < (size_t)src->n * kept; nc++) {
        size_t n = nc / kept, ch = nc % kept + (size_t)c0;
        float *dst = host + nc * hw;
        const float *base = in + n * hw * c + ch;
        for (size_t p = 0; p < hw; p++) dst[p] = base[p * c];
    }
    return D3SR_OK;
}

const d3sr_backend d3sr_cpu_backend = {
    .name = "cpu",
    .init = NULL,
    .destroy = NULL,
    .synchronize = NULL,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload_weight = cpu_upload_weight,
    .upload = cpu_upload,
    .download = cpu_download,
    .upload_nchw = cpu_upload_nchw,
    .download_nchw = cpu_download_nchw,
    .conv2d = cpu_conv2d,
    .linear = cpu_linear,
    .group_norm = cpu_group_norm,
    .group_stats = cpu_group_stats,
    .group_norm_with = cpu_group_norm_with,
    .attention = cpu_attention,
    .layer_norm = cpu_layer_norm,
    .upsample_nearest = cpu_upsample_nearest,
    .geglu = cpu_geglu,
    .activation = cpu_activation,
    .add_inplace = cpu_add_inplace,
    .add_channel_offset = cpu_add_channel_offset,
    .concat_channels = cpu_concat_channels,
    .max_pool = cpu_max_pool,
    .l2_pool = cpu_l2_pool,
    .lpips_distance = cpu_lpips_distance,
    .pair_moments = cpu_pair_moments,
};
