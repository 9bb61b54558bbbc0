/* single_op.c: run one op on host arrays; see single_op.h. */
#include "single_op.h"

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
    D3SR_CHECK(d3sr_upload(ctx, call->x, call->n, call->h, call->w, call->norm->channels, &x));
    D3SR_CHECK(d3sr_group_norm(ctx, &x, call->norm, call->silu, &y));
    return d3sr_download(ctx, &y, call->out);
}

d3sr_status d3sr_single_group_norm(const char *device, d3sr_dtype dtype, const float *x, int n, int h,
                                   int w, int c, int groups, const float *gamma, const float *beta,
                                   float eps, int silu, float *out)
{
    single_env env;
    d3sr_norm norm;
    d3sr_status status = env_init(&env, device, dtype);
    if (status == D3SR_OK) status = d3sr_norm_register(&env.params, &norm, "norm", c, groups, eps);
    if (status == D3SR_OK) {
        const float *hosts[2] = {gamma, beta};
        status = env_load(&env, hosts);
    }
    if (status == D3SR_OK) {
        norm_call call = {&norm, x, n, h, w, silu, out};
        status = d3sr_ctx_run(&env.ctx, group_norm_forward, &call);
    }
    env_free(&env);
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

/* ---- upsample ---------------------------------------------------------- */

typedef struct {
    const float *x;
    int n, h, w, c;
    float *out;
} upsample_call;

static d3sr_status upsample_forward(d3sr_ctx *ctx, void *arg)
{
    const upsample_call *call = arg;
    d3sr_tensor x, y;
    D3SR_CHECK(d3sr_upload(ctx, call->x, call->n, call->h, call->w, call->c, &x));
    D3SR_CHECK(d3sr_upsample_nearest2x(ctx, &x, &y));
    return d3sr_download(ctx, &y, call->out);
}

d3sr_status d3sr_single_upsample_nearest2x(const char *device, d3sr_dtype dtype, const float *x, int n,
                                           int h, int w, int c, float *out)
{
    single_env env;
    d3sr_status status = env_init(&env, device, dtype);
    if (status == D3SR_OK) {
        upsample_call call = {x, n, h, w, c, out};
        status = d3sr_ctx_run(&env.ctx, upsample_forward, &call);
    }
    env_free(&env);
    return status;
}
