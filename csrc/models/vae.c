/* vae.c: diffusers' AutoencoderKL (the Stable Diffusion VAE) over ops.
 *
 * Encoder: conv_in, down_blocks (DownEncoderBlock2D: layers_per_block
 * resnets, then a stride-2 conv on the input padded (0, 1, 0, 1) except at
 * the last level), mid_block (resnet, attention, resnet), GroupNorm + SiLU,
 * conv_out to 2 * latent channels, quant_conv; the first latent channels are
 * the posterior mean. Decoder: post_quant_conv, conv_in, mid_block,
 * up_blocks (UpDecoderBlock2D: layers_per_block + 1 resnets, then nearest 2x
 * upsampling and a conv except at the last level), GroupNorm + SiLU,
 * conv_out. Every norm uses eps 1e-6, as diffusers builds them.
 */
#include <math.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blocks.h"
#include "model.h"
#include "tiles.h"

#define VAE_EPS 1e-6f

typedef struct {
    d3sr_resnet *resnets; /* owned */
    int n_resnets;
    d3sr_conv resample;   /* downsampler or upsampler conv */
    int has_resample;
} vae_level;

typedef struct {
    d3sr_resnet resnet0, resnet1;
    d3sr_spatial_attention attention;
    int has_attention;
} vae_mid_block;

typedef struct {
    d3sr_vae_config cfg;
    int parts;

    d3sr_conv enc_conv_in;
    vae_level enc_levels[D3SR_MAX_LEVELS];
    vae_mid_block enc_mid;
    d3sr_norm enc_norm_out;
    d3sr_conv enc_conv_out;
    d3sr_conv quant_conv;

    d3sr_conv post_quant_conv;
    d3sr_conv dec_conv_in;
    vae_mid_block dec_mid;
    vae_level dec_levels[D3SR_MAX_LEVELS]; /* in diffusers' up_blocks order */
    d3sr_norm dec_norm_out;
    d3sr_conv dec_conv_out;
} vae;

static void vae_free_impl(void *impl)
{
    vae *v = impl;
    for (int i = 0; i < D3SR_MAX_LEVELS; i++) {
        free(v->enc_levels[i].resnets);
        free(v->dec_levels[i].resnets);
    }
}

static d3sr_status check_config(const d3sr_vae_config *c)
{
    if (c->num_levels < 1 || c->num_levels > D3SR_MAX_LEVELS)
        return d3sr_fail(D3SR_ERR_VALUE, "block_out_channels must have 1 to %d entries, not %d", D3SR_MAX_LEVELS, c->num_levels);
    /* Sizes bounded by d3sr.h's limits, so nothing derived from them overflows. */
    if (c->in_channels < 1 || c->out_channels < 1 || c->latent_channels < 1 || c->in_channels > D3SR_MAX_CHANNELS ||
        c->out_channels > D3SR_MAX_CHANNELS || c->latent_channels > D3SR_MAX_CHANNELS)
        return d3sr_fail(D3SR_ERR_VALUE, "in_channels, out_channels and latent_channels must be in [1, %d]",
                         D3SR_MAX_CHANNELS);
    if (c->layers_per_block < 1 || c->layers_per_block > D3SR_MAX_LAYERS_PER_BLOCK)
        return d3sr_fail(D3SR_ERR_VALUE, "layers_per_block = %d is outside [1, %d]", c->layers_per_block,
                         D3SR_MAX_LAYERS_PER_BLOCK);
    if (c->norm_num_groups < 1 || c->norm_num_groups > D3SR_MAX_CHANNELS)
        return d3sr_fail(D3SR_ERR_VALUE, "norm_num_groups = %d is outside [1, %d]", c->norm_num_groups, D3SR_MAX_CHANNELS);
    for (int i = 0; i < c->num_levels; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] > D3SR_MAX_CHANNELS ||
            c->block_out_channels[i] % c->norm_num_groups != 0)
            return d3sr_fail(D3SR_ERR_VALUE, "block_out_channels[%d] = %d is not a multiple of norm_num_groups = %d "
                             "in [1, %d]", i, c->block_out_channels[i], c->norm_num_groups, D3SR_MAX_CHANNELS);
    return D3SR_OK;
}

