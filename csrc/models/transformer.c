/* transformer.c: Transformer2DModel and BasicTransformerBlock over ops. */
#include "transformer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "../core/status.h"

#define LAYER_NORM_EPS 1e-5f
#define GROUP_NORM_EPS 1e-6f

static d3sr_status attention_register(d3sr_params *params, d3sr_attention_layer *a, int dim, int kv_dim, int heads,
                                      const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    const int qkv_bias = 0;
    a->heads = heads;
    D3SR_CHECK(d3sr_linear_register(params, &a->to_q, dim, dim, qkv_bias, "%s.to_q", prefix));
    D3SR_CHECK(d3sr_linear_register(params, &a->to_k, kv_dim, dim, qkv_bias, "%s.to_k", prefix));
    D3SR_CHECK(d3sr_linear_register(params, &a->to_v, kv_dim, dim, qkv_bias, "%s.to_v", prefix));
    return d3sr_linear_register(params, &a->to_out, dim, dim, 1, "%s.to_out.0", prefix);
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

static d3sr_status block_register(d3sr_params *params, d3sr_transformer_block *b, int dim,
                                  const d3sr_transformer2d_shape *shape, const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    D3SR_CHECK(d3sr_norm_register(params, &b->norm1, dim, 1, LAYER_NORM_EPS, "%s.norm1", prefix));
    D3SR_CHECK(attention_register(params, &b->attn1, dim, dim, shape->heads, "%s.attn1", prefix));
    D3SR_CHECK(d3sr_norm_register(params, &b->norm2, dim, 1, LAYER_NORM_EPS, "%s.norm2", prefix));
    D3SR_CHECK(attention_register(params, &b->attn2, dim, shape->cross_attention_dim, shape->heads, "%s.attn2",
                                  prefix));
    D3SR_CHECK(d3sr_norm_register(params, &b->norm3, dim, 1, LAYER_NORM_EPS, "%s.norm3", prefix));
    D3SR_CHECK(d3sr_linear_register(params, &b->ff_in, dim, 2 * 4 * dim, 1, "%s.ff.net.0.proj", prefix));
    return d3sr_linear_register(params, &b->ff_out, 4 * dim, dim, 1, "%s.ff.net.2", prefix); /* ff.net.1 is dropout */
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

d3sr_status d3sr_transformer2d_register(d3sr_params *params, d3sr_transformer2d *t,
                                        const d3sr_transformer2d_shape *shape, const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    /* diffusers: inner_dim = heads * (channels // heads) */
    const int dim = shape->heads * (shape->channels / shape->heads);
    t->linear_projection = shape->linear_projection;
    D3SR_CHECK(d3sr_norm_register(params, &t->norm, shape->channels, shape->groups, GROUP_NORM_EPS, "%s.norm", prefix));
    if (t->linear_projection)
        D3SR_CHECK(d3sr_linear_register(params, &t->proj_in_linear, shape->channels, dim, 1, "%s.proj_in", prefix));
    else
        D3SR_CHECK(d3sr_conv_register(params, &t->proj_in_conv, shape->channels, dim, 1, 1, 0, 1, "%s.proj_in",
                                      prefix));
    t->blocks = calloc((size_t)shape->depth, sizeof *t->blocks);
    if (!t->blocks) return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory building %s", prefix);
    t->n_blocks = shape->depth;
    for (int i = 0; i < shape->depth; i++) {
        D3SR_CHECK(block_register(params, &t->blocks[i], dim, shape, "%s.transformer_blocks.%d", prefix, i));
    }
    if (t->linear_projection)
        return d3sr_linear_register(params, &t->proj_out_linear, dim, shape->channels, 1, "%s.proj_out", prefix);
    return d3sr_conv_register(params, &t->proj_out_conv, dim, shape->channels, 1, 1, 0, 1, "%s.proj_out", prefix);
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
