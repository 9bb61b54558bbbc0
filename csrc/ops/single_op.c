/* single_op.c: one op on host arrays, for the op tests and benchmarks; see
 * d3sr_single_op.h.
 *
 * Every op is a row of one table (its arguments, for a binding to parse)
 * and a case of two switches: check (shapes, the only validation of these
 * arguments anywhere) and forward (upload, one op of ops.h, download).
 * Layers with weights are registered in a throwaway context exactly as a
 * model registers them, so the weights go through the same upload path.
 */
#include "../d3sr_single_op.h"

#include <stdlib.h>
#include <string.h>

#include "../core/status.h"
#include "ops.h"

#define OPTIONAL(i) (1u << (i))

static const d3sr_single_info TABLE[D3SR_SINGLE_COUNT] = {
    [D3SR_SINGLE_CONV2D] = {D3SR_SINGLE_CONV2D, "conv2d", {"x", "weight", "bias", "residual"}, {4, 4, 1, 4},
                            OPTIONAL(2) | OPTIONAL(3),
                            {{"stride", D3SR_SCALAR_INT, 1, 0, 1}, {"padding", D3SR_SCALAR_INT, 4, 0, 0}},
                            "x [n,h,w,cin], weight [cout,cin,k,k], bias [cout]?, residual [n,ho,wo,cout]?; "
                            "stride, padding (top, bottom, left, right)"},
    [D3SR_SINGLE_LINEAR] = {D3SR_SINGLE_LINEAR, "linear", {"x", "weight", "bias"}, {2, 2, 1}, OPTIONAL(2), {{0}},
                            "x [rows,in], weight [out,in], bias [out]? -> [rows,out]"},
    [D3SR_SINGLE_GROUP_NORM] = {D3SR_SINGLE_GROUP_NORM, "group_norm", {"x", "gamma", "beta"}, {4, 1, 1}, 0,
                                {{"groups", D3SR_SCALAR_INT, 1, 1, 0}, {"eps", D3SR_SCALAR_FLOAT, 1, 1, 0},
                                 {"silu", D3SR_SCALAR_BOOL, 1, 0, 0}},
                                "x [n,h,w,c], gamma [c], beta [c]; groups, eps, silu (GroupNorm, then SiLU if set)"},
    [D3SR_SINGLE_LAYER_NORM] = {D3SR_SINGLE_LAYER_NORM, "layer_norm", {"x", "gamma", "beta"}, {2, 1, 1}, 0,
                                {{"eps", D3SR_SCALAR_FLOAT, 1, 1, 0}}, "x [rows,c], gamma [c], beta [c]; eps"},
    [D3SR_SINGLE_ATTENTION] = {D3SR_SINGLE_ATTENTION, "attention", {"q", "k", "v"}, {3, 3, 3}, 0,
                               {{"heads", D3SR_SCALAR_INT, 1, 1, 0}},
                               "q [n,Lq,c], k [n,Lk,c], v [n,Lk,c]; heads -> [n,Lq,c]"},
    [D3SR_SINGLE_SILU] = {D3SR_SINGLE_SILU, "silu", {"a"}, {4}, 0, {{0}}, "silu(a)"},
    [D3SR_SINGLE_RELU] = {D3SR_SINGLE_RELU, "relu", {"a"}, {4}, 0, {{0}}, "relu(a)"},
    [D3SR_SINGLE_LEAKY_RELU] = {D3SR_SINGLE_LEAKY_RELU, "leaky_relu", {"a"}, {4}, 0, {{0}},
                                "leaky_relu(a), negative slope 0.2"},
    [D3SR_SINGLE_GELU] = {D3SR_SINGLE_GELU, "gelu", {"a"}, {4}, 0, {{0}}, "gelu(a), exact (erf)"},
    [D3SR_SINGLE_GEGLU] = {D3SR_SINGLE_GEGLU, "geglu", {"a"}, {4}, 0, {{0}},
                           "a [n,h,w,2c] = [value | gate] -> value * gelu(gate) [n,h,w,c]"},
    [D3SR_SINGLE_ADD] = {D3SR_SINGLE_ADD, "add", {"a", "b"}, {4, 4}, 0, {{0}}, "a + b, equal shapes"},
    [D3SR_SINGLE_ADD_CHANNEL_OFFSET] = {D3SR_SINGLE_ADD_CHANNEL_OFFSET, "add_channel_offset", {"a", "b"}, {4, 4}, 0,
                                        {{0}}, "a [n,h,w,c] + b [n,1,1,c]"},
    [D3SR_SINGLE_CONCAT] = {D3SR_SINGLE_CONCAT, "concat", {"a", "b"}, {4, 4}, 0, {{0}},
                            "[a | b] along channels"},
    [D3SR_SINGLE_UPSAMPLE_NEAREST] = {D3SR_SINGLE_UPSAMPLE_NEAREST, "upsample_nearest", {"a"}, {4}, 0,
                                      {{"size", D3SR_SCALAR_INT, 2, 1, 0}},
                                      "a resized to size (h, w), PyTorch's nearest-index rule"},
    [D3SR_SINGLE_MAX_POOL] = {D3SR_SINGLE_MAX_POOL, "max_pool", {"a"}, {4}, 0,
                              {{"size", D3SR_SCALAR_INT, 2, 1, 0}}, "max pooling, size (kernel, stride)"},
    [D3SR_SINGLE_L2_POOL] = {D3SR_SINGLE_L2_POOL, "l2_pool", {"a"}, {4}, 0, {{0}},
                             "DISTS' L2 pooling (3x3 Hann window, stride 2)"},
    [D3SR_SINGLE_PAIR_MOMENTS] = {D3SR_SINGLE_PAIR_MOMENTS, "pair_moments", {"a", "b"}, {4, 4}, 0, {{0}},
                                  "per-channel moments of (a, b) -> [n,1,5,c]"},
    [D3SR_SINGLE_LPIPS_DISTANCE] = {D3SR_SINGLE_LPIPS_DISTANCE, "lpips_distance", {"a", "b", "weight"}, {4, 4, 1}, 0,
                                    {{0}}, "one LPIPS layer: a, b [n,h,w,c], weight [c] -> [n]"},
};