static d3sr_status register_mid(d3sr_params *params, vae_mid_block *mid, const d3sr_vae_config *c,
                                const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    int ch = c->block_out_channels[c->num_levels - 1], g = c->norm_num_groups;
    D3SR_CHECK(d3sr_resnet_register(params, &mid->resnet0, ch, ch, 0, g, VAE_EPS, "%s.resnets.0", prefix));
    mid->has_attention = c->mid_block_add_attention;
    if (mid->has_attention) {
        D3SR_CHECK(d3sr_spatial_attention_register(params, &mid->attention, ch, 1, g, VAE_EPS, "%s.attentions.0",
                                                   prefix));
    }
    return d3sr_resnet_register(params, &mid->resnet1, ch, ch, 0, g, VAE_EPS, "%s.resnets.1", prefix);
}

static d3sr_status register_level(d3sr_params *params, vae_level *level, int n_resnets, int cin, int cout, int groups,
                                  const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    level->resnets = calloc((size_t)n_resnets, sizeof *level->resnets);
    if (!level->resnets) return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory building the VAE");
    level->n_resnets = n_resnets;
    for (int j = 0; j < n_resnets; j++) {
        D3SR_CHECK(d3sr_resnet_register(params, &level->resnets[j], j == 0 ? cin : cout, cout, 0, groups, VAE_EPS,
                                        "%s.resnets.%d", prefix, j));
    }
    return D3SR_OK;
}

static d3sr_status register_encoder(d3sr_params *p, vae *v)
{
    const d3sr_vae_config *c = &v->cfg;
    const int *boc = c->block_out_channels, g = c->norm_num_groups, last = c->num_levels - 1;
    D3SR_CHECK(d3sr_conv_register(p, &v->enc_conv_in, c->in_channels, boc[0], 3, 1, 1, 1, "encoder.conv_in"));
    for (int i = 0; i <= last; i++) {
        vae_level *level = &v->enc_levels[i];
        D3SR_CHECK(register_level(p, level, c->layers_per_block, i ? boc[i - 1] : boc[0], boc[i], g, "encoder.down_blocks.%d", i));
        level->has_resample = i < last;
        if (level->has_resample) {
            D3SR_CHECK(d3sr_conv_register(p, &level->resample, boc[i], boc[i], 3, 2, 0, 1,
                                          "encoder.down_blocks.%d.downsamplers.0.conv", i));
            level->resample.pad_bottom = level->resample.pad_right = 1; /* F.pad(x, (0, 1, 0, 1)) */
        }
    }
    D3SR_CHECK(register_mid(p, &v->enc_mid, c, "encoder.mid_block"));
    D3SR_CHECK(d3sr_norm_register(p, &v->enc_norm_out, boc[last], g, VAE_EPS, "encoder.conv_norm_out"));
    D3SR_CHECK(d3sr_conv_register(p, &v->enc_conv_out, boc[last], 2 * c->latent_channels, 3, 1, 1, 1,
                                  "encoder.conv_out"));
    if (c->use_quant_conv)
        D3SR_CHECK(d3sr_conv_register(p, &v->quant_conv, 2 * c->latent_channels, 2 * c->latent_channels, 1, 1, 0, 1,
                                      "quant_conv"));
    return D3SR_OK;
}

