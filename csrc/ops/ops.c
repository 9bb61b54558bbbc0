/* ops.c: shape checks, output allocation and dispatch to the backend.
 *
 * Every op runs in two passes (see core/arena.h): while planning it only
 * checks shapes and allocates; the real pass calls the backend's kernel. The
 * checks here are the single place shapes are validated, so kernels may
 * assume agreeing shapes.
 */
#include "ops.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/status.h"
#include "backend.h"
#include "device.h"

d3sr_status d3sr_ctx_init(d3sr_ctx *ctx, const char *device, d3sr_dtype dtype)
{
    memset(ctx, 0, sizeof *ctx);
    D3SR_CHECK(d3sr_device_backend(device, dtype, &ctx->backend));
    ctx->dtype = dtype;
    if (ctx->backend->init) D3SR_CHECK(ctx->backend->init(ctx));
    return D3SR_OK;
}

void d3sr_ctx_destroy(d3sr_ctx *ctx)
{
    if (!ctx->backend) return;
    if (ctx->arena.base) ctx->backend->free(ctx, ctx->arena.base);
    if (ctx->workspace) ctx->backend->free(ctx, ctx->workspace);
    d3sr_arena_clear(&ctx->arena);
    d3sr_capture_clear(&ctx->capture);
    if (ctx->backend->destroy) ctx->backend->destroy(ctx);
    memset(ctx, 0, sizeof *ctx);
}

d3sr_status d3sr_ctx_plan(d3sr_ctx *ctx, d3sr_status (*forward)(d3sr_ctx *ctx, void *arg), void *arg)
{
    /* Two planning passes cost no arithmetic: the first learns when each
     * activation is last read, the second measures the peak with each freed then. */
    d3sr_arena_begin(&ctx->arena, D3SR_PASS_RECORD);
    D3SR_CHECK(forward(ctx, arg));
    d3sr_arena_begin(&ctx->arena, D3SR_PASS_PLAN);
    return forward(ctx, arg);
}

d3sr_status d3sr_ctx_run(d3sr_ctx *ctx, d3sr_status (*forward)(d3sr_ctx *ctx, void *arg), void *arg)
{
    int capturing = ctx->capture.enabled;
    d3sr_capture_clear(&ctx->capture);
    ctx->capture.enabled = capturing;
    D3SR_CHECK(d3sr_ctx_plan(ctx, forward, arg));
    size_t need = ctx->arena.peak;
    if (need > ctx->arena.capacity) {
        if (ctx->arena.base) ctx->backend->free(ctx, ctx->arena.base);
        ctx->arena.base = NULL;
        ctx->arena.capacity = 0;
        D3SR_CHECK(ctx->backend->alloc(ctx, need, (void **)&ctx->arena.base));
        ctx->arena.capacity = need;
    }
    d3sr_arena_begin(&ctx->arena, D3SR_PASS_RUN);
    return forward(ctx, arg);
}

d3sr_status d3sr_workspace(d3sr_ctx *ctx, size_t bytes, void **out)
{
    if (bytes > ctx->workspace_bytes) {
        if (ctx->workspace) ctx->backend->free(ctx, ctx->workspace);
        ctx->workspace = NULL;
        ctx->workspace_bytes = 0;
        D3SR_CHECK(ctx->backend->alloc(ctx, bytes, &ctx->workspace));
        ctx->workspace_bytes = bytes;
    }
    *out = ctx->workspace;
    return D3SR_OK;
}

/* ---- profiling ----------------------------------------------------------- */

const char *const d3sr_op_names[D3SR_OP_COUNT] = {
    [D3SR_OP_TRANSFER] = "transfer", [D3SR_OP_CONV2D] = "conv2d", [D3SR_OP_LINEAR] = "linear",
    [D3SR_OP_GROUP_NORM] = "group_norm", [D3SR_OP_LAYER_NORM] = "layer_norm", [D3SR_OP_ATTENTION] = "attention",
    [D3SR_OP_UPSAMPLE] = "upsample", [D3SR_OP_GEGLU] = "geglu", [D3SR_OP_ACTIVATION] = "activation",
    [D3SR_OP_ADD] = "add", [D3SR_OP_CONCAT] = "concat", [D3SR_OP_POOL] = "pool", [D3SR_OP_METRIC] = "metric",
};