const d3sr_single_info *d3sr_single_table(int *count)
{
    *count = D3SR_SINGLE_COUNT;
    return TABLE;
}

const d3sr_single_info *d3sr_single_find(const char *name)
{
    for (int i = 0; i < D3SR_SINGLE_COUNT; i++)
        if (strcmp(TABLE[i].name, name) == 0) return &TABLE[i];
    return NULL;
}

/* ---- checks ------------------------------------------------------------ */

static const int *shape_of(const d3sr_single_params *p, int i)
{
    return p->arrays[i].shape;
}

static int given(const d3sr_single_params *p, int i)
{
    return p->arrays[i].data != NULL;
}

static int same_shape(const int *a, const int *b, int ndim)
{
    return memcmp(a, b, (size_t)ndim * sizeof *a) == 0;
}

/* The output of the weightless ops on a [n, h, w, c] (and b). */
static d3sr_status weightless_shape(const d3sr_single_params *p, const char *name, int out[4])
{
    const int *a = shape_of(p, 0), *b = shape_of(p, 1);
    const double *v = p->values;
    memcpy(out, a, 4 * sizeof *out);
    switch (p->kind) {
    case D3SR_SINGLE_GEGLU:
        if (a[3] % 2) return d3sr_fail(D3SR_ERR_VALUE, "%s: a needs an even channel count, not %d", name, a[3]);
        out[3] = a[3] / 2;
        return D3SR_OK;
    case D3SR_SINGLE_ADD:
        if (!same_shape(a, b, 4)) return d3sr_fail(D3SR_ERR_VALUE, "%s: a and b must have equal shapes", name);
        return D3SR_OK;
    case D3SR_SINGLE_ADD_CHANNEL_OFFSET:
        if (b[0] != a[0] || b[1] != 1 || b[2] != 1 || b[3] != a[3])
            return d3sr_fail(D3SR_ERR_VALUE, "%s: b must be [n, 1, 1, c] for a [n, h, w, c]", name);
        return D3SR_OK;
    case D3SR_SINGLE_CONCAT:
        if (b[0] != a[0] || b[1] != a[1] || b[2] != a[2])
            return d3sr_fail(D3SR_ERR_VALUE, "%s: a and b must have equal n, h, w", name);
        out[3] = a[3] + b[3];
        return D3SR_OK;
    case D3SR_SINGLE_UPSAMPLE_NEAREST:
        if (v[0] < 1 || v[1] < 1) return d3sr_fail(D3SR_ERR_VALUE, "%s: size must be positive", name);
        out[1] = (int)v[0];
        out[2] = (int)v[1];
        return D3SR_OK;
    case D3SR_SINGLE_MAX_POOL:
        if (v[0] < 1 || v[1] < 1) return d3sr_fail(D3SR_ERR_VALUE, "%s: kernel and stride must be positive", name);
        if (a[1] < v[0] || a[2] < v[0]) return d3sr_fail(D3SR_ERR_VALUE, "%s: a is smaller than the window", name);
        out[1] = (a[1] - (int)v[0]) / (int)v[1] + 1;
        out[2] = (a[2] - (int)v[0]) / (int)v[1] + 1;
        return D3SR_OK;
    case D3SR_SINGLE_L2_POOL:
        out[1] = (a[1] - 1) / 2 + 1;
        out[2] = (a[2] - 1) / 2 + 1;
        return D3SR_OK;
    case D3SR_SINGLE_PAIR_MOMENTS:
        if (!same_shape(a, b, 4)) return d3sr_fail(D3SR_ERR_VALUE, "%s: a and b must have equal shapes", name);
        out[1] = 1;
        out[2] = 5;
        return D3SR_OK;
    default: return D3SR_OK; /* the activations keep a's shape */
    }
}

