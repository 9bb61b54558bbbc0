/* single_op.c: run one op on host arrays; see single_op.h. */
#include "single_op.h"

#include <stdlib.h>
#include <string.h>

#include "../core/status.h"
#include "ops.h"

/* A throwaway context with the weights of one layer. */
typedef struct {
    d3sr_ctx ctx;
    d3sr_params params;
} single_env;

static d3sr_status env_init(single_env *env, const char *device, d3sr_dtype dtype)
{
    memset(env, 0, sizeof *env);
    return d3sr_ctx_init(&env->ctx, device, dtype);
}

/* Uploads every registered weight from hosts[i] (NULL: the layer has none). */
static d3sr_status env_load(single_env *env, const float *const *hosts)
{
    for (int i = 0; i < env->params.count; i++) {
        d3sr_param *p = &env->params.items[i];
        D3SR_CHECK(d3sr_weight_upload(&env->ctx, p, D3SR_F32, hosts[i], p->dst));
    }
    return D3SR_OK;
}

static void env_free(single_env *env)
{
    if (env->ctx.backend)
        for (int i = 0; i < env->params.count; i++) d3sr_weight_free(&env->ctx, env->params.items[i].dst);
    d3sr_params_clear(&env->params);
    d3sr_ctx_destroy(&env->ctx);
}

/* ---- conv2d ------------------------------------------------------------ */

typedef struct {
    const d3sr_conv *conv;
    const float *x, *residual;
    int n, h, w;
    float *out;
} conv_call;

static d3sr_status conv_forward(d3sr_ctx *ctx, void *arg)
{
    const conv_call *call = arg;
    const d3sr_conv *conv = call->conv;
    d3sr_tensor x, res, y;
    int ho, wo;
    d3sr_conv_output_size(conv, call->h, call->w, &ho, &wo);
    D3SR_CHECK(d3sr_upload(ctx, call->x, call->n, call->h, call->w, conv->cin, &x));
    if (call->residual) D3SR_CHECK(d3sr_upload(ctx, call->residual, call->n, ho, wo, conv->cout, &res));
    D3SR_CHECK(d3sr_conv2d(ctx, &x, conv, call->residual ? &res : NULL, &y));
    D3SR_CHECK(d3sr_download(ctx, &y, call->out));
    return D3SR_OK;
}

d3sr_status d3sr_single_conv2d(const char *device, d3sr_dtype dtype, const float *x, int n, int h,
                               int w, int cin, const float *weight, const float *bias, int cout,
                               int kh, int kw, int stride, const int pad[4], const float *residual,
                               float *out)
{
    if (kh != kw || stride < 1 || pad[0] < 0 || pad[1] < 0 || pad[2] < 0 || pad[3] < 0)
        return d3sr_fail(D3SR_ERR_VALUE, "conv2d takes square kernels, stride >= 1 and padding >= 0");
    single_env env;
    d3sr_conv conv;
    d3sr_status status = env_init(&env, device, dtype);
    if (status == D3SR_OK) status = d3sr_conv_register(&env.params, &conv, "conv", cin, cout, kh, stride, 0, bias != NULL);
    if (status == D3SR_OK) {
        conv.pad_top = pad[0];
        conv.pad_bottom = pad[1];
        conv.pad_left = pad[2];
        conv.pad_right = pad[3];
        const float *hosts[2] = {weight, bias};
        status = env_load(&env, hosts);
    }
    if (status == D3SR_OK) {
        conv_call call = {&conv, x, residual, n, h, w, out};
        status = d3sr_ctx_run(&env.ctx, conv_forward, &call);
    }
    env_free(&env);
    return status;
}

/* ---- linear ------------------------------------------------------------ */

typedef struct {
    const d3sr_linear *lin;
    const float *x;
    int rows;
    float *out;
} linear_call;