static double profile_begin(const d3sr_ctx *ctx)
{
    if (!ctx->profile.enabled) return 0.0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Passes status through; when profiling, charges the time since start to op. */
static d3sr_status profile_end(d3sr_ctx *ctx, d3sr_op_id op, double start, d3sr_status status)
{
    if (!ctx->profile.enabled || status != D3SR_OK) return status;
    if (ctx->backend->synchronize) D3SR_CHECK(ctx->backend->synchronize(ctx));
    ctx->profile.seconds[op] += profile_begin(ctx) - start;
    ctx->profile.calls[op]++;
    return D3SR_OK;
}

/* ---- steps: every op reads its inputs, then ends a step ---------------- */

/* Notes what the current op reads (NULLs are skipped), so the arena frees
 * each activation right after the last op that reads it. */
static void reads(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b, const d3sr_tensor *c)
{
    const d3sr_tensor *inputs[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (inputs[i]) d3sr_arena_use(&ctx->arena, inputs[i]->data);
}

/* The end of an op that was planned, not run. */
static d3sr_status planned(d3sr_ctx *ctx)
{
    d3sr_arena_step_end(&ctx->arena);
    return D3SR_OK;
}

/* The end of an op that ran: profiling, then the step. */
static d3sr_status ran(d3sr_ctx *ctx, d3sr_op_id op, double start, d3sr_status status)
{
    status = profile_end(ctx, op, start, status);
    if (status == D3SR_OK) d3sr_arena_step_end(&ctx->arena);
    return status;
}

/* Ops a backend may leave out (the metrics' ones): an error, not a NULL call. */
static d3sr_status unsupported(const d3sr_ctx *ctx, const char *op)
{
    return d3sr_fail(D3SR_ERR_UNAVAILABLE, "%s is not implemented on device '%s'", op, ctx->backend->name);
}

/* The kernels a backend may leave NULL, by name. */
static const struct {
    const char *name;
    size_t offset;
} OPTIONAL_KERNELS[] = {
    {"max_pool", offsetof(d3sr_backend, max_pool)},
    {"l2_pool", offsetof(d3sr_backend, l2_pool)},
    {"lpips_distance", offsetof(d3sr_backend, lpips_distance)},
    {"pair_moments", offsetof(d3sr_backend, pair_moments)},
};

static int backend_has(const d3sr_backend *backend, const char *kernel)
{
    for (size_t i = 0; i < sizeof OPTIONAL_KERNELS / sizeof OPTIONAL_KERNELS[0]; i++)
        if (strcmp(OPTIONAL_KERNELS[i].name, kernel) == 0) {
            const void *const *slot = (const void *const *)((const char *)backend + OPTIONAL_KERNELS[i].offset);
            return *slot != NULL;
        }
    return 1; /* every other kernel is required of every backend */
}

d3sr_status d3sr_ctx_require(const d3sr_ctx *ctx, const char *model, const char *const *kernels)
{
    char missing[160] = "";
    for (int i = 0; kernels[i]; i++)
        if (!backend_has(ctx->backend, kernels[i])) {
            size_t used = strlen(missing);
            snprintf(missing + used, sizeof missing - used, "%s%s", used ? ", " : "", kernels[i]);
        }
    if (missing[0])
        return d3sr_fail(D3SR_ERR_UNAVAILABLE, "%s needs %s, which device '%s' does not implement; use device='cpu'",
                         model, missing, ctx->backend->name);
    return D3SR_OK;
}

/* ---- weights ----------------------------------------------------------- */

d3sr_status d3sr_conv_register(d3sr_params *params, d3sr_conv *conv, int cin,
                               int cout, int kernel, int stride, int pad, int bias, const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    memset(conv, 0, sizeof *conv);
    conv->cin = cin;
    conv->cout = cout;
    conv->kh = conv->kw = kernel;
    conv->stride = stride;
    conv->pad_top = conv->pad_bottom = conv->pad_left = conv->pad_right = pad;
    int64_t wshape[4] = {cout, cin, kernel, kernel};
    D3SR_CHECK(d3sr_params_add(params, &conv->weight, D3SR_WEIGHT_CONV, 4, wshape, "%s.weight", prefix));
    if (bias) {
        int64_t bshape[1] = {cout};
        D3SR_CHECK(d3sr_params_add(params, &conv->bias, D3SR_WEIGHT_VECTOR, 1, bshape, "%s.bias", prefix));
    }
    return D3SR_OK;
}

d3sr_status d3sr_linear_register(d3sr_params *params, d3sr_linear *lin, int in,
                                 int out, int bias, const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    memset(lin, 0, sizeof *lin);
    lin->in = in;
    lin->out = out;
    int64_t wshape[2] = {out, in};
    D3SR_CHECK(d3sr_params_add(params, &lin->weight, D3SR_WEIGHT_LINEAR, 2, wshape, "%s.weight", prefix));
    if (bias) {
        int64_t bshape[1] = {out};
        D3SR_CHECK(d3sr_params_add(params, &lin->bias, D3SR_WEIGHT_VECTOR, 1, bshape, "%s.bias", prefix));
    }
    return D3SR_OK;
}

d3sr_status d3sr_norm_register(d3sr_params *params, d3sr_norm *norm, int channels, int groups, float eps,
                               const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    memset(norm, 0, sizeof *norm);
    norm->channels = channels;
    norm->groups = groups;
    norm->eps = eps;
    int64_t shape[1] = {channels};
    D3SR_CHECK(d3sr_params_add(params, &norm->gamma, D3SR_WEIGHT_VECTOR, 1, shape, "%s.weight", prefix));
    D3SR_CHECK(d3sr_params_add(params, &norm->beta, D3SR_WEIGHT_VECTOR, 1, shape, "%s.bias", prefix));
    return D3SR_OK;
}

/* IEEE half to float, exact for every value including subnormals, Inf and NaN. */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        exponent = 113;
        while (!(mantissa & 0x400)) {
            mantissa <<= 1;
            exponent--;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

d3sr_status d3sr_weight_upload(d3sr_ctx *ctx, const d3sr_param *param, d3sr_dtype dtype,
                               const void *host, d3sr_tensor *dst)
{
    size_t count = 1;
    for (int i = 0; i < param->ndim; i++) count *= (size_t)param->shape[i];

    const float *f32 = host;
    float *converted = NULL;
    if (dtype != D3SR_F32) {
        converted = malloc(count * sizeof *converted);
        if (!converted)
            return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory converting weight '%s'", param->name);
        const uint16_t *bits = host;
        for (size_t i = 0; i < count; i++) {
            if (dtype == D3SR_F16) {
                converted[i] = half_to_float(bits[i]);
            } else {
                uint32_t wide = (uint32_t)bits[i] << 16;
                memcpy(&converted[i], &wide, sizeof wide);
            }
        }
        f32 = converted;
    }
    /* Refused at load, where it is cheap and the name is known: NaN or Inf in
     * a weight only ever yields NaN outputs (black pixels, NaN scores). */
    for (size_t i = 0; i < count; i++)
        if (!isfinite(f32[i])) {
            free(converted);
            return d3sr_fail(D3SR_ERR_VALUE, "weight '%s' contains NaN or Inf (element %zu)", param->name, i);
        }

    const int64_t *s = param->shape;
    memset(dst, 0, sizeof *dst);
    dst->dtype = ctx->dtype;
    switch (param->kind) {
    case D3SR_WEIGHT_CONV: dst->n = (int)s[0]; dst->h = (int)s[2]; dst->w = (int)s[3]; dst->c = (int)s[1]; break;
    case D3SR_WEIGHT_LINEAR: dst->n = 1; dst->h = 1; dst->w = (int)s[0]; dst->c = (int)s[1]; break;
    case D3SR_WEIGHT_VECTOR: dst->n = 1; dst->h = 1; dst->w = 1; dst->c = (int)count; break; /* [c] or [1, c, 1, 1] */
    }
    d3sr_status status = ctx->backend->upload_weight(ctx, param->kind, f32, dst);
    free(converted);
    if (status != D3SR_OK) return d3sr_fail_context(status, "weight '%s'", param->name);
    return D3SR_OK;
}

void d3sr_weight_free(d3sr_ctx *ctx, d3sr_tensor *weight)
{
    if (weight->data) ctx->backend->free(ctx, weight->data);
    weight->data = NULL;
}

/* ---- activations ------------------------------------------------------- */

d3sr_status d3sr_tensor_new(d3sr_ctx *ctx, int n, int h, int w, int c, d3sr_tensor *out)
{
    if (n <= 0 || h <= 0 || w <= 0 || c <= 0)
        return d3sr_fail(D3SR_ERR_VALUE, "internal error: tensor shape [%d, %d, %d, %d] is empty", n, h, w, c);
    /* Kernels index rows (n x h x w) and channels with 32-bit integers and
     * OpenBLAS takes 32-bit sizes: refuse, in 64-bit arithmetic, what would wrap. */
    int64_t rows = (int64_t)n * h * w;
    if (rows > D3SR_MAX_ROWS || c > D3SR_MAX_CHANNELS * 9)
        return d3sr_fail(D3SR_ERR_VALUE, "an activation of shape [%d, %d, %d, %d] is too large (at most %d pixels or "
                         "tokens over the batch); use a smaller batch or image, or tiles", n, h, w, c, D3SR_MAX_ROWS);
    memset(out, 0, sizeof *out);
    out->dtype = ctx->dtype;
    out->n = n;
    out->h = h;
    out->w = w;
    out->c = c;
    d3sr_status status = d3sr_arena_alloc(&ctx->arena, d3sr_tensor_bytes(out), &out->data);
    if (status != D3SR_OK) out->data = NULL;
    return status;
}

d3sr_status d3sr_upload(d3sr_ctx *ctx, const float *host, int n, int h, int w, int c, d3sr_tensor *out)
{
    D3SR_CHECK(d3sr_tensor_new(ctx, n, h, w, c, out));
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_TRANSFER, start, ctx->backend->upload(ctx, host, out));
}

d3sr_status d3sr_download(d3sr_ctx *ctx, const d3sr_tensor *x, float *host)
{
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_TRANSFER, start, ctx->backend->download(ctx, x, host));
}

d3sr_status d3sr_upload_nchw(d3sr_ctx *ctx, const float *host, int n, int c, int h, int w,
                             d3sr_tensor *out)
{
    D3SR_CHECK(d3sr_tensor_new(ctx, n, h, w, c, out));
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_TRANSFER, start, ctx->backend->upload_nchw(ctx, host, out));
}