d3sr_status d3sr_single_output_shape(const d3sr_single_params *p, int *ndim, int out[4])
{
    if ((unsigned)p->kind >= D3SR_SINGLE_COUNT) return d3sr_fail(D3SR_ERR_VALUE, "unknown op %d", (int)p->kind);
    const d3sr_single_info *info = &TABLE[p->kind];
    const char *name = info->name;
    for (int i = 0; i < D3SR_SINGLE_ARRAY_SLOTS && info->arrays[i]; i++) {
        if (!given(p, i)) {
            if (info->optional & OPTIONAL(i)) continue;
            return d3sr_fail(D3SR_ERR_VALUE, "%s: %s is required", name, info->arrays[i]);
        }
        for (int d = 0; d < info->ndim[i]; d++)
            if (p->arrays[i].shape[d] < 1)
                return d3sr_fail(D3SR_ERR_VALUE, "%s: %s has an empty dimension", name, info->arrays[i]);
    }
    const int *x = shape_of(p, 0);
    const double *v = p->values;
    *ndim = info->ndim[0];
    memcpy(out, x, 4 * sizeof *out);
    switch (p->kind) {
    case D3SR_SINGLE_CONV2D: {
        const int *w = shape_of(p, 1);
        int stride = (int)v[0], k = w[2];
        if (w[1] != x[3] || w[3] != k)
            return d3sr_fail(D3SR_ERR_VALUE, "%s: weight must be [cout, %d, k, k], not [%d, %d, %d, %d]", name, x[3],
                             w[0], w[1], w[2], w[3]);
        if (given(p, 2) && shape_of(p, 2)[0] != w[0])
            return d3sr_fail(D3SR_ERR_VALUE, "%s: bias must have %d values, not %d", name, w[0], shape_of(p, 2)[0]);
        if (stride < 1) return d3sr_fail(D3SR_ERR_VALUE, "%s: stride must be >= 1, not %d", name, stride);
        for (int i = 1; i <= 4; i++)
            if (v[i] < 0) return d3sr_fail(D3SR_ERR_VALUE, "%s: padding must be >= 0", name);
        int hp = x[1] + (int)v[1] + (int)v[2], wp = x[2] + (int)v[3] + (int)v[4];
        if (hp < k || wp < k) return d3sr_fail(D3SR_ERR_VALUE, "%s: the padded input is smaller than the kernel", name);
        out[1] = (hp - k) / stride + 1;
        out[2] = (wp - k) / stride + 1;
        out[3] = w[0];
        if (given(p, 3) && !same_shape(shape_of(p, 3), out, 4))
            return d3sr_fail(D3SR_ERR_VALUE, "%s: residual must have the output's shape [%d, %d, %d, %d]", name, out[0],
                             out[1], out[2], out[3]);
        return D3SR_OK;
    }
    case D3SR_SINGLE_LINEAR: {
        const int *w = shape_of(p, 1);
        if (w[1] != x[1])
            return d3sr_fail(D3SR_ERR_VALUE, "%s: weight must be [out, %d], not [%d, %d]", name, x[1], w[0], w[1]);
        if (given(p, 2) && shape_of(p, 2)[0] != w[0])
            return d3sr_fail(D3SR_ERR_VALUE, "%s: bias must have %d values, not %d", name, w[0], shape_of(p, 2)[0]);
        out[1] = w[0];
        return D3SR_OK;
    }
    case D3SR_SINGLE_GROUP_NORM:
    case D3SR_SINGLE_LAYER_NORM: {
        int c = x[*ndim - 1];
        if (shape_of(p, 1)[0] != c || shape_of(p, 2)[0] != c)
            return d3sr_fail(D3SR_ERR_VALUE, "%s: gamma and beta must have one value per channel (%d)", name, c);
        return D3SR_OK;
    }
    case D3SR_SINGLE_ATTENTION: {
        const int *k = shape_of(p, 1), *vv = shape_of(p, 2);
        if (k[0] != x[0] || vv[0] != x[0] || k[2] != x[2] || vv[2] != x[2] || vv[1] != k[1])
            return d3sr_fail(D3SR_ERR_VALUE, "%s: q [n, Lq, c], k and v [n, Lk, c] must agree", name);
        return D3SR_OK;
    }
    case D3SR_SINGLE_LPIPS_DISTANCE:
        if (!same_shape(x, shape_of(p, 1), 4)) return d3sr_fail(D3SR_ERR_VALUE, "%s: a and b must have equal shapes", name);
        if (shape_of(p, 2)[0] != x[3])
            return d3sr_fail(D3SR_ERR_VALUE, "%s: weight must have one value per channel (%d)", name, x[3]);
        *ndim = 1;
        return D3SR_OK;
    default: return weightless_shape(p, name, out);
    }
}

