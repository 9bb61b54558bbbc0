/* transformer.c: Transformer2DModel and BasicTransformerBlock over ops. */
#include "transformer.h"

#include <stdio.h>
#include <stdlib.h>

#include "../core/status.h"

#define LAYER_NORM_EPS 1e-5f
#define GROUP_NORM_EPS 1e-6f

static d3sr_status attention_register(d3sr_params *params, d3sr_attention_layer *a, const char *prefix,
                                      int dim, int kv_dim, int heads)
{
    const int qkv_bias = 0;
    char name[D3SR_NAME_BYTES];
    a->heads = heads;
    snprintf(name, sizeof name, "%s.to_q", prefix);
    D3SR_CHECK(d3sr_linear_register(params, &a->to_q, name, dim, dim, qkv_bias));
    snprintf(name, sizeof name, "%s.to_k", prefix);
    D3SR_CHECK(d3sr_linear_register(params, &a->to_k, name, kv_dim, dim, qkv_bias));
    snprintf(name, sizeof name, "%s.to_v", prefix);
    D3SR_CHECK(d3sr_linear_register(params, &a->to_v, name, kv_dim, dim, qkv_bias));
    snprintf(name, sizeof name, "%s.to_out.0", prefix);
    return d3sr_linear_register(params, &a->to_out, name, dim, dim, 1);
}

/* out = x + to_out(attention(q(h), k(kv), v(kv))): h is the normed x, kv is h
 * itself (self-attention) or the text context. */
static d3sr_status attention_forward(d3sr_ctx *ctx, const d3sr_attention_layer *a, const d3sr_tensor *h,
                                     const d3sr_tensor *kv, const d3sr_tensor *x, d3sr_tensor *out)
{
    d3sr_tensor q, k, v, o;
    D3SR_CHECK(d3sr_linear_apply(ctx, h, &a->to_q, NULL, &q));   // [n, 1, L, dim]
    D3SR_CHECK(d3sr_linear_apply(ctx, kv, &a->to_k, NULL, &k));  // [n, 1, Lk, dim]
    D3SR_CHECK(d3sr_linear_apply(ctx, kv, &a->to_v, NULL, &v));  // [n, 1, Lk, dim]
    D3SR_CHECK(d3sr_attention(ctx, &q, &k, &v, a->heads, &o));   // [n, 1, L, dim]
    D3SR_CHECK(d3sr_linear_apply(ctx, &o, &a->to_out, x, out));  // [n, 1, L, dim]
    return D3SR_OK;
}

static d3sr_status block_register(d3sr_params *params, d3sr_transformer_block *b, const char *prefix, int dim,
                                  const d3sr_transformer2d_shape *shape)
{
    char name[D3SR_NAME_BYTES];
    snprintf(name, sizeof name, "%s.norm1", prefix);
    D3SR_CHECK(d3sr_norm_register(params, &b->norm1, name, dim, 1, LAYER_NORM_EPS));
    snprintf(name, sizeof name, "%s.attn1", prefix);
    D3SR_CHECK(attention_register(params, &b->attn1, name, dim, dim, shape->heads));
    snprintf(name, sizeof name, "%s.norm2", prefix);
    D3SR_CHECK(d3sr_norm_register(params, &b->norm2, name, dim, 1, LAYER_NORM_EPS));
    snprintf(name, sizeof name, "%s.attn2", prefix);
    D3SR_CHECK(attention_register(params, &b->attn2, name, dim, shape->cross_attention_dim, shape->heads));
    snprintf(name, sizeof name, "%s.norm3", prefix);
    D3SR_CHECK(d3sr_norm_register(params, &b->norm3, name, dim, 1, LAYER_NORM_EPS));
    snprintf(name, sizeof name, "%s.ff.net.0.proj", prefix);
    D3SR_CHECK(d3sr_linear_register(params, &b->ff_in, name, dim, 2 * 4 * dim, 1));
    snprintf(name, sizeof name, "%s.ff.net.2", prefix); /* ff.net.1 is dropout */
    return d3sr_linear_register(params, &b->ff_out, name, 4 * dim, dim, 1);
}

