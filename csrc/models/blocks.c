/* blocks.c: ResnetBlock2D and the VAE's spatial self-attention over ops. */
#include "blocks.h"

#include <stdarg.h>
#include <stdio.h>

#include "../core/status.h"

d3sr_status d3sr_resnet_register(d3sr_params *params, d3sr_resnet *block, int cin, int cout, int temb_channels,
                                 int groups, float eps, const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    D3SR_CHECK(d3sr_norm_register(params, &block->norm1, cin, groups, eps, "%s.norm1", prefix));
    D3SR_CHECK(d3sr_conv_register(params, &block->conv1, cin, cout, 3, 1, 1, 1, "%s.conv1", prefix));
    block->has_time = temb_channels > 0;
    if (block->has_time) {
        D3SR_CHECK(d3sr_linear_register(params, &block->time_emb_proj, temb_channels, cout, 1, "%s.time_emb_proj",
                                        prefix));
    }
    D3SR_CHECK(d3sr_norm_register(params, &block->norm2, cout, groups, eps, "%s.norm2", prefix));
    D3SR_CHECK(d3sr_conv_register(params, &block->conv2, cout, cout, 3, 1, 1, 1, "%s.conv2", prefix));
    block->has_shortcut = cin != cout;
    if (block->has_shortcut) {
        D3SR_CHECK(d3sr_conv_register(params, &block->conv_shortcut, cin, cout, 1, 1, 0, 1, "%s.conv_shortcut",
                                      prefix));
    }
    return D3SR_OK;
}

d3sr_status d3sr_resnet_forward(d3sr_ctx *ctx, const d3sr_resnet *block, const d3sr_tensor *x,
                                const d3sr_tensor *temb_silu, d3sr_tensor *out)
{
    d3sr_tensor h, h1, skip;
    D3SR_CHECK(d3sr_group_norm(ctx, x, &block->norm1, 1, &h));              // [n, h, w, cin]
    D3SR_CHECK(d3sr_conv2d(ctx, &h, &block->conv1, NULL, &h1));             // [n, h, w, cout]
    if (block->has_time) {
        if (!temb_silu) return d3sr_fail(D3SR_ERR_VALUE, "internal error: a time-conditioned ResNet got no embedding");
        d3sr_tensor offset;
        D3SR_CHECK(d3sr_linear_apply(ctx, temb_silu, &block->time_emb_proj, NULL, &offset)); // [n, 1, 1, cout]
        D3SR_CHECK(d3sr_add_channel_offset(ctx, &h1, &offset));
    }
    D3SR_CHECK(d3sr_group_norm(ctx, &h1, &block->norm2, 1, &h));            // [n, h, w, cout]
    if (block->has_shortcut) {
        D3SR_CHECK(d3sr_conv2d(ctx, x, &block->conv_shortcut, NULL, &skip)); // [n, h, w, cout]
        D3SR_CHECK(d3sr_conv2d(ctx, &h, &block->conv2, &skip, out));         // [n, h, w, cout]
    } else {
        D3SR_CHECK(d3sr_conv2d(ctx, &h, &block->conv2, x, out));             // [n, h, w, cout]
    }
    return D3SR_OK;
}

d3sr_status d3sr_spatial_attention_register(d3sr_params *params, d3sr_spatial_attention *block,
                                            int channels, int heads, int groups, float eps, const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    block->heads = heads;
    D3SR_CHECK(d3sr_norm_register(params, &block->group_norm, channels, groups, eps, "%s.group_norm", prefix));
    D3SR_CHECK(d3sr_linear_register(params, &block->to_q, channels, channels, 1, "%s.to_q", prefix));
    D3SR_CHECK(d3sr_linear_register(params, &block->to_k, channels, channels, 1, "%s.to_k", prefix));
    D3SR_CHECK(d3sr_linear_register(params, &block->to_v, channels, channels, 1, "%s.to_v", prefix));
    D3SR_CHECK(d3sr_linear_register(params, &block->to_out, channels, channels, 1, "%s.to_out.0", prefix));
    return D3SR_OK;
}

d3sr_status d3sr_spatial_attention_forward(d3sr_ctx *ctx, const d3sr_spatial_attention *block,
                                           const d3sr_tensor *x, d3sr_tensor *out)
{
    d3sr_tensor normed, tokens, residual, q, k, v, a, y;
    D3SR_CHECK(d3sr_group_norm(ctx, x, &block->group_norm, 0, &normed));       // [n, h, w, c]
    D3SR_CHECK(d3sr_reshape(&normed, x->n, 1, x->h * x->w, x->c, &tokens));   // [n, 1, hw, c]
    D3SR_CHECK(d3sr_linear_apply(ctx, &tokens, &block->to_q, NULL, &q));      // [n, 1, hw, c]
    D3SR_CHECK(d3sr_linear_apply(ctx, &tokens, &block->to_k, NULL, &k));      // [n, 1, hw, c]
    D3SR_CHECK(d3sr_linear_apply(ctx, &tokens, &block->to_v, NULL, &v));      // [n, 1, hw, c]
    D3SR_CHECK(d3sr_attention(ctx, &q, &k, &v, block->heads, &a));            // [n, 1, hw, c]
    D3SR_CHECK(d3sr_reshape(x, x->n, 1, x->h * x->w, x->c, &residual));       // [n, 1, hw, c]
    D3SR_CHECK(d3sr_linear_apply(ctx, &a, &block->to_out, &residual, &y));    // [n, 1, hw, c]
    return d3sr_reshape(&y, x->n, x->h, x->w, x->c, out);                     // [n, h, w, c]
}