static d3sr_status register_decoder(d3sr_params *p, vae *v)
{
    const d3sr_vae_config *c = &v->cfg;
    const int *boc = c->block_out_channels, g = c->norm_num_groups, last = c->num_levels - 1;
    if (c->use_post_quant_conv)
        D3SR_CHECK(d3sr_conv_register(p, &v->post_quant_conv, c->latent_channels, c->latent_channels, 1, 1, 0, 1,
                                      "post_quant_conv"));
    D3SR_CHECK(d3sr_conv_register(p, &v->dec_conv_in, c->latent_channels, boc[last], 3, 1, 1, 1, "decoder.conv_in"));
    D3SR_CHECK(register_mid(p, &v->dec_mid, c, "decoder.mid_block"));
    int prev = boc[last];
    for (int i = 0; i <= last; i++) {
        int cout = boc[last - i];
        vae_level *level = &v->dec_levels[i];
        D3SR_CHECK(register_level(p, level, c->layers_per_block + 1, prev, cout, g, "decoder.up_blocks.%d", i));
        level->has_resample = i < last;
        if (level->has_resample) {
            D3SR_CHECK(d3sr_conv_register(p, &level->resample, cout, cout, 3, 1, 1, 1,
                                          "decoder.up_blocks.%d.upsamplers.0.conv", i));
        }
        prev = cout;
    }
    D3SR_CHECK(d3sr_norm_register(p, &v->dec_norm_out, boc[0], g, VAE_EPS, "decoder.conv_norm_out"));
    return d3sr_conv_register(p, &v->dec_conv_out, boc[0], c->out_channels, 3, 1, 1, 1, "decoder.conv_out");
}

d3sr_status d3sr_vae_create(const d3sr_vae_config *cfg, int parts, const char *device,
                            d3sr_dtype dtype, d3sr_model **out)
{
    *out = NULL;
    D3SR_CHECK(check_config(cfg));
    if (!(parts & (D3SR_VAE_ENCODER | D3SR_VAE_DECODER)) || (parts & ~(D3SR_VAE_ENCODER | D3SR_VAE_DECODER)))
        return d3sr_fail(D3SR_ERR_VALUE, "parts must name the encoder, the decoder or both");
    d3sr_model *m;
    D3SR_CHECK(d3sr_model_new(D3SR_MODEL_VAE, device, dtype, sizeof(vae), vae_free_impl, &m));
    vae *v = m->impl;
    v->cfg = *cfg;
    v->parts = parts;
    d3sr_status status = D3SR_OK;
    if (parts & D3SR_VAE_ENCODER) status = register_encoder(&m->params, v);
    if (status == D3SR_OK && (parts & D3SR_VAE_DECODER)) status = register_decoder(&m->params, v);
    if (status != D3SR_OK) {
        d3sr_model_free(m);
        return status;
    }
    *out = m;
    return D3SR_OK;
}

/* ---- forward ----------------------------------------------------------- */

/* Replaces *x by f(*x), releasing the old tensor. */
static d3sr_status run_resnets(d3sr_ctx *ctx, const d3sr_resnet *resnets, int count, d3sr_tensor *x)
{
    for (int j = 0; j < count; j++) {
        d3sr_tensor y;
        D3SR_CHECK(d3sr_resnet_forward(ctx, &resnets[j], x, NULL, &y));
        *x = y;
    }
    return D3SR_OK;
}

static d3sr_status run_conv(d3sr_ctx *ctx, const d3sr_conv *conv, d3sr_tensor *x)
{
    d3sr_tensor y;
    D3SR_CHECK(d3sr_conv2d(ctx, x, conv, NULL, &y));
    *x = y;
    return D3SR_OK;
}

static d3sr_status run_mid(d3sr_ctx *ctx, const vae_mid_block *mid, d3sr_tensor *x)
{
    D3SR_CHECK(run_resnets(ctx, &mid->resnet0, 1, x));
    if (mid->has_attention) {
        d3sr_tensor y;
        D3SR_CHECK(d3sr_spatial_attention_forward(ctx, &mid->attention, x, &y));
        *x = y;
    }
    return run_resnets(ctx, &mid->resnet1, 1, x);
}