static d3sr_status linear_forward(d3sr_ctx *ctx, void *arg)
{
    const linear_call *call = arg;
    d3sr_tensor x, y;
    D3SR_CHECK(d3sr_upload(ctx, call->x, 1, 1, call->rows, call->lin->in, &x));
    D3SR_CHECK(d3sr_linear_apply(ctx, &x, call->lin, NULL, &y));
    return d3sr_download(ctx, &y, call->out);
}

d3sr_status d3sr_single_linear(const char *device, d3sr_dtype dtype, const float *x, int rows, int in,
                               const float *weight, const float *bias, int out_features, float *out)
{
    single_env env;
    d3sr_linear lin;
    d3sr_status status = env_init(&env, device, dtype);
    if (status == D3SR_OK) status = d3sr_linear_register(&env.params, &lin, "linear", in, out_features, bias != NULL);
    if (status == D3SR_OK) {
        const float *hosts[2] = {weight, bias};
        status = env_load(&env, hosts);
    }
    if (status == D3SR_OK) {
        linear_call call = {&lin, x, rows, out};
        status = d3sr_ctx_run(&env.ctx, linear_forward, &call);
    }
    env_free(&env);
    return status;
}

/* ---- group norm -------------------------------------------------------- */

typedef struct {
    const d3sr_norm *norm;
    const float *x;
    int n, h, w, silu;
    float *out;
} norm_call;

static d3sr_status group_norm_forward(d3sr_ctx *ctx, void *arg)
{
    const norm_call *call = arg;
    d3sr_tensor x, y;
    ctx->pooling.next = 0;
    D3SR_CHECK(d3sr_upload(ctx, call->x, call->n, call->h, call->w, call->norm->channels, &x));
    D3SR_CHECK(d3sr_group_norm(ctx, &x, call->norm, call->silu, &y));
    return d3sr_download(ctx, &y, call->out);
}

d3sr_status d3sr_single_group_norm(const char *device, d3sr_dtype dtype, const float *x, int n, int h,
                                   int w, int c, int groups, const float *gamma, const float *beta,
                                   float eps, int silu, float *out)
{
    return d3sr_single_group_norm_pooled(device, dtype, x, n, h, w, c, groups, gamma, beta, eps, silu, NULL, out);
}

d3sr_status d3sr_single_group_norm_pooled(const char *device, d3sr_dtype dtype, const float *x, int n, int h,
                                          int w, int c, int groups, const float *gamma, const float *beta,
                                          float eps, int silu, const d3sr_norm_pool *pool, float *out)
{
    single_env env;
    d3sr_norm norm;
    float *mean_rstd = NULL;
    double *stats = NULL;
    if (pool) {
        if (pool->layers != 1 || pool->groups != groups)
            return d3sr_fail(D3SR_ERR_VALUE, "group_norm: the pool must hold 1 layer of %d groups", groups);
        if (pool->y0 < 0 || pool->y1 > h || pool->y0 >= pool->y1 || pool->x0 < 0 || pool->x1 > w || pool->x0 >= pool->x1)
            return d3sr_fail(D3SR_ERR_VALUE, "group_norm: the core [%d, %d) x [%d, %d) is empty or outside the %d x %d input",
                             pool->y0, pool->y1, pool->x0, pool->x1, h, w);
        mean_rstd = malloc((size_t)n * groups * 2 * sizeof(float));
        stats = malloc((size_t)n * groups * 3 * sizeof(double));
        if (!mean_rstd || !stats) {
            free(mean_rstd);
            free(stats);
            return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory");
        }
    }
    d3sr_status status = env_init(&env, device, dtype);
    if (status == D3SR_OK && pool) {
        env.ctx.pooling.pool = pool;
        env.ctx.pooling.in_h = h;
        env.ctx.pooling.in_w = w;
        env.ctx.pooling.mean_rstd = mean_rstd;
        env.ctx.pooling.stats = stats;
    }
    if (status == D3SR_OK) status = d3sr_norm_register(&env.params, &norm, "norm", c, groups, eps);
    if (status == D3SR_OK) {
        const float *hosts[2] = {gamma, beta};
        status = env_load(&env, hosts);
    }
    if (status == D3SR_OK) {
        norm_call call = {&norm, x, n, h, w, silu, out};
        status = d3sr_ctx_run(&env.ctx, group_norm_forward, &call);
    }
    memset(&env.ctx.pooling, 0, sizeof env.ctx.pooling);
    env_free(&env);
    free(mean_rstd);
    free(stats);
    return status;
}

