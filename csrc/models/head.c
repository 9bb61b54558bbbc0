/* head.c: the discriminator's patch head, an MLP applied at every location.
 *
 * features [n, c, h, w] -> linear c -> hidden, activation, linear hidden -> 1
 * at each of the h x w positions -> logits [n, 1, h, w]: one realness score per
 * patch of the latent the trunk saw (D3SR: 32 x 32 pixels per logit).
 */
#include <math.h>
#include <stdint.h>

#include "model.h"

typedef struct {
    d3sr_head_config cfg;
    d3sr_linear fc1, fc2;
} head;

static const d3sr_activation_kind ACTIVATIONS[] = {
    [D3SR_HEAD_SILU] = D3SR_ACT_SILU,
    [D3SR_HEAD_RELU] = D3SR_ACT_RELU,
    [D3SR_HEAD_LEAKY_RELU] = D3SR_ACT_LEAKY_RELU,
    [D3SR_HEAD_GELU] = D3SR_ACT_GELU,
};

d3sr_status d3sr_head_create(const d3sr_head_config *cfg, const char *device, d3sr_dtype dtype, d3sr_model **out)
{
    *out = NULL;
    if (cfg->in_channels < 1 || cfg->hidden < 1 || cfg->in_channels > D3SR_MAX_CHANNELS || cfg->hidden > D3SR_MAX_CHANNELS)
        return d3sr_fail(D3SR_ERR_VALUE, "the head needs in_channels and hidden in [1, %d], got %d and %d",
                         D3SR_MAX_CHANNELS, cfg->in_channels, cfg->hidden);
    if (cfg->activation == D3SR_HEAD_LEAKY_RELU && !isfinite(cfg->negative_slope))
        return d3sr_fail(D3SR_ERR_VALUE, "the head's negative_slope must be a finite number, not %g",
                         (double)cfg->negative_slope);
    if (cfg->activation < D3SR_HEAD_SILU || cfg->activation > D3SR_HEAD_GELU)
        return d3sr_fail(D3SR_ERR_VALUE, "unknown head activation %d", (int)cfg->activation);
    d3sr_model *m;
    D3SR_CHECK(d3sr_model_new(D3SR_MODEL_HEAD, device, dtype, sizeof(head), NULL, &m));
    head *hd = m->impl;
    hd->cfg = *cfg;
    d3sr_status status = d3sr_linear_register(&m->params, &hd->fc1, cfg->in_channels, cfg->hidden, 1, "0");
    if (status == D3SR_OK) status = d3sr_linear_register(&m->params, &hd->fc2, cfg->hidden, 1, 1, "2");
    if (status != D3SR_OK) {
        d3sr_model_free(m);
        return status;
    }
    *out = m;
    return D3SR_OK;
}

typedef struct {
    const head *hd;
    const float *features;
    int n, h, w;
    float *logits;
} head_call;

static d3sr_status head_forward(d3sr_ctx *ctx, void *arg)
{
    const head_call *call = arg;
    const head *hd = call->hd;
    d3sr_tensor x, h, a, y;
    D3SR_CHECK(d3sr_upload_nchw(ctx, call->features, call->n, hd->cfg.in_channels, call->h, call->w, &x)); // [n, h, w, c]
    D3SR_CHECK(d3sr_linear_apply(ctx, &x, &hd->fc1, NULL, &h));                                            // [n, h, w, hidden]
    D3SR_CHECK(d3sr_activation(ctx, &h, ACTIVATIONS[hd->cfg.activation], hd->cfg.negative_slope, &a));
    D3SR_CHECK(d3sr_linear_apply(ctx, &a, &hd->fc2, NULL, &y));                                            // [n, h, w, 1]
    D3SR_CHECK(d3sr_download_nchw(ctx, &y, 0, 1, call->logits));                                          // [n, 1, h, w]
    return D3SR_OK;
}

d3sr_status d3sr_head_forward(d3sr_model *m, const float *features, int n, int channels, int h, int w, float *logits)
{
    D3SR_CHECK(d3sr_model_enter(m, D3SR_MODEL_HEAD, "head"));
    const head *hd = m->impl;
    d3sr_status status;
    if (channels != hd->cfg.in_channels)
        status = d3sr_fail(D3SR_ERR_VALUE, "the head takes %d channels, the features have %d", hd->cfg.in_channels,
                           channels);
    else if (n < 1 || h < 1 || w < 1)
        status = d3sr_fail(D3SR_ERR_VALUE, "the features [%d, %d, %d, %d] are empty", n, channels, h, w);
    else
        status = d3sr_check_finite(features, (size_t)n * channels * h * w, "features");
    if (status == D3SR_OK) {
        head_call call = {hd, features, n, h, w, logits};
        status = d3sr_ctx_run(&m->ctx, head_forward, &call);
    }
    if (status == D3SR_OK) status = d3sr_check_output(logits, (size_t)n * h * w, "the patch head's logits");
    d3sr_model_leave(m);
    return status;
}