static d3sr_status run_norm_silu(d3sr_ctx *ctx, const d3sr_norm *norm, d3sr_tensor *x)
{
    d3sr_tensor y;
    D3SR_CHECK(d3sr_group_norm(ctx, x, norm, 1, &y));
    *x = y;
    return D3SR_OK;
}

typedef struct {
    const vae *v;
    const float *input;
    int n, h, w;
    float *output;
} vae_call;

static d3sr_status encode_forward(d3sr_ctx *ctx, void *arg)
{
    const vae_call *call = arg;
    const vae *v = call->v;
    const d3sr_vae_config *c = &v->cfg;
    d3sr_tensor x;
    ctx->pooling.next = 0; /* GroupNorm layers count from 0 in each pass */
    D3SR_CHECK(d3sr_upload_nchw(ctx, call->input, call->n, c->in_channels, call->h, call->w, &x)); // [n, H, W, 3]
    D3SR_CHECK(run_conv(ctx, &v->enc_conv_in, &x));                                                // [n, H, W, boc0]
    D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "encoder.conv_in"));
    for (int i = 0; i < c->num_levels; i++) {
        const vae_level *level = &v->enc_levels[i];
        D3SR_CHECK(run_resnets(ctx, level->resnets, level->n_resnets, &x));                        // [n, H/2^i, W/2^i, boc_i]
        if (level->has_resample) D3SR_CHECK(run_conv(ctx, &level->resample, &x));                  // [n, H/2^(i+1), ..]
        D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "encoder.down_blocks.%d", i));
    }
    D3SR_CHECK(run_mid(ctx, &v->enc_mid, &x));                                                     // [n, h, w, boc_last]
    D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "encoder.mid_block"));
    D3SR_CHECK(run_norm_silu(ctx, &v->enc_norm_out, &x));
    D3SR_CHECK(run_conv(ctx, &v->enc_conv_out, &x));                                               // [n, h, w, 2 * latent]
    if (c->use_quant_conv) D3SR_CHECK(run_conv(ctx, &v->quant_conv, &x));                          // [n, h, w, 2 * latent]
    D3SR_CHECK(d3sr_download_nchw(ctx, &x, 0, c->latent_channels, call->output));                  // mean: [n, latent, h, w]
    return D3SR_OK;
}

static d3sr_status decode_forward(d3sr_ctx *ctx, void *arg)
{
    const vae_call *call = arg;
    const vae *v = call->v;
    const d3sr_vae_config *c = &v->cfg;
    d3sr_tensor x;
    ctx->pooling.next = 0; /* GroupNorm layers count from 0 in each pass */
    D3SR_CHECK(d3sr_upload_nchw(ctx, call->input, call->n, c->latent_channels, call->h, call->w, &x)); // [n, h, w, latent]
    if (c->use_post_quant_conv) D3SR_CHECK(run_conv(ctx, &v->post_quant_conv, &x));
    D3SR_CHECK(run_conv(ctx, &v->dec_conv_in, &x));                                                // [n, h, w, boc_last]
    D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "decoder.conv_in"));
    D3SR_CHECK(run_mid(ctx, &v->dec_mid, &x));
    D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "decoder.mid_block"));
    for (int i = 0; i < c->num_levels; i++) {
        const vae_level *level = &v->dec_levels[i];
        D3SR_CHECK(run_resnets(ctx, level->resnets, level->n_resnets, &x));                        // [n, h*2^i, w*2^i, boc_(last-i)]
        if (level->has_resample) {
            d3sr_tensor up;
            D3SR_CHECK(d3sr_upsample_nearest(ctx, &x, 2 * x.h, 2 * x.w, &up));                     // [n, 2h, 2w, c]
            x = up;
            D3SR_CHECK(run_conv(ctx, &level->resample, &x));
        }
        D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "decoder.up_blocks.%d", i));
    }
    D3SR_CHECK(run_norm_silu(ctx, &v->dec_norm_out, &x));
    D3SR_CHECK(run_conv(ctx, &v->dec_conv_out, &x));                                               // [n, H, W, out]
    D3SR_CHECK(d3sr_download_nchw(ctx, &x, 0, c->out_channels, call->output));                     // [n, out, H, W]
    return D3SR_OK;
}