/* ---- attention --------------------------------------------------------- */

typedef struct {
    const float *q, *k, *v;
    int n, lq, lk, width, heads;
    float *out;
} attention_call;

static d3sr_status attention_forward(d3sr_ctx *ctx, void *arg)
{
    const attention_call *call = arg;
    d3sr_tensor q, k, v, y;
    D3SR_CHECK(d3sr_upload(ctx, call->q, call->n, 1, call->lq, call->width, &q));
    D3SR_CHECK(d3sr_upload(ctx, call->k, call->n, 1, call->lk, call->width, &k));
    D3SR_CHECK(d3sr_upload(ctx, call->v, call->n, 1, call->lk, call->width, &v));
    D3SR_CHECK(d3sr_attention(ctx, &q, &k, &v, call->heads, &y));
    return d3sr_download(ctx, &y, call->out);
}

d3sr_status d3sr_single_attention(const char *device, d3sr_dtype dtype, const float *q, const float *k,
                                  const float *v, int n, int lq, int lk, int width, int heads, float *out)
{
    single_env env;
    d3sr_status status = env_init(&env, device, dtype);
    if (status == D3SR_OK) {
        attention_call call = {q, k, v, n, lq, lk, width, heads, out};
        status = d3sr_ctx_run(&env.ctx, attention_forward, &call);
    }
    env_free(&env);
    return status;
}

/* ---- layer norm ------------------------------------------------------- */

static d3sr_status layer_norm_forward(d3sr_ctx *ctx, void *arg)
{
    const norm_call *call = arg;
    d3sr_tensor x, y;
    D3SR_CHECK(d3sr_upload(ctx, call->x, 1, 1, call->w, call->norm->channels, &x));
    D3SR_CHECK(d3sr_layer_norm(ctx, &x, call->norm, &y));
    return d3sr_download(ctx, &y, call->out);
}

d3sr_status d3sr_single_layer_norm(const char *device, d3sr_dtype dtype, const float *x, int rows, int c,
                                   const float *gamma, const float *beta, float eps, float *out)
{
    single_env env;
    d3sr_norm norm;
    d3sr_status status = env_init(&env, device, dtype);
    if (status == D3SR_OK) status = d3sr_norm_register(&env.params, &norm, "norm", c, 1, eps);
    if (status == D3SR_OK) {
        const float *hosts[2] = {gamma, beta};
        status = env_load(&env, hosts);
    }
    if (status == D3SR_OK) {
        norm_call call = {&norm, x, 1, 1, rows, 0, out};
        status = d3sr_ctx_run(&env.ctx, layer_norm_forward, &call);
    }
    env_free(&env);
    return status;
}

/* ---- weightless ops ---------------------------------------------------- */