d3sr_status d3sr_download_nchw(d3sr_ctx *ctx, const d3sr_tensor *x, int c0, int c1, float *host)
{
    if (c0 < 0 || c1 > x->c || c0 >= c1)
        return d3sr_fail(D3SR_ERR_VALUE, "internal error: channels [%d, %d) of a %d-channel tensor", c0, c1, x->c);
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_TRANSFER, start, ctx->backend->download_nchw(ctx, x, c0, c1, host));
}

void d3sr_capture_clear(d3sr_capture *capture)
{
    for (int i = 0; i < capture->count; i++) free(capture->items[i].data);
    free(capture->items);
    memset(capture, 0, sizeof *capture);
}

d3sr_status d3sr_capture_tensor(d3sr_ctx *ctx, const d3sr_tensor *x, const char *fmt, ...)
{
    d3sr_capture *cap = &ctx->capture;
    if (cap->enabled) reads(ctx, x, NULL, NULL); /* kept until it is copied, at the next op's end */
    if (!cap->enabled || d3sr_ctx_planning(ctx)) return D3SR_OK;
    if (cap->count == cap->capacity) {
        int capacity = cap->capacity ? 2 * cap->capacity : 32;
        d3sr_captured *items = realloc(cap->items, (size_t)capacity * sizeof *items);
        if (!items) return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory capturing activations");
        cap->items = items;
        cap->capacity = capacity;
    }
    d3sr_captured *item = &cap->items[cap->count];
    va_list args;
    va_start(args, fmt);
    vsnprintf(item->name, sizeof item->name, fmt, args);
    va_end(args);
    item->shape[0] = x->n;
    item->shape[1] = x->c;
    item->shape[2] = x->h;
    item->shape[3] = x->w;
    item->data = malloc(d3sr_tensor_numel(x) * sizeof(float));
    if (!item->data) return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory capturing '%s'", item->name);
    cap->count++;
    return ctx->backend->download_nchw(ctx, x, 0, x->c, item->data);
}