/* GroupNorm layers one pass runs, in the order the forwards above call them. */
static int count_norm_layers(const vae *v, int encode)
{
    const d3sr_vae_config *c = &v->cfg;
    const int per_resnet = 2, mid = 2 * per_resnet + (c->mid_block_add_attention ? 1 : 0);
    const int resnets = c->num_levels * (encode ? c->layers_per_block : c->layers_per_block + 1);
    return resnets * per_resnet + mid + 1; /* + conv_norm_out */
}

static d3sr_status vae_run(d3sr_model *m, int part, const char *what, d3sr_status (*forward)(d3sr_ctx *, void *),
                           const float *input, int n, int channels, int h, int w, int multiple, float *output)
{
    vae *v = m->impl;
    D3SR_CHECK(d3sr_model_enter(m, D3SR_MODEL_VAE, what));
    d3sr_status status = D3SR_OK;
    if (!(v->parts & part))
        status = d3sr_fail(D3SR_ERR_VALUE, "%s: this VAE was loaded without its %s", what,
                           part == D3SR_VAE_ENCODER ? "encoder" : "decoder");
    else if (n < 1 || h < 1 || w < 1)
        status = d3sr_fail(D3SR_ERR_VALUE, "%s: the input [%d, %d, %d, %d] is empty", what, n, channels, h, w);
    else if (h % multiple || w % multiple)
        status = d3sr_fail(D3SR_ERR_VALUE, "%s: height and width must be multiples of %d, got %d x %d", what, multiple, h, w);
    else
        status = d3sr_check_finite(input, (size_t)n * channels * h * w, what);
    if (status == D3SR_OK) {
        vae_call call = {v, input, n, h, w, output};
        status = d3sr_ctx_run(&m->ctx, forward, &call);
    }
    if (status == D3SR_OK) {
        int64_t in_shape[4] = {n, channels, h, w}, out_shape[4];
        status = d3sr_vae_output_shape(m, part == D3SR_VAE_ENCODER, in_shape, out_shape);
        if (status == D3SR_OK)
            status = d3sr_check_output(output, (size_t)out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3],
                                       part == D3SR_VAE_ENCODER ? "the VAE encoder's output" : "the VAE decoder's output");
    }
    d3sr_model_leave(m);
    return status;
}

d3sr_status d3sr_vae_output_shape(const d3sr_model *m, int encode, const int64_t in[4], int64_t out[4])
{
    if (m->kind != D3SR_MODEL_VAE) return d3sr_fail(D3SR_ERR_TYPE, "vae_output_shape needs a VAE");
    const vae *v = m->impl;
    const d3sr_vae_config *c = &v->cfg;
    const int64_t factor = (int64_t)1 << (c->num_levels - 1);
    const char *arg = encode ? "x" : "z";
    int64_t channels = encode ? c->in_channels : c->latent_channels;
    if (!(v->parts & (encode ? D3SR_VAE_ENCODER : D3SR_VAE_DECODER)))
        return d3sr_fail(D3SR_ERR_VALUE, "this VAE was loaded without its %s", encode ? "encoder" : "decoder");
    if (in[1] != channels)
        return d3sr_fail(D3SR_ERR_VALUE, "%s must have shape [N, %lld, H, W], got [%lld, %lld, %lld, %lld]", arg,
                         (long long)channels, (long long)in[0], (long long)in[1], (long long)in[2], (long long)in[3]);
    if (in[0] < 1 || in[2] < 1 || in[3] < 1)
        return d3sr_fail(D3SR_ERR_VALUE, "%s is empty: shape [%lld, %lld, %lld, %lld]", arg, (long long)in[0],
                         (long long)in[1], (long long)in[2], (long long)in[3]);
    if (encode && (in[2] % factor || in[3] % factor))
        return d3sr_fail(D3SR_ERR_VALUE, "x's height and width must be multiples of %lld, got %lld x %lld",
                         (long long)factor, (long long)in[2], (long long)in[3]);
    int64_t oh = encode ? in[2] / factor : in[2] * factor, ow = encode ? in[3] / factor : in[3] * factor;
    if (in[0] > INT32_MAX || oh > INT32_MAX / 4 || ow > INT32_MAX / 4 || in[0] * oh * ow > ((int64_t)1 << 40))
        return d3sr_fail(D3SR_ERR_VALUE, "%s is too large: shape [%lld, %lld, %lld, %lld]", arg, (long long)in[0],
                         (long long)in[1], (long long)in[2], (long long)in[3]);
    out[0] = in[0];
    out[1] = encode ? c->latent_channels : c->out_channels;
    out[2] = oh;
    out[3] = ow;
    return D3SR_OK;
}