/* ---- running ----------------------------------------------------------- */

/* What a forward needs: the arguments, the layer registered for them and
 * where the result goes. */
typedef struct {
    const d3sr_single_params *p;
    float *out;
    d3sr_conv conv;
    d3sr_linear linear;
    d3sr_norm norm;
} single_call;

static d3sr_status upload(d3sr_ctx *ctx, const d3sr_single_params *p, int i, d3sr_tensor *t)
{
    const int *s = p->arrays[i].shape;
    switch (TABLE[p->kind].ndim[i]) {
    case 1: return d3sr_upload(ctx, p->arrays[i].data, 1, 1, 1, s[0], t);
    case 2: return d3sr_upload(ctx, p->arrays[i].data, 1, 1, s[0], s[1], t);      /* rows as one sequence */
    case 3: return d3sr_upload(ctx, p->arrays[i].data, s[0], 1, s[1], s[2], t);   /* tokens [n, 1, L, c] */
    default: return d3sr_upload(ctx, p->arrays[i].data, s[0], s[1], s[2], s[3], t);
    }
}

static d3sr_status single_forward(d3sr_ctx *ctx, void *arg)
{
    single_call *call = arg;
    const d3sr_single_params *p = call->p;
    const double *v = p->values;
    d3sr_tensor a, b, c, y;
    ctx->pooling.next = 0; /* a pooled GroupNorm counts its layers from the start of each pass */
    D3SR_CHECK(upload(ctx, p, 0, &a));
    switch (p->kind) {
    case D3SR_SINGLE_CONV2D:
        if (given(p, 3)) D3SR_CHECK(upload(ctx, p, 3, &c));
        D3SR_CHECK(d3sr_conv2d(ctx, &a, &call->conv, given(p, 3) ? &c : NULL, &y));
        break;
    case D3SR_SINGLE_LINEAR: D3SR_CHECK(d3sr_linear_apply(ctx, &a, &call->linear, NULL, &y)); break;
    case D3SR_SINGLE_GROUP_NORM: D3SR_CHECK(d3sr_group_norm(ctx, &a, &call->norm, v[2] != 0, &y)); break;
    case D3SR_SINGLE_LAYER_NORM: D3SR_CHECK(d3sr_layer_norm(ctx, &a, &call->norm, &y)); break;
    case D3SR_SINGLE_ATTENTION:
        D3SR_CHECK(upload(ctx, p, 1, &b));
        D3SR_CHECK(upload(ctx, p, 2, &c));
        D3SR_CHECK(d3sr_attention(ctx, &a, &b, &c, (int)v[0], &y));
        break;
    case D3SR_SINGLE_SILU: D3SR_CHECK(d3sr_activation(ctx, &a, D3SR_ACT_SILU, 0.0f, &y)); break;
    case D3SR_SINGLE_RELU: D3SR_CHECK(d3sr_activation(ctx, &a, D3SR_ACT_RELU, 0.0f, &y)); break;
    case D3SR_SINGLE_LEAKY_RELU: D3SR_CHECK(d3sr_activation(ctx, &a, D3SR_ACT_LEAKY_RELU, 0.2f, &y)); break;
    case D3SR_SINGLE_GELU: D3SR_CHECK(d3sr_activation(ctx, &a, D3SR_ACT_GELU, 0.0f, &y)); break;
    case D3SR_SINGLE_GEGLU: D3SR_CHECK(d3sr_geglu(ctx, &a, &y)); break;
    case D3SR_SINGLE_ADD:
        D3SR_CHECK(upload(ctx, p, 1, &b));
        D3SR_CHECK(d3sr_add_inplace(ctx, &a, &b));
        y = a;
        break;
    case D3SR_SINGLE_ADD_CHANNEL_OFFSET:
        D3SR_CHECK(upload(ctx, p, 1, &b));
        D3SR_CHECK(d3sr_add_channel_offset(ctx, &a, &b));
        y = a;
        break;
    case D3SR_SINGLE_CONCAT:
        D3SR_CHECK(upload(ctx, p, 1, &b));
        D3SR_CHECK(d3sr_concat_channels(ctx, &a, &b, &y));
        break;
    case D3SR_SINGLE_UPSAMPLE_NEAREST: D3SR_CHECK(d3sr_upsample_nearest(ctx, &a, (int)v[0], (int)v[1], &y)); break;
    case D3SR_SINGLE_MAX_POOL: D3SR_CHECK(d3sr_max_pool(ctx, &a, (int)v[0], (int)v[1], &y)); break;
    case D3SR_SINGLE_L2_POOL: D3SR_CHECK(d3sr_l2_pool(ctx, &a, &y)); break;
    case D3SR_SINGLE_PAIR_MOMENTS:
        D3SR_CHECK(upload(ctx, p, 1, &b));
        D3SR_CHECK(d3sr_pair_moments(ctx, &a, &b, &y));
        break;
    case D3SR_SINGLE_LPIPS_DISTANCE:
        D3SR_CHECK(upload(ctx, p, 1, &b));
        D3SR_CHECK(upload(ctx, p, 2, &c));
        D3SR_CHECK(d3sr_lpips_distance(ctx, &a, &b, &c, &y));
        break;
    case D3SR_SINGLE_COUNT: return d3sr_fail(D3SR_ERR_VALUE, "unknown op");
    }
    return d3sr_download(ctx, &y, call->out);
}