/* ---- ops --------------------------------------------------------------- */

static int same_shape(const d3sr_tensor *a, const d3sr_tensor *b)
{
    return a->n == b->n && a->h == b->h && a->w == b->w && a->c == b->c;
}

void d3sr_conv_output_size(const d3sr_conv *conv, int h, int w, int *ho, int *wo)
{
    int hp = h + conv->pad_top + conv->pad_bottom, wp = w + conv->pad_left + conv->pad_right;
    *ho = hp < conv->kh ? 0 : (hp - conv->kh) / conv->stride + 1;
    *wo = wp < conv->kw ? 0 : (wp - conv->kw) / conv->stride + 1;
}

d3sr_status d3sr_conv2d(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_conv *conv,
                        const d3sr_tensor *residual, d3sr_tensor *out)
{
    if (x->c != conv->cin)
        return d3sr_fail(D3SR_ERR_VALUE, "conv2d: input has %d channels, the layer takes %d", x->c, conv->cin);
    int ho, wo;
    d3sr_conv_output_size(conv, x->h, x->w, &ho, &wo);
    if (ho <= 0 || wo <= 0)
        return d3sr_fail(D3SR_ERR_VALUE, "conv2d: a %dx%d input is smaller than the %dx%d kernel",
                         x->h, x->w, conv->kh, conv->kw);
    D3SR_CHECK(d3sr_tensor_new(ctx, x->n, ho, wo, conv->cout, out));
    if (residual && !same_shape(residual, out))
        return d3sr_fail(D3SR_ERR_VALUE, "conv2d: residual [%d, %d, %d, %d] differs from output [%d, %d, %d, %d]",
                         residual->n, residual->h, residual->w, residual->c, out->n, out->h, out->w, out->c);
    reads(ctx, x, residual, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_CONV2D, start, ctx->backend->conv2d(ctx, x, conv, residual, out));
}

