/* blocks.h: building blocks shared by the VAE and the UNets, named and
 * numbered like diffusers' modules so their weights load by state_dict name.
 */
#ifndef D3SR_MODELS_BLOCKS_H
#define D3SR_MODELS_BLOCKS_H

#include "../ops/ops.h"

/* diffusers ResnetBlock2D with the "default" time-embedding mode:
 * out = x' + conv2(silu(norm2(conv1(silu(norm1(x))) + time_emb_proj(silu(temb))))),
 * x' = conv_shortcut(x) when the channel count changes, else x. The VAE's
 * blocks have no time embedding (temb_channels = 0). */
typedef struct {
    d3sr_norm norm1, norm2;
    d3sr_conv conv1, conv2;
    d3sr_conv conv_shortcut;
    d3sr_linear time_emb_proj;
    int has_shortcut, has_time;
} d3sr_resnet;

d3sr_status d3sr_resnet_register(d3sr_params *params, d3sr_resnet *block, int cin, int cout, int temb_channels,
                                 int groups, float eps, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

/* temb_silu: silu(temb) [n, 1, 1, temb_channels], or NULL without a time embedding. */
d3sr_status d3sr_resnet_forward(d3sr_ctx *ctx, const d3sr_resnet *block, const d3sr_tensor *x,
                                const d3sr_tensor *temb_silu, d3sr_tensor *out);

/* diffusers Attention as the VAE mid block uses it: GroupNorm, one head over
 * all pixels, to_out, plus the input (residual_connection=True). */
typedef struct {
    d3sr_norm group_norm;
    d3sr_linear to_q, to_k, to_v, to_out;
    int heads;
} d3sr_spatial_attention;

d3sr_status d3sr_spatial_attention_register(d3sr_params *params, d3sr_spatial_attention *block,
                                            int channels, int heads, int groups, float eps, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
d3sr_status d3sr_spatial_attention_forward(d3sr_ctx *ctx, const d3sr_spatial_attention *block,
                                           const d3sr_tensor *x, d3sr_tensor *out);

#endif /* D3SR_MODELS_BLOCKS_H */