/* Registers the op's layer in params, as a model would; hosts[i] gets the
 * host array of the layer's i-th weight (NULL when absent). */
static d3sr_status register_layer(single_call *call, d3sr_params *params, const float *hosts[2])
{
    const d3sr_single_params *p = call->p;
    const int *x = shape_of(p, 0), *w = shape_of(p, 1);
    const double *v = p->values;
    hosts[0] = p->arrays[1].data;
    hosts[1] = p->arrays[2].data;
    switch (p->kind) {
    case D3SR_SINGLE_CONV2D:
        D3SR_CHECK(d3sr_conv_register(params, &call->conv, x[3], w[0], w[2], (int)v[0], 0, given(p, 2), "conv"));
        call->conv.pad_top = (int)v[1];
        call->conv.pad_bottom = (int)v[2];
        call->conv.pad_left = (int)v[3];
        call->conv.pad_right = (int)v[4];
        return D3SR_OK;
    case D3SR_SINGLE_LINEAR: return d3sr_linear_register(params, &call->linear, x[1], w[0], given(p, 2), "linear");
    case D3SR_SINGLE_GROUP_NORM: return d3sr_norm_register(params, &call->norm, x[3], (int)v[0], (float)v[1], "norm");
    case D3SR_SINGLE_LAYER_NORM: return d3sr_norm_register(params, &call->norm, x[1], 1, (float)v[0], "norm");
    default: return D3SR_OK; /* no weights: the arrays are inputs */
    }
}