d3sr_status d3sr_linear_apply(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_linear *lin,
                              const d3sr_tensor *residual, d3sr_tensor *out)
{
    if (x->c != lin->in)
        return d3sr_fail(D3SR_ERR_VALUE, "linear: input has %d features, the layer takes %d", x->c, lin->in);
    D3SR_CHECK(d3sr_tensor_new(ctx, x->n, x->h, x->w, lin->out, out));
    if (residual && !same_shape(residual, out))
        return d3sr_fail(D3SR_ERR_VALUE, "linear: residual shape differs from the output's");
    reads(ctx, x, residual, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_LINEAR, start, ctx->backend->linear(ctx, x, lin, residual, out));
}

d3sr_status d3sr_group_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, int silu,
                            d3sr_tensor *out)
{
    if (x->c != norm->channels || norm->groups <= 0 || x->c % norm->groups != 0)
        return d3sr_fail(D3SR_ERR_VALUE, "group_norm: %d channels in %d groups, the layer has %d channels",
                         x->c, norm->groups, norm->channels);
    if (ctx->pooling.pool) return d3sr_group_norm_pooled(ctx, x, norm, silu, out);
    D3SR_CHECK(d3sr_tensor_new(ctx, x->n, x->h, x->w, x->c, out));
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_GROUP_NORM, start, ctx->backend->group_norm(ctx, x, norm, silu, out));
}

/* One of a pooled pass's scaled bounds: v * size / in_size, which must be whole
 * (tile cores sit on the grid of the coarsest resolution). */
static d3sr_status scale_bound(int v, int size, int in_size, int *out)
{
    long long scaled = (long long)v * size;
    if (scaled % in_size)
        return d3sr_fail(D3SR_ERR_VALUE, "group_norm: a tile's core bound %d of %d does not fall on a pixel of a %d-pixel layer",
                         v, in_size, size);
    *out = (int)(scaled / in_size);
    return D3SR_OK;
}