d3sr_status d3sr_vae_encode(d3sr_model *m, const float *x, int n, int h, int w, float *mean)
{
    if (m->kind != D3SR_MODEL_VAE) return d3sr_fail(D3SR_ERR_TYPE, "vae_encode needs a VAE");
    const vae *v = m->impl;
    int factor = 1 << (v->cfg.num_levels - 1);
    return vae_run(m, D3SR_VAE_ENCODER, "encode", encode_forward, x, n, v->cfg.in_channels, h, w, factor, mean);
}

d3sr_status d3sr_vae_decode(d3sr_model *m, const float *z, int n, int h, int w, float *image)
{
    if (m->kind != D3SR_MODEL_VAE) return d3sr_fail(D3SR_ERR_TYPE, "vae_decode needs a VAE");
    const vae *v = m->impl;
    return vae_run(m, D3SR_VAE_DECODER, "decode", decode_forward, z, n, v->cfg.latent_channels, h, w, 1, image);
}
/* ---- tiled calls ---------------------------------------------------------- */

typedef struct {
    const vae *v;
    int encode, n, channels, h, w;       /* the whole input */
    int out_channels, scale_num, scale_den; /* output size = input size * num / den */
    const float *input;                  /* borrowed: [n, channels, h, w] */
    float *output;                       /* borrowed: [n, out_channels, h * num / den, w * num / den] */
    const int (*tiles)[8];
    vae_call *calls;                     /* owned: [count]; input and output windows owned */
} tiled_vae;

static void copy_window(const float *src, int n, int c, int h, int w, int y0, int y1, int x0, int x1, float *dst)
{
    const int wh = y1 - y0, ww = x1 - x0;
    for (int i = 0; i < n * c; i++)
        for (int y = 0; y < wh; y++)
            memcpy(dst + ((size_t)i * wh + y) * ww, src + ((size_t)i * h + y0 + y) * w + x0, (size_t)ww * sizeof *dst);
}

/* Copies tile i's core out of its output window into the image and frees the window. */
static d3sr_status finish_tile(int i, void *user)
{
    tiled_vae *t = user;
    const int *tile = t->tiles[i];
    const int num = t->scale_num, den = t->scale_den;
    const int oh = t->h * num / den, ow = t->w * num / den;
    const int wy0 = tile[0] * num / den, wx0 = tile[2] * num / den, wh = (tile[1] - tile[0]) * num / den,
              ww = (tile[3] - tile[2]) * num / den;
    const int cy0 = tile[4] * num / den, cy1 = tile[5] * num / den, cx0 = tile[6] * num / den, cx1 = tile[7] * num / den;
    vae_call *call = &t->calls[i];
    for (int k = 0; k < t->n * t->out_channels; k++)
        for (int y = cy0; y < cy1; y++)
            memcpy(t->output + ((size_t)k * oh + y) * ow + cx0, call->output + ((size_t)k * wh + y - wy0) * ww + cx0 - wx0,
                   (size_t)(cx1 - cx0) * sizeof(float));
    free((void *)call->input);
    free(call->output);
    call->input = NULL;
    call->output = NULL;
    return D3SR_OK;
}

