/* transformer.h: diffusers' Transformer2DModel as the UNets use it, with
 * BasicTransformerBlock (LayerNorm, self-attention, LayerNorm,
 * cross-attention on the text context, LayerNorm, GEGLU feed-forward; each
 * added to its input). Weight names follow diffusers' modules.
 */
#ifndef D3SR_MODELS_TRANSFORMER_H
#define D3SR_MODELS_TRANSFORMER_H

#include "../ops/ops.h"

/* diffusers Attention as the UNets build it: to_q, to_k, to_v without bias,
 * to_out.0 with one. */
typedef struct {
    d3sr_linear to_q, to_k, to_v, to_out;
    int heads;
} d3sr_attention_layer;

typedef struct {
    d3sr_norm norm1, norm2, norm3;
    d3sr_attention_layer attn1, attn2;
    d3sr_linear ff_in;  /* ff.net.0.proj: dim -> 2 * 4 dim (GEGLU's value and gate) */
    d3sr_linear ff_out; /* ff.net.2: 4 dim -> dim */
} d3sr_transformer_block;

typedef struct {
    d3sr_norm norm; /* GroupNorm, eps 1e-6 */
    d3sr_linear proj_in_linear, proj_out_linear; /* use_linear_projection (SD 2, SDXL) */
    d3sr_conv proj_in_conv, proj_out_conv;       /* 1x1 convolutions (SD 1.x) */
    int linear_projection;
    d3sr_transformer_block *blocks; /* owned */
    int n_blocks;
} d3sr_transformer2d;

typedef struct {
    int channels, heads, depth;
    int cross_attention_dim, groups;
    int linear_projection;
} d3sr_transformer2d_shape;

d3sr_status d3sr_transformer2d_register(d3sr_params *params, d3sr_transformer2d *t,
                                        const d3sr_transformer2d_shape *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void d3sr_transformer2d_free(d3sr_transformer2d *t);

/* x [n, h, w, c], context [n, 1, L, cross_attention_dim] -> out [n, h, w, c]. */
d3sr_status d3sr_transformer2d_forward(d3sr_ctx *ctx, const d3sr_transformer2d *t, const d3sr_tensor *x,
                                       const d3sr_tensor *context, d3sr_tensor *out);

#endif /* D3SR_MODELS_TRANSFORMER_H */