d3sr_status d3sr_group_norm_pooled(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, int silu,
                                   d3sr_tensor *out)
{
    d3sr_norm_pooling *pooling = &ctx->pooling;
    const d3sr_norm_pool *pool = pooling->pool;
    const int layer = pooling->next++, groups = norm->groups;
    if (layer >= pool->layers)
        return d3sr_fail(D3SR_ERR_VALUE, "group_norm: the pool holds %d layers, the call runs more", pool->layers);
    if (groups != pool->groups)
        return d3sr_fail(D3SR_ERR_VALUE, "group_norm: layer %d has %d groups, the pool %d", layer, groups, pool->groups);
    int region[4];
    D3SR_CHECK(scale_bound(pool->y0, x->h, pooling->in_h, &region[0]));
    D3SR_CHECK(scale_bound(pool->y1, x->h, pooling->in_h, &region[1]));
    D3SR_CHECK(scale_bound(pool->x0, x->w, pooling->in_w, &region[2]));
    D3SR_CHECK(scale_bound(pool->x1, x->w, pooling->in_w, &region[3]));
    if (region[0] < 0 || region[0] >= region[1] || region[1] > x->h || region[2] < 0 || region[2] >= region[3] ||
        region[3] > x->w)
        return d3sr_fail(D3SR_ERR_VALUE, "group_norm: the core [%d, %d) x [%d, %d) is empty or outside the %d x %d layer",
                         region[0], region[1], region[2], region[3], x->h, x->w);
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) {
        if (ctx->arena.pass == D3SR_PASS_PLAN) { /* what the real pass holds at the barrier below: the blocks live now */
            size_t live = 0;
            for (int i = 0; i < ctx->arena.n_live; i++) live += ctx->arena.live[i].bytes;
            if (live > pooling->planned_barrier_bytes) pooling->planned_barrier_bytes = live;
        }
        D3SR_CHECK(d3sr_tensor_new(ctx, x->n, x->h, x->w, x->c, out));
        return planned(ctx);
    }
    if (!ctx->backend->group_stats || !ctx->backend->group_norm_with)
        return d3sr_fail(D3SR_ERR_VALUE, "group_norm: the %s backend has no pooled GroupNorm", ctx->backend->name);
    const size_t per_sample = (size_t)pool->layers * groups;
    if (pool->collect) {
        double start = profile_begin(ctx);
        D3SR_CHECK(profile_end(ctx, D3SR_OP_GROUP_NORM, start,
                               ctx->backend->group_stats(ctx, x, groups, region, pooling->stats)));
        for (int n = 0; n < x->n; n++)
            memcpy(pool->collect + ((size_t)n * per_sample + (size_t)layer * groups) * 3,
                   pooling->stats + (size_t)n * groups * 3, (size_t)groups * 3 * sizeof(double));
    }
    /* The output is allocated after the barrier, so a parked tile holds only what it still needs. */
    if (pooling->barrier) D3SR_CHECK(pooling->barrier(ctx, pooling->barrier_user));
    D3SR_CHECK(d3sr_tensor_new(ctx, x->n, x->h, x->w, x->c, out));
    double start = profile_begin(ctx);
    d3sr_status status;
    if (pool->apply) {
        for (int n = 0; n < x->n; n++)
            for (int g = 0; g < groups; g++) {
                const double *mv = pool->apply + ((size_t)n * per_sample + (size_t)layer * groups + g) * 2;
                pooling->mean_rstd[((size_t)n * groups + g) * 2] = (float)mv[0];
                pooling->mean_rstd[((size_t)n * groups + g) * 2 + 1] = (float)(1.0 / sqrt(mv[1] + (double)norm->eps));
            }
        status = ctx->backend->group_norm_with(ctx, x, norm, pooling->mean_rstd, silu, out);
    } else {
        status = ctx->backend->group_norm(ctx, x, norm, silu, out);
    }
    return ran(ctx, D3SR_OP_GROUP_NORM, start, status);
}

d3sr_status d3sr_attention(d3sr_ctx *ctx, const d3sr_tensor *q, const d3sr_tensor *k,
                           const d3sr_tensor *v, int heads, d3sr_tensor *out)
{
    if (heads <= 0 || q->c % heads != 0 || k->c != q->c || v->c != q->c || q->n != k->n || k->n != v->n ||
        d3sr_tensor_pixels(k) != d3sr_tensor_pixels(v))
        return d3sr_fail(D3SR_ERR_VALUE, "attention: q [%d, %d, %d], k [%d, %d, %d], v [%d, %d, %d] with %d heads do not agree",
                         q->n, q->h * q->w, q->c, k->n, k->h * k->w, k->c, v->n, v->h * v->w, v->c, heads);
    D3SR_CHECK(d3sr_tensor_new(ctx, q->n, q->h, q->w, q->c, out));
    reads(ctx, q, k, v);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_ATTENTION, start, ctx->backend->attention(ctx, q, k, v, heads, out));
}