d3sr_status d3sr_single_shape(d3sr_single_kind kind, const int a[4], const int b[4], const int size[2],
                              int out[4])
{
    for (int i = 0; i < 4; i++) {
        out[i] = a[i];
        if (a[i] < 1) return d3sr_fail(D3SR_ERR_VALUE, "a has an empty dimension");
    }
    switch (kind) {
    case D3SR_SINGLE_SILU:
    case D3SR_SINGLE_RELU:
    case D3SR_SINGLE_LEAKY_RELU:
    case D3SR_SINGLE_GELU: return D3SR_OK;
    case D3SR_SINGLE_GEGLU:
        if (a[3] % 2) return d3sr_fail(D3SR_ERR_VALUE, "geglu needs an even channel count, not %d", a[3]);
        out[3] = a[3] / 2;
        return D3SR_OK;
    case D3SR_SINGLE_ADD:
        if (memcmp(a, b, 4 * sizeof *a)) return d3sr_fail(D3SR_ERR_VALUE, "add needs equal shapes");
        return D3SR_OK;
    case D3SR_SINGLE_ADD_CHANNEL_OFFSET:
        if (b[0] != a[0] || b[1] != 1 || b[2] != 1 || b[3] != a[3])
            return d3sr_fail(D3SR_ERR_VALUE, "the offset must be [n, 1, 1, c]");
        return D3SR_OK;
    case D3SR_SINGLE_CONCAT:
        if (b[0] != a[0] || b[1] != a[1] || b[2] != a[2]) return d3sr_fail(D3SR_ERR_VALUE, "concat needs equal n, h, w");
        out[3] = a[3] + b[3];
        return D3SR_OK;
    case D3SR_SINGLE_UPSAMPLE_NEAREST:
        if (size[0] < 1 || size[1] < 1) return d3sr_fail(D3SR_ERR_VALUE, "the size must be positive");
        out[1] = size[0];
        out[2] = size[1];
        return D3SR_OK;
    case D3SR_SINGLE_MAX_POOL:
        if (size[0] < 1 || size[1] < 1) return d3sr_fail(D3SR_ERR_VALUE, "max_pool: kernel and stride must be positive");
        if (a[1] < size[0] || a[2] < size[0]) return d3sr_fail(D3SR_ERR_VALUE, "max_pool: the input is smaller than the window");
        out[1] = (a[1] - size[0]) / size[1] + 1;
        out[2] = (a[2] - size[0]) / size[1] + 1;
        return D3SR_OK;
    case D3SR_SINGLE_L2_POOL:
        out[1] = (a[1] - 1) / 2 + 1;
        out[2] = (a[2] - 1) / 2 + 1;
        return D3SR_OK;
    case D3SR_SINGLE_PAIR_MOMENTS:
        if (memcmp(a, b, 4 * sizeof *a)) return d3sr_fail(D3SR_ERR_VALUE, "pair_moments needs equal shapes");
        out[1] = 1;
        out[2] = 5;
        return D3SR_OK;
    }
    return d3sr_fail(D3SR_ERR_VALUE, "unknown op %d", (int)kind);
}

typedef struct {
    d3sr_single_kind kind;
    const float *a, *b;
    const int *a_shape, *b_shape, *size;
    float *out;
} simple_call;

static d3sr_status simple_forward(d3sr_ctx *ctx, void *arg)
{
    const simple_call *call = arg;
    const int *sa = call->a_shape, *sb = call->b_shape;
    d3sr_tensor a, b, y;
    D3SR_CHECK(d3sr_upload(ctx, call->a, sa[0], sa[1], sa[2], sa[3], &a));
    if (call->b) D3SR_CHECK(d3sr_upload(ctx, call->b, sb[0], sb[1], sb[2], sb[3], &b));
    switch (call->kind) {
    case D3SR_SINGLE_SILU: D3SR_CHECK(d3sr_activation(ctx, &a, D3SR_ACT_SILU, 0.0f, &y)); break;
    case D3SR_SINGLE_RELU: D3SR_CHECK(d3sr_activation(ctx, &a, D3SR_ACT_RELU, 0.0f, &y)); break;
    case D3SR_SINGLE_LEAKY_RELU: D3SR_CHECK(d3sr_activation(ctx, &a, D3SR_ACT_LEAKY_RELU, 0.2f, &y)); break;
    case D3SR_SINGLE_GELU: D3SR_CHECK(d3sr_activation(ctx, &a, D3SR_ACT_GELU, 0.0f, &y)); break;
    case D3SR_SINGLE_GEGLU: D3SR_CHECK(d3sr_geglu(ctx, &a, &y)); break;
    case D3SR_SINGLE_ADD: D3SR_CHECK(d3sr_add_inplace(ctx, &a, &b)); y = a; break;
    case D3SR_SINGLE_ADD_CHANNEL_OFFSET: D3SR_CHECK(d3sr_add_channel_offset(ctx, &a, &b)); y = a; break;
    case D3SR_SINGLE_CONCAT: D3SR_CHECK(d3sr_concat_channels(ctx, &a, &b, &y)); break;
    case D3SR_SINGLE_UPSAMPLE_NEAREST: D3SR_CHECK(d3sr_upsample_nearest(ctx, &a, call->size[0], call->size[1], &y)); break;
    case D3SR_SINGLE_MAX_POOL: D3SR_CHECK(d3sr_max_pool(ctx, &a, call->size[0], call->size[1], &y)); break;
    case D3SR_SINGLE_L2_POOL: D3SR_CHECK(d3sr_l2_pool(ctx, &a, &y)); break;
    case D3SR_SINGLE_PAIR_MOMENTS: D3SR_CHECK(d3sr_pair_moments(ctx, &a, &b, &y)); break;
    }
    return d3sr_download(ctx, &y, call->out);
}