static d3sr_status check_tiles(const int (*tiles)[8], int count, int h, int w, int multiple)
{
    if (count < 1) return d3sr_fail(D3SR_ERR_VALUE, "tiles: none given");
    long long covered = 0;
    for (int i = 0; i < count; i++) {
        const int *t = tiles[i];
        if (t[1] - t[0] != tiles[0][1] - tiles[0][0] || t[3] - t[2] != tiles[0][3] - tiles[0][2])
            return d3sr_fail(D3SR_ERR_VALUE, "tiles: window %d is %d x %d, window 0 %d x %d; all must have one size", i,
                             t[1] - t[0], t[3] - t[2], tiles[0][1] - tiles[0][0], tiles[0][3] - tiles[0][2]);
        if (t[0] < 0 || t[1] > h || t[2] < 0 || t[3] > w || t[4] < t[0] || t[5] > t[1] || t[6] < t[2] || t[7] > t[3] ||
            t[4] >= t[5] || t[6] >= t[7])
            return d3sr_fail(D3SR_ERR_VALUE, "tiles: tile %d's window must lie in the %d x %d input and hold its core", i, h, w);
        for (int j = 0; j < 8; j++)
            if (t[j] % multiple)
                return d3sr_fail(D3SR_ERR_VALUE, "tiles: tile %d's bounds must be multiples of %d", i, multiple);
        for (int j = 0; j < i; j++) {
            const int *u = tiles[j];
            if (t[4] < u[5] && u[4] < t[5] && t[6] < u[7] && u[6] < t[7])
                return d3sr_fail(D3SR_ERR_VALUE, "tiles: the cores of tiles %d and %d overlap", j, i);
        }
        covered += (long long)(t[5] - t[4]) * (t[7] - t[6]);
    }
    if (covered != (long long)h * w) return d3sr_fail(D3SR_ERR_VALUE, "tiles: the cores do not cover the %d x %d input", h, w);
    return D3SR_OK;
}

d3sr_status d3sr_vae_norm_layers(const d3sr_model *m, int encode, int *layers, int *groups)
{
    if (m->kind != D3SR_MODEL_VAE) return d3sr_fail(D3SR_ERR_TYPE, "vae_norm_layers needs a VAE");
    const vae *v = m->impl;
    *layers = count_norm_layers(v, encode);
    *groups = v->cfg.norm_num_groups;
    return D3SR_OK;
}