d3sr_status d3sr_upsample_nearest(d3sr_ctx *ctx, const d3sr_tensor *x, int out_h, int out_w,
                                  d3sr_tensor *out)
{
    if (out_h < 1 || out_w < 1)
        return d3sr_fail(D3SR_ERR_VALUE, "upsample: output size %d x %d is empty", out_h, out_w);
    D3SR_CHECK(d3sr_tensor_new(ctx, x->n, out_h, out_w, x->c, out));
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_UPSAMPLE, start, ctx->backend->upsample_nearest(ctx, x, out));
}

d3sr_status d3sr_layer_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm,
                            d3sr_tensor *out)
{
    if (x->c != norm->channels)
        return d3sr_fail(D3SR_ERR_VALUE, "layer_norm: %d channels, the layer has %d", x->c, norm->channels);
    D3SR_CHECK(d3sr_tensor_new(ctx, x->n, x->h, x->w, x->c, out));
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_LAYER_NORM, start, ctx->backend->layer_norm(ctx, x, norm, out));
}

d3sr_status d3sr_geglu(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out)
{
    if (x->c % 2)
        return d3sr_fail(D3SR_ERR_VALUE, "geglu: %d channels do not split into value and gate halves", x->c);
    D3SR_CHECK(d3sr_tensor_new(ctx, x->n, x->h, x->w, x->c / 2, out));
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_GEGLU, start, ctx->backend->geglu(ctx, x, out));
}

d3sr_status d3sr_activation(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_activation_kind kind, float param,
                            d3sr_tensor *out)
{
    if (kind < D3SR_ACT_SILU || kind > D3SR_ACT_GELU)
        return d3sr_fail(D3SR_ERR_VALUE, "activation: unknown kind %d", (int)kind);
    D3SR_CHECK(d3sr_tensor_new(ctx, x->n, x->h, x->w, x->c, out));
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_ACTIVATION, start, ctx->backend->activation(ctx, x, kind, param, out));
}

d3sr_status d3sr_activation_inplace(d3sr_ctx *ctx, d3sr_tensor *x, d3sr_activation_kind kind, float param)
{
    if (kind < D3SR_ACT_SILU || kind > D3SR_ACT_GELU)
        return d3sr_fail(D3SR_ERR_VALUE, "activation: unknown kind %d", (int)kind);
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_ACTIVATION, start, ctx->backend->activation(ctx, x, kind, param, x));
}

d3sr_status d3sr_add_channel_offset(d3sr_ctx *ctx, d3sr_tensor *x, const d3sr_tensor *offset)
{
    if (offset->n != x->n || offset->c != x->c || offset->h != 1 || offset->w != 1)
        return d3sr_fail(D3SR_ERR_VALUE, "add_channel_offset: offset [%d, %d, %d, %d] for x [%d, %d, %d, %d]",
                         offset->n, offset->h, offset->w, offset->c, x->n, x->h, x->w, x->c);
    reads(ctx, x, offset, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_ADD, start, ctx->backend->add_channel_offset(ctx, x, offset));
}

d3sr_status d3sr_concat_channels(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                                 d3sr_tensor *out)
{
    if (a->n != b->n || a->h != b->h || a->w != b->w)
        return d3sr_fail(D3SR_ERR_VALUE, "concat: [%d, %d, %d, %d] and [%d, %d, %d, %d] differ in size",
                         a->n, a->h, a->w, a->c, b->n, b->h, b->w, b->c);
    D3SR_CHECK(d3sr_tensor_new(ctx, a->n, a->h, a->w, a->c + b->c, out));
    reads(ctx, a, b, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_CONCAT, start, ctx->backend->concat_channels(ctx, a, b, out));
}

d3sr_status d3sr_add_inplace(d3sr_ctx *ctx, d3sr_tensor *a, const d3sr_tensor *b)
{
    if (!same_shape(a, b))
        return d3sr_fail(D3SR_ERR_VALUE, "add: [%d, %d, %d, %d] and [%d, %d, %d, %d] differ",
                         a->n, a->h, a->w, a->c, b->n, b->h, b->w, b->c);
    reads(ctx, a, b, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_ADD, start, ctx->backend->add_inplace(ctx, a, b));
}