static d3sr_status block_forward(d3sr_ctx *ctx, const d3sr_transformer_block *b, const d3sr_tensor *x,
                                 const d3sr_tensor *context, d3sr_tensor *out)
{
    d3sr_tensor h, x1, x2, f, g;
    D3SR_CHECK(d3sr_layer_norm(ctx, x, &b->norm1, &h));                  // [n, 1, L, dim]
    D3SR_CHECK(attention_forward(ctx, &b->attn1, &h, &h, x, &x1));       // self-attention + x
    D3SR_CHECK(d3sr_layer_norm(ctx, &x1, &b->norm2, &h));
    D3SR_CHECK(attention_forward(ctx, &b->attn2, &h, context, &x1, &x2)); // cross-attention + x1
    D3SR_CHECK(d3sr_layer_norm(ctx, &x2, &b->norm3, &h));
    D3SR_CHECK(d3sr_linear_apply(ctx, &h, &b->ff_in, NULL, &f));         // [n, 1, L, 8 dim]
    D3SR_CHECK(d3sr_geglu(ctx, &f, &g));                                 // [n, 1, L, 4 dim]
    D3SR_CHECK(d3sr_linear_apply(ctx, &g, &b->ff_out, &x2, out));        // feed-forward + x2
    return D3SR_OK;
}

d3sr_status d3sr_transformer2d_register(d3sr_params *params, d3sr_transformer2d *t, const char *prefix,
                                        const d3sr_transformer2d_shape *shape)
{
    char name[D3SR_NAME_BYTES];
    /* diffusers: inner_dim = heads * (channels // heads) */
    const int dim = shape->heads * (shape->channels / shape->heads);
    t->linear_projection = shape->linear_projection;
    snprintf(name, sizeof name, "%s.norm", prefix);
    D3SR_CHECK(d3sr_norm_register(params, &t->norm, name, shape->channels, shape->groups, GROUP_NORM_EPS));
    snprintf(name, sizeof name, "%s.proj_in", prefix);
    if (t->linear_projection)
        D3SR_CHECK(d3sr_linear_register(params, &t->proj_in_linear, name, shape->channels, dim, 1));
    else
        D3SR_CHECK(d3sr_conv_register(params, &t->proj_in_conv, name, shape->channels, dim, 1, 1, 0, 1));
    t->blocks = calloc((size_t)shape->depth, sizeof *t->blocks);
    if (!t->blocks) return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory building %s", prefix);
    t->n_blocks = shape->depth;
    for (int i = 0; i < shape->depth; i++) {
        snprintf(name, sizeof name, "%s.transformer_blocks.%d", prefix, i);
        D3SR_CHECK(block_register(params, &t->blocks[i], name, dim, shape));
    }
    snprintf(name, sizeof name, "%s.proj_out", prefix);
    if (t->linear_projection)
        return d3sr_linear_register(params, &t->proj_out_linear, name, dim, shape->channels, 1);
    return d3sr_conv_register(params, &t->proj_out_conv, name, dim, shape->channels, 1, 1, 0, 1);
}

void d3sr_transformer2d_free(d3sr_transformer2d *t)
{
    free(t->blocks);
    t->blocks = NULL;
}

d3sr_status d3sr_transformer2d_forward(d3sr_ctx *ctx, const d3sr_transformer2d *t, const d3sr_tensor *x,
                                       const d3sr_tensor *context, d3sr_tensor *out)
{
    d3sr_tensor normed, tokens, h, y;
    const int n = x->n, pixels = x->h * x->w;
    D3SR_CHECK(d3sr_group_norm(ctx, x, &t->norm, 0, &normed));                     // [n, h, w, c]
    if (t->linear_projection) {
        D3SR_CHECK(d3sr_reshape(&normed, n, 1, pixels, x->c, &tokens));            // [n, 1, hw, c]
        D3SR_CHECK(d3sr_linear_apply(ctx, &tokens, &t->proj_in_linear, NULL, &h)); // [n, 1, hw, dim]
    } else {
        D3SR_CHECK(d3sr_conv2d(ctx, &normed, &t->proj_in_conv, NULL, &y));         // [n, h, w, dim]
        D3SR_CHECK(d3sr_reshape(&y, n, 1, pixels, y.c, &h));                       // [n, 1, hw, dim]
    }
    for (int i = 0; i < t->n_blocks; i++) {
        D3SR_CHECK(block_forward(ctx, &t->blocks[i], &h, context, &y));
        h = y;
    }
    if (t->linear_projection) {
        d3sr_tensor residual;
        D3SR_CHECK(d3sr_reshape(x, n, 1, pixels, x->c, &residual));                // [n, 1, hw, c]
        D3SR_CHECK(d3sr_linear_apply(ctx, &h, &t->proj_out_linear, &residual, &y)); // proj_out + x
        return d3sr_reshape(&y, n, x->h, x->w, x->c, out);                         // [n, h, w, c]
    }
    D3SR_CHECK(d3sr_reshape(&h, n, x->h, x->w, h.c, &tokens));                     // [n, h, w, dim]
    D3SR_CHECK(d3sr_conv2d(ctx, &tokens, &t->proj_out_conv, x, out));              // proj_out + x
    return D3SR_OK;
}