d3sr_status d3sr_vae_run_tiled(d3sr_model *m, int encode, const float *x, int n, int h, int w, const int (*tiles)[8],
                               int count, d3sr_vae_tiling *how, float *out)
{
    how->parked_bytes = how->window_bytes = 0;
    if (m->kind != D3SR_MODEL_VAE) return d3sr_fail(D3SR_ERR_TYPE, "vae_run_tiled needs a VAE");
    vae *v = m->impl;
    const d3sr_vae_config *c = &v->cfg;
    const int part = encode ? D3SR_VAE_ENCODER : D3SR_VAE_DECODER, factor = 1 << (c->num_levels - 1);
    const char *what = encode ? "encode" : "decode";
    tiled_vae t = {v, encode, n, encode ? c->in_channels : c->latent_channels, h, w,
                   encode ? c->latent_channels : c->out_channels, encode ? 1 : factor, encode ? factor : 1,
                   x, out, tiles, NULL};
    D3SR_CHECK(d3sr_model_enter(m, D3SR_MODEL_VAE, what));
    d3sr_status status = D3SR_OK;
    if (!(v->parts & part))
        status = d3sr_fail(D3SR_ERR_VALUE, "%s: this VAE was loaded without its %s", what, encode ? "encoder" : "decoder");
    else if (n < 1 || h < 1 || w < 1)
        status = d3sr_fail(D3SR_ERR_VALUE, "%s: the input is empty", what);
    else
        status = check_tiles(tiles, count, h, w, encode ? factor : 1);
    if (status == D3SR_OK && !how->plan_only) status = d3sr_check_finite(x, (size_t)n * t.channels * h * w, what);
    const int layers = count_norm_layers(v, encode);
    const size_t entries = (size_t)n * layers * c->norm_num_groups;
    for (size_t i = 0; status == D3SR_OK && how->statistics && !how->plan_only && i < entries; i++) {
        const double mean = how->statistics[2 * i], var = how->statistics[2 * i + 1];
        if (!isfinite(mean) || !isfinite(var) || var < 0)
            status = d3sr_fail(D3SR_ERR_VALUE, "%s: statistics entry %zu is mean %g, variance %g; finite values and a "
                               "variance >= 0 are needed", what, i, mean, var);
    }
    if (status == D3SR_OK) {
        t.calls = calloc((size_t)count, sizeof *t.calls);
        if (!t.calls) status = d3sr_fail(D3SR_ERR_MEMORY, "%s: out of host memory", what);
    }
    void **args = status == D3SR_OK ? calloc((size_t)count, sizeof *args) : NULL;
    int (*cores)[4] = status == D3SR_OK ? calloc((size_t)count, sizeof *cores) : NULL;
    if (status == D3SR_OK && (!args || !cores)) status = d3sr_fail(D3SR_ERR_MEMORY, "%s: out of host memory", what);
    const int wh = tiles[0][1] - tiles[0][0], ww = tiles[0][3] - tiles[0][2];
    const size_t out_window = (size_t)n * t.out_channels * ((size_t)wh * t.scale_num / t.scale_den) *
                              ((size_t)ww * t.scale_num / t.scale_den);
    for (int i = 0; status == D3SR_OK && i < count; i++) {
        const int *tile = tiles[i];
        t.calls[i] = (vae_call){v, NULL, n, wh, ww, NULL};
        args[i] = &t.calls[i];
        if (!how->plan_only) { /* planning reads and writes neither */
            float *in = malloc((size_t)n * t.channels * wh * ww * sizeof *in);
            t.calls[i].input = in;
            t.calls[i].output = malloc(out_window * sizeof(float)); /* pages are touched only when the tile's output arrives */
            if (!in || !t.calls[i].output) {
                status = d3sr_fail(D3SR_ERR_MEMORY, "%s: out of host memory for tile windows", what);
                break;
            }
            copy_window(x, n, t.channels, h, w, tile[0], tile[1], tile[2], tile[3], in);
        }
        cores[i][0] = tile[4] - tile[0];
        cores[i][1] = tile[5] - tile[0];
        cores[i][2] = tile[6] - tile[2];
        cores[i][3] = tile[7] - tile[2];
    }
    if (status == D3SR_OK) {
        d3sr_tiles_job job = {encode ? encode_forward : decode_forward, args, (const int (*)[4])cores, count, n,
                              layers, c->norm_num_groups, wh, ww, how->park_half,
                              how->statistics, how->pooled, finish_tile, &t};
        if (how->plan_only) {
            d3sr_tiles_memory memory;
            status = d3sr_tiles_plan(&m->ctx, &job, &memory);
            how->parked_bytes = memory.parked_bytes;
            how->window_bytes = memory.window_bytes;
        } else {
            d3sr_tiles_report report = {0};
            status = d3sr_tiles_run(&m->ctx, &job, &report);
            how->parked_bytes = report.parked_peak_bytes;
        }
    }
    for (int i = 0; t.calls && i < count; i++) {
        free((void *)t.calls[i].input);
        free(t.calls[i].output);
    }
    free(t.calls);
    free(args);
    free(cores);
    d3sr_model_leave(m);
    return status;
}