d3sr_status d3sr_max_pool(d3sr_ctx *ctx, const d3sr_tensor *x, int kernel, int stride, d3sr_tensor *out)
{
    if (kernel < 1 || stride < 1)
        return d3sr_fail(D3SR_ERR_VALUE, "max_pool: kernel %d and stride %d must be positive", kernel, stride);
    if (x->h < kernel || x->w < kernel)
        return d3sr_fail(D3SR_ERR_VALUE, "max_pool: a %dx%d input is smaller than the %dx%d window", x->h, x->w,
                         kernel, kernel);
    D3SR_CHECK(d3sr_tensor_new(ctx, x->n, (x->h - kernel) / stride + 1, (x->w - kernel) / stride + 1, x->c, out));
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    if (!ctx->backend->max_pool) return unsupported(ctx, "max_pool");
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_POOL, start, ctx->backend->max_pool(ctx, x, kernel, stride, out));
}

d3sr_status d3sr_l2_pool(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out)
{
    D3SR_CHECK(d3sr_tensor_new(ctx, x->n, (x->h - 1) / 2 + 1, (x->w - 1) / 2 + 1, x->c, out));
    reads(ctx, x, NULL, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    if (!ctx->backend->l2_pool) return unsupported(ctx, "l2_pool");
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_POOL, start, ctx->backend->l2_pool(ctx, x, out));
}

d3sr_status d3sr_lpips_distance(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                                const d3sr_tensor *weight, d3sr_tensor *out)
{
    if (!same_shape(a, b))
        return d3sr_fail(D3SR_ERR_VALUE, "lpips_distance: [%d, %d, %d, %d] and [%d, %d, %d, %d] differ",
                         a->n, a->h, a->w, a->c, b->n, b->h, b->w, b->c);
    if (d3sr_tensor_numel(weight) != (size_t)a->c)
        return d3sr_fail(D3SR_ERR_VALUE, "lpips_distance: %zu weights for %d channels", d3sr_tensor_numel(weight), a->c);
    D3SR_CHECK(d3sr_tensor_new(ctx, a->n, 1, 1, 1, out));
    reads(ctx, a, b, weight); /* the weight may be an activation (the op tests upload it) */
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    if (!ctx->backend->lpips_distance) return unsupported(ctx, "lpips_distance");
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_METRIC, start, ctx->backend->lpips_distance(ctx, a, b, weight, out));
}

d3sr_status d3sr_pair_moments(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                              d3sr_tensor *out)
{
    if (!same_shape(a, b))
        return d3sr_fail(D3SR_ERR_VALUE, "pair_moments: [%d, %d, %d, %d] and [%d, %d, %d, %d] differ",
                         a->n, a->h, a->w, a->c, b->n, b->h, b->w, b->c);
    D3SR_CHECK(d3sr_tensor_new(ctx, a->n, 1, 5, a->c, out));
    reads(ctx, a, b, NULL);
    if (d3sr_ctx_planning(ctx)) return planned(ctx);
    if (!ctx->backend->pair_moments) return unsupported(ctx, "pair_moments");
    double start = profile_begin(ctx);
    return ran(ctx, D3SR_OP_METRIC, start, ctx->backend->pair_moments(ctx, a, b, out));
}

d3sr_status d3sr_batch_slice(const d3sr_tensor *x, int n0, int n1, d3sr_tensor *out)
{
    if (n0 < 0 || n1 > x->n || n0 >= n1)
        return d3sr_fail(D3SR_ERR_VALUE, "internal error: samples [%d, %d) of a batch of %d", n0, n1, x->n);
    *out = *x;
    out->n = n1 - n0;
    out->data = (char *)x->data + (size_t)n0 * x->h * x->w * x->c * d3sr_dtype_size(x->dtype);
    return D3SR_OK;
}

d3sr_status d3sr_reshape(const d3sr_tensor *x, int n, int h, int w, int c, d3sr_tensor *out)
{
    if ((size_t)n * h * w * c != d3sr_tensor_numel(x))
        return d3sr_fail(D3SR_ERR_VALUE, "internal error: reshape [%d, %d, %d, %d] to [%d, %d, %d, %d]",
                         x->n, x->h, x->w, x->c, n, h, w, c);
    *out = *x;
    out->n = n;
    out->h = h;
    out->w = w;
    out->c = c;
    return D3SR_OK;
}