d3sr_status d3sr_single_run(const char *device, d3sr_dtype dtype, d3sr_single_kind kind, const float *a,
                            const int a_shape[4], const float *b, const int b_shape[4], const int size[2],
                            float *out)
{
    int out_shape[4];
    D3SR_CHECK(d3sr_single_shape(kind, a_shape, b_shape, size, out_shape));
    int needs_b = kind == D3SR_SINGLE_ADD || kind == D3SR_SINGLE_ADD_CHANNEL_OFFSET || kind == D3SR_SINGLE_CONCAT ||
                  kind == D3SR_SINGLE_PAIR_MOMENTS;
    if (needs_b != (b != NULL)) return d3sr_fail(D3SR_ERR_VALUE, needs_b ? "this op takes a second tensor" : "this op takes one tensor");
    single_env env;
    d3sr_status status = env_init(&env, device, dtype);
    if (status == D3SR_OK) {
        simple_call call = {kind, a, b, a_shape, b_shape, size, out};
        status = d3sr_ctx_run(&env.ctx, simple_forward, &call);
    }
    env_free(&env);
    return status;
}

/* ---- LPIPS distance ---------------------------------------------------- */

typedef struct {
    const float *a, *b, *weight;
    const int *shape;
    float *out;
} lpips_call;

static d3sr_status lpips_forward(d3sr_ctx *ctx, void *arg)
{
    const lpips_call *call = arg;
    const int *s = call->shape;
    d3sr_tensor a, b, w, y;
    D3SR_CHECK(d3sr_upload(ctx, call->a, s[0], s[1], s[2], s[3], &a));
    D3SR_CHECK(d3sr_upload(ctx, call->b, s[0], s[1], s[2], s[3], &b));
    D3SR_CHECK(d3sr_upload(ctx, call->weight, 1, 1, 1, s[3], &w));
    D3SR_CHECK(d3sr_lpips_distance(ctx, &a, &b, &w, &y));
    return d3sr_download(ctx, &y, call->out);
}

d3sr_status d3sr_single_lpips_distance(const char *device, d3sr_dtype dtype, const float *a, const float *b,
                                       const int shape[4], const float *weight, float *out)
{
    for (int i = 0; i < 4; i++)
        if (shape[i] < 1) return d3sr_fail(D3SR_ERR_VALUE, "lpips_distance: the input has an empty dimension");
    single_env env;
    d3sr_status status = env_init(&env, device, dtype);
    if (status == D3SR_OK) {
        lpips_call call = {a, b, weight, shape, out};
        status = d3sr_ctx_run(&env.ctx, lpips_forward, &call);
    }
    env_free(&env);
    return status;
}