/* Runs p in a throwaway context; pool (NULL: none) pools its GroupNorm. */
static d3sr_status run(const d3sr_single_params *p, const d3sr_norm_pool *pool, float *out)
{
    int ndim, out_shape[4];
    D3SR_CHECK(d3sr_single_output_shape(p, &ndim, out_shape));
    single_call call = {.p = p, .out = out};
    d3sr_ctx ctx;
    d3sr_params params;
    memset(&ctx, 0, sizeof ctx);
    memset(&params, 0, sizeof params);
    const float *hosts[2];
    float *mean_rstd = NULL;
    double *stats = NULL;
    d3sr_status status = d3sr_ctx_init(&ctx, p->device, p->dtype);
    if (status == D3SR_OK && pool) {
        const int n = p->arrays[0].shape[0], groups = pool->groups;
        mean_rstd = malloc((size_t)n * groups * 2 * sizeof *mean_rstd);
        stats = malloc((size_t)n * groups * 3 * sizeof *stats);
        if (!mean_rstd || !stats) status = d3sr_fail(D3SR_ERR_MEMORY, "out of host memory");
        ctx.pooling = (d3sr_norm_pooling){.pool = pool, .in_h = p->arrays[0].shape[1], .in_w = p->arrays[0].shape[2],
                                          .mean_rstd = mean_rstd, .stats = stats};
    }
    if (status == D3SR_OK) status = register_layer(&call, &params, hosts);
    for (int i = 0; status == D3SR_OK && i < params.count; i++)
        status = d3sr_weight_upload(&ctx, &params.items[i], D3SR_F32, hosts[i], params.items[i].dst);
    if (status == D3SR_OK) status = d3sr_ctx_run(&ctx, single_forward, &call);
    if (ctx.backend)
        for (int i = 0; i < params.count; i++) d3sr_weight_free(&ctx, params.items[i].dst);
    memset(&ctx.pooling, 0, sizeof ctx.pooling);
    d3sr_params_clear(&params);
    d3sr_ctx_destroy(&ctx);
    free(mean_rstd);
    free(stats);
    return status;
}

d3sr_status d3sr_single_run(const d3sr_single_params *p, float *out)
{
    return run(p, NULL, out);
}

d3sr_status d3sr_single_group_norm_pooled(const d3sr_single_params *p, const d3sr_norm_pool *pool, float *out)
{
    if (p->kind != D3SR_SINGLE_GROUP_NORM) return d3sr_fail(D3SR_ERR_VALUE, "a pool takes the group_norm op");
    const int *x = p->arrays[0].shape, groups = (int)p->values[0];
    if (pool->layers != 1 || pool->groups != groups)
        return d3sr_fail(D3SR_ERR_VALUE, "group_norm: the pool must hold 1 layer of %d groups", groups);
    if (pool->y0 < 0 || pool->y1 > x[1] || pool->y0 >= pool->y1 || pool->x0 < 0 || pool->x1 > x[2] || pool->x0 >= pool->x1)
        return d3sr_fail(D3SR_ERR_VALUE, "group_norm: the core [%d, %d) x [%d, %d) is empty or outside the %d x %d input",
                         pool->y0, pool->y1, pool->x0, pool->x1, x[1], x[2]);
    return run(p, pool, out);
}
