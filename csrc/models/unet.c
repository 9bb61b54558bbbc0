/* unet.c: diffusers' UNet2DConditionModel (SD 1.x, SD 2.x, SDXL) over ops.
 *
 * time_proj (sinusoidal, on the host) -> time_embedding (linear, SiLU,
 * linear), plus for SDXL add_embedding of [text_embeds | sinusoids of the
 * time_ids]; conv_in; down_blocks (ResNets with the time embedding, each
 * followed by a Transformer2DModel in cross-attention levels, then a stride-2
 * conv except at the last level), every output kept for the skips; the mid
 * block (ResNet, transformer, ResNet); up_blocks (one ResNet more per level,
 * each on [h | skip], transformers likewise, then nearest upsampling to the
 * next skip's size and a conv); GroupNorm, SiLU, conv_out. A trunk stops
 * after the mid block and never builds the rest.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blocks.h"
#include "model.h"
#include "transformer.h"

/* conv_in, every ResNet of every down level, every downsampler: check_config
 * bounds the count. */
#define MAX_SKIPS (1 + D3SR_MAX_LEVELS * (D3SR_MAX_LAYERS_PER_BLOCK + 1))

typedef struct {
    d3sr_resnet *resnets;            /* owned */
    d3sr_transformer2d *attentions;  /* owned; NULL in plain levels */
    int n_resnets;
    d3sr_conv resample;              /* downsampler or upsampler conv */
    int has_resample;
} unet_level;

typedef struct {
    d3sr_unet_config cfg;
    int trunk_only;
    d3sr_linear time_linear_1, time_linear_2;
    d3sr_linear add_linear_1, add_linear_2;
    d3sr_conv conv_in;
    unet_level down[D3SR_MAX_LEVELS];
    d3sr_resnet mid_resnet0, mid_resnet1;
    d3sr_transformer2d mid_attention;
    unet_level up[D3SR_MAX_LEVELS];
    d3sr_norm norm_out;
    d3sr_conv conv_out;
    float *host_embedding; /* owned: the sinusoids of a call, grown on demand */
    size_t host_embedding_floats;
} unet;

static void free_level(unet_level *level)
{
    if (level->attentions)
        for (int j = 0; j < level->n_resnets; j++) d3sr_transformer2d_free(&level->attentions[j]);
    free(level->attentions);
    free(level->resnets);
}

static void unet_free_impl(void *impl)
{
    unet *u = impl;
    for (int i = 0; i < D3SR_MAX_LEVELS; i++) {
        free_level(&u->down[i]);
        free_level(&u->up[i]);
    }
    d3sr_transformer2d_free(&u->mid_attention);
    free(u->host_embedding);
}

/* width in [1, D3SR_MAX_CHANNELS], or a failure naming field. */
static d3sr_status check_width(int width, const char *field)
{
    if (width < 1 || width > D3SR_MAX_CHANNELS)
        return d3sr_fail(D3SR_ERR_VALUE, "%s = %d is outside [1, %d]", field, width, D3SR_MAX_CHANNELS);
    return D3SR_OK;
}

/* Every value checked here, sizes bounded by d3sr.h's limits, so nothing the
 * model computes from them can overflow and no layer count is unbounded. */
static d3sr_status check_config(const d3sr_unet_config *c)
{
    if (c->num_levels < 1 || c->num_levels > D3SR_MAX_LEVELS)
        return d3sr_fail(D3SR_ERR_VALUE, "block_out_channels must have 1 to %d entries, not %d", D3SR_MAX_LEVELS, c->num_levels);
    D3SR_CHECK(check_width(c->in_channels, "in_channels"));
    D3SR_CHECK(check_width(c->out_channels, "out_channels"));
    D3SR_CHECK(check_width(c->cross_attention_dim, "cross_attention_dim"));
    D3SR_CHECK(check_width(c->time_embed_dim, "time_embedding_dim"));
    D3SR_CHECK(check_width(c->norm_num_groups, "norm_num_groups"));
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps))
        return d3sr_fail(D3SR_ERR_VALUE, "norm_eps = %g must be a positive finite number", (double)c->norm_eps);
    if (c->block_out_channels[0] % 2)
        return d3sr_fail(D3SR_ERR_VALUE, "block_out_channels[0] = %d must be even (the sinusoidal embedding's width)",
                         c->block_out_channels[0]);
    for (int i = 0; i < c->num_levels; i++) {
        int ch = c->block_out_channels[i];
        if (ch < 1 || ch > D3SR_MAX_CHANNELS || ch % c->norm_num_groups)
            return d3sr_fail(D3SR_ERR_VALUE, "block_out_channels[%d] = %d is not a multiple of norm_num_groups = %d "
                             "in [1, %d]", i, ch, c->norm_num_groups, D3SR_MAX_CHANNELS);
        if (c->layers_per_block[i] < 1 || c->layers_per_block[i] > D3SR_MAX_LAYERS_PER_BLOCK)
            return d3sr_fail(D3SR_ERR_VALUE, "layers_per_block[%d] = %d is outside [1, %d]", i, c->layers_per_block[i],
                             D3SR_MAX_LAYERS_PER_BLOCK);
        if (c->attention_heads[i] < 1 || ch % c->attention_heads[i])
            return d3sr_fail(D3SR_ERR_VALUE, "attention_head_dim[%d] = %d heads do not divide %d channels", i,
                             c->attention_heads[i], ch);
        if (c->transformer_layers[i] < 1 || c->transformer_layers[i] > D3SR_MAX_TRANSFORMER_LAYERS ||
            c->up_transformer_layers[i] < 1 || c->up_transformer_layers[i] > D3SR_MAX_TRANSFORMER_LAYERS)
            return d3sr_fail(D3SR_ERR_VALUE, "transformer_layers_per_block[%d] is outside [1, %d]", i,
                             D3SR_MAX_TRANSFORMER_LAYERS);
    }
    /* diffusers' Downsample2D pads by 0 or 1; more only grows every level's map. */
    if (c->downsample_padding < 0 || c->downsample_padding > 1)
        return d3sr_fail(D3SR_ERR_VALUE, "downsample_padding = %d is not supported (0 or 1)", c->downsample_padding);
    if (c->text_time) {
        if (c->addition_time_embed_dim < 2 || c->addition_time_embed_dim % 2 || c->addition_input_dim < 1)
            return d3sr_fail(D3SR_ERR_VALUE,
                             "text_time needs an even addition_time_embed_dim and projection_class_embeddings_input_dim");
        D3SR_CHECK(check_width(c->addition_time_embed_dim, "addition_time_embed_dim"));
        D3SR_CHECK(check_width(c->addition_input_dim, "projection_class_embeddings_input_dim"));
    }
    /* The sinusoids divide by half - freq_shift: it must stay positive and finite. */
    int half = c->block_out_channels[0] / 2;
    if (c->text_time && c->addition_time_embed_dim / 2 < half) half = c->addition_time_embed_dim / 2;
    if (!isfinite(c->freq_shift) || c->freq_shift < 0 || c->freq_shift >= (float)half)
        return d3sr_fail(D3SR_ERR_VALUE, "freq_shift = %g must be in [0, %d) (half the sinusoidal embedding's width)",
                         (double)c->freq_shift, half);
    return D3SR_OK;
}

/* A level's ResNets (and transformers when cross is set) and its resample conv. */
static d3sr_status register_level(d3sr_params *p, const d3sr_unet_config *c, unet_level *level, int n_resnets,
                                  const int *resnet_in, int cout, int cross, int heads, int depth,
                                  const char *fmt, ...)
{
    char prefix[D3SR_NAME_BYTES];
    D3SR_FORMAT_NAME(prefix, fmt);
    level->resnets = calloc((size_t)n_resnets, sizeof *level->resnets);
    level->attentions = cross ? calloc((size_t)n_resnets, sizeof *level->attentions) : NULL;
    if (!level->resnets || (cross && !level->attentions))
        return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory building the UNet");
    level->n_resnets = n_resnets;
    d3sr_transformer2d_shape shape = {cout, heads, depth, c->cross_attention_dim, c->norm_num_groups,
                                      c->use_linear_projection};
    for (int j = 0; j < n_resnets; j++) {
        D3SR_CHECK(d3sr_resnet_register(p, &level->resnets[j], resnet_in[j], cout, c->time_embed_dim, c->norm_num_groups,
                                        c->norm_eps, "%s.resnets.%d", prefix, j));
        if (cross) {
            D3SR_CHECK(d3sr_transformer2d_register(p, &level->attentions[j], &shape, "%s.attentions.%d", prefix, j));
        }
    }
    return D3SR_OK;
}

static d3sr_status register_unet(d3sr_params *p, unet *u)
{
    const d3sr_unet_config *c = &u->cfg;
    const int *boc = c->block_out_channels, last = c->num_levels - 1;
    int resnet_in[D3SR_MAX_LAYERS_PER_BLOCK + 1];

    D3SR_CHECK(d3sr_linear_register(p, &u->time_linear_1, boc[0], c->time_embed_dim, 1, "time_embedding.linear_1"));
    D3SR_CHECK(d3sr_linear_register(p, &u->time_linear_2, c->time_embed_dim, c->time_embed_dim, 1,
                                    "time_embedding.linear_2"));
    if (c->text_time) {
        D3SR_CHECK(d3sr_linear_register(p, &u->add_linear_1, c->addition_input_dim, c->time_embed_dim, 1,
                                        "add_embedding.linear_1"));
        D3SR_CHECK(d3sr_linear_register(p, &u->add_linear_2, c->time_embed_dim, c->time_embed_dim, 1,
                                        "add_embedding.linear_2"));
    }
    D3SR_CHECK(d3sr_conv_register(p, &u->conv_in, c->in_channels, boc[0], 3, 1, 1, 1, "conv_in"));

    for (int i = 0; i <= last; i++) {
        unet_level *level = &u->down[i];
        int n = c->layers_per_block[i]; /* at most D3SR_MAX_LAYERS_PER_BLOCK (check_config) */
        for (int j = 0; j < n; j++) resnet_in[j] = j == 0 ? (i ? boc[i - 1] : boc[0]) : boc[i];
        D3SR_CHECK(register_level(p, c, level, n, resnet_in, boc[i], c->down_cross_attention[i], c->attention_heads[i], c->transformer_layers[i], "down_blocks.%d", i));
        level->has_resample = i < last;
        if (level->has_resample) {
            D3SR_CHECK(d3sr_conv_register(p, &level->resample, boc[i], boc[i], 3, 2, c->downsample_padding, 1,
                                          "down_blocks.%d.downsamplers.0.conv", i));
        }
    }

    d3sr_transformer2d_shape mid = {boc[last], c->attention_heads[last], c->transformer_layers[last],
                                    c->cross_attention_dim, c->norm_num_groups, c->use_linear_projection};
    D3SR_CHECK(d3sr_resnet_register(p, &u->mid_resnet0, boc[last], boc[last], c->time_embed_dim, c->norm_num_groups,
                                    c->norm_eps, "mid_block.resnets.0"));
    D3SR_CHECK(d3sr_transformer2d_register(p, &u->mid_attention, &mid, "mid_block.attentions.0"));
    D3SR_CHECK(d3sr_resnet_register(p, &u->mid_resnet1, boc[last], boc[last], c->time_embed_dim, c->norm_num_groups,
                                    c->norm_eps, "mid_block.resnets.1"));
    if (u->trunk_only) return D3SR_OK;

    /* Up level i mirrors down level last - i; its ResNets take [h | skip]. */
    int prev = boc[last];
    for (int i = 0; i <= last; i++) {
        int down = last - i, cout = boc[down], skip_in = boc[down > 0 ? down - 1 : 0];
        int n = c->layers_per_block[down] + 1;
        for (int j = 0; j < n; j++) resnet_in[j] = (j == 0 ? prev : cout) + (j == n - 1 ? skip_in : cout);
        D3SR_CHECK(register_level(p, c, &u->up[i], n, resnet_in, cout, c->up_cross_attention[i], c->attention_heads[down], c->up_transformer_layers[i], "up_blocks.%d", i));
        u->up[i].has_resample = i < last;
        if (u->up[i].has_resample) {
            D3SR_CHECK(d3sr_conv_register(p, &u->up[i].resample, cout, cout, 3, 1, 1, 1,
                                          "up_blocks.%d.upsamplers.0.conv", i));
        }
        prev = cout;
    }
    D3SR_CHECK(d3sr_norm_register(p, &u->norm_out, boc[0], c->norm_num_groups, c->norm_eps, "conv_norm_out"));
    return d3sr_conv_register(p, &u->conv_out, boc[0], c->out_channels, 3, 1, 1, 1, "conv_out");
}

d3sr_status d3sr_unet_create(const d3sr_unet_config *cfg, int trunk_only, const char *device, d3sr_dtype dtype,
                             d3sr_model **out)
{
    *out = NULL;
    D3SR_CHECK(check_config(cfg));
    d3sr_model *m;
    D3SR_CHECK(d3sr_model_new(D3SR_MODEL_UNET, device, dtype, sizeof(unet), unet_free_impl, &m));
    unet *u = m->impl;
    u->cfg = *cfg;
    u->trunk_only = trunk_only != 0;
    d3sr_status status = register_unet(&m->params, u);
    if (status != D3SR_OK) {
        d3sr_model_free(m);
        return status;
    }
    *out = m;
    return D3SR_OK;
}

/* ---- forward ----------------------------------------------------------- */

/* diffusers' get_timestep_embedding, in float32 as PyTorch computes it:
 * freq_j = exp(-ln(10000) * j / (half - shift)), then [sin(t f) | cos(t f)],
 * halves swapped when flip_sin_to_cos. Writes count rows of dim values. */
static void timestep_embedding(const float *t, int count, int dim, int flip, float shift, float *out)
{
    const int half = dim / 2;
    const float neg_log_period = (float)-log(10000.0);
    for (int i = 0; i < count; i++) {
        float *row = out + (size_t)i * dim;
        for (int j = 0; j < half; j++) {
            float exponent = neg_log_period * (float)j / ((float)half - shift);
            float arg = t[i] * (float)exp((double)exponent);
            float s = (float)sin((double)arg), c = (float)cos((double)arg);
            row[flip ? half + j : j] = s;
            row[flip ? j : half + j] = c;
        }
    }
}

typedef struct {
    const unet *u;
    const float *sample, *timesteps, *context, *text_embeds, *time_ids;
    int n, h, w, context_len, text_dim, n_time_ids;
    float *host_embedding; /* borrowed scratch: the sinusoids of the step and the time_ids */
    float *out;
} unet_call;

/* silu(emb): the time (and text_time) embedding every ResNet projects. */
static d3sr_status embed_time(d3sr_ctx *ctx, const unet_call *call, d3sr_tensor *temb_silu)
{
    const unet *u = call->u;
    const d3sr_unet_config *c = &u->cfg;
    const int n = call->n, dim0 = c->block_out_channels[0];
    d3sr_tensor t, h, emb;
    timestep_embedding(call->timesteps, n, dim0, c->flip_sin_to_cos, c->freq_shift, call->host_embedding);
    D3SR_CHECK(d3sr_upload(ctx, call->host_embedding, n, 1, 1, dim0, &t));            // [n, 1, 1, c0]
    D3SR_CHECK(d3sr_linear_apply(ctx, &t, &u->time_linear_1, NULL, &h));             // [n, 1, 1, ted]
    D3SR_CHECK(d3sr_activation(ctx, &h, D3SR_ACT_SILU, 0.0f, &t));
    D3SR_CHECK(d3sr_linear_apply(ctx, &t, &u->time_linear_2, NULL, &emb));           // [n, 1, 1, ted]
    if (c->text_time) {
        /* [text_embeds | sinusoids of each time_id], as diffusers' get_aug_embed. */
        float *aug = call->host_embedding + (size_t)n * dim0;
        const int width = call->text_dim + call->n_time_ids * c->addition_time_embed_dim;
        for (int i = 0; i < n; i++) {
            float *row = aug + (size_t)i * width;
            memcpy(row, call->text_embeds + (size_t)i * call->text_dim, (size_t)call->text_dim * sizeof *row);
            timestep_embedding(call->time_ids + (size_t)i * call->n_time_ids, call->n_time_ids,
                               c->addition_time_embed_dim, c->flip_sin_to_cos, c->freq_shift, row + call->text_dim);
        }
        d3sr_tensor a;
        D3SR_CHECK(d3sr_upload(ctx, aug, n, 1, 1, width, &t));                        // [n, 1, 1, 2816]
        D3SR_CHECK(d3sr_linear_apply(ctx, &t, &u->add_linear_1, NULL, &h));
        D3SR_CHECK(d3sr_activation(ctx, &h, D3SR_ACT_SILU, 0.0f, &t));
        D3SR_CHECK(d3sr_linear_apply(ctx, &t, &u->add_linear_2, NULL, &a));           // [n, 1, 1, ted]
        D3SR_CHECK(d3sr_add_inplace(ctx, &emb, &a));
    }
    D3SR_CHECK(d3sr_activation(ctx, &emb, D3SR_ACT_SILU, 0.0f, temb_silu));
    return D3SR_OK;
}

/* x <- resnet(x) then transformer(x) for ResNet j of a level (x released). */
/* Layer j of a level: its ResNet, then its transformer if the level has them. */
static d3sr_status run_layer(d3sr_ctx *ctx, const unet_level *level, int j, d3sr_tensor *x,
                             const d3sr_tensor *temb, const d3sr_tensor *context)
{
    d3sr_tensor y;
    D3SR_CHECK(d3sr_resnet_forward(ctx, &level->resnets[j], x, temb, &y));
    *x = y;
    if (level->attentions) {
        D3SR_CHECK(d3sr_transformer2d_forward(ctx, &level->attentions[j], x, context, &y));
        *x = y;
    }
    return D3SR_OK;
}

/* Skips are kept as tensors; the arena frees each after the concat that reads it
 * (the trunk reads none, so its skips are freed as soon as they are made). */
static d3sr_status push_skip(d3sr_tensor *skips, int *n_skips, const d3sr_tensor *x)
{
    if (*n_skips == MAX_SKIPS) return d3sr_fail(D3SR_ERR_VALUE, "this UNet has more than %d skip connections", MAX_SKIPS);
    skips[(*n_skips)++] = *x;
    return D3SR_OK;
}

static d3sr_status unet_forward(d3sr_ctx *ctx, void *arg)
{
    const unet_call *call = arg;
    const unet *u = call->u;
    const d3sr_unet_config *c = &u->cfg;
    const int last = c->num_levels - 1;
    d3sr_tensor temb, context, x, y;
    d3sr_tensor skips[MAX_SKIPS];
    int n_skips = 0;

    D3SR_CHECK(embed_time(ctx, call, &temb));                                           // [n, 1, 1, ted]
    D3SR_CHECK(d3sr_upload(ctx, call->context, call->n, 1, call->context_len, c->cross_attention_dim, &context));
    D3SR_CHECK(d3sr_upload_nchw(ctx, call->sample, call->n, c->in_channels, call->h, call->w, &x)); // [n, h, w, in]
    D3SR_CHECK(d3sr_conv2d(ctx, &x, &u->conv_in, NULL, &y));                             // [n, h, w, c0]
    x = y;
    D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "conv_in"));

    /* Down: every ResNet(+transformer) output and every downsampled map is a skip. */
    D3SR_CHECK(push_skip(skips, &n_skips, &x));
    for (int i = 0; i <= last; i++) {
        const unet_level *level = &u->down[i];
        for (int j = 0; j < level->n_resnets; j++) {
            D3SR_CHECK(run_layer(ctx, level, j, &x, &temb, &context));
            D3SR_CHECK(push_skip(skips, &n_skips, &x));
        }
        if (level->has_resample) {
            D3SR_CHECK(d3sr_conv2d(ctx, &x, &level->resample, NULL, &y));               // [n, h/2, w/2, c]
            x = y;
            D3SR_CHECK(push_skip(skips, &n_skips, &x));
        }
        D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "down_blocks.%d", i));
    }

    /* Mid */
    D3SR_CHECK(d3sr_resnet_forward(ctx, &u->mid_resnet0, &x, &temb, &y));
    x = y;
    D3SR_CHECK(d3sr_transformer2d_forward(ctx, &u->mid_attention, &x, &context, &y));
    x = y;
    D3SR_CHECK(d3sr_resnet_forward(ctx, &u->mid_resnet1, &x, &temb, &y));
    x = y;
    D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "mid_block"));
    if (u->trunk_only) {
        D3SR_CHECK(d3sr_download_nchw(ctx, &x, 0, x.c, call->out));
        return D3SR_OK;
    }

    /* Up: each ResNet takes [x | the latest skip]. */
    for (int i = 0; i <= last; i++) {
        const unet_level *level = &u->up[i];
        for (int j = 0; j < level->n_resnets; j++) {
            d3sr_tensor *skip = &skips[--n_skips];
            D3SR_CHECK(d3sr_concat_channels(ctx, &x, skip, &y));                        // [n, h, w, c + c_skip]
            x = y;
            D3SR_CHECK(run_layer(ctx, level, j, &x, &temb, &context));
        }
        if (level->has_resample) {
            const d3sr_tensor *next = &skips[n_skips - 1]; /* upsample to the next skip's size */
            D3SR_CHECK(d3sr_upsample_nearest(ctx, &x, next->h, next->w, &y));
            D3SR_CHECK(d3sr_conv2d(ctx, &y, &level->resample, NULL, &x));
        }
        D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "up_blocks.%d", i));
    }
    D3SR_CHECK(d3sr_group_norm(ctx, &x, &u->norm_out, 1, &y));
    D3SR_CHECK(d3sr_conv2d(ctx, &y, &u->conv_out, NULL, &x));                           // [n, h, w, out]
    D3SR_CHECK(d3sr_download_nchw(ctx, &x, 0, c->out_channels, call->out));
    return D3SR_OK;
}

d3sr_status d3sr_unet_output_shape(const d3sr_model *m, const int64_t in[4], int64_t out[4])
{
    if (m->kind != D3SR_MODEL_UNET) return d3sr_fail(D3SR_ERR_TYPE, "unet_output_shape needs a UNet");
    const unet *u = m->impl;
    const d3sr_unet_config *c = &u->cfg;
    if (in[1] != c->in_channels)
        return d3sr_fail(D3SR_ERR_VALUE, "sample must have shape [N, %d, h, w], got [%lld, %lld, %lld, %lld]", c->in_channels,
                         (long long)in[0], (long long)in[1], (long long)in[2], (long long)in[3]);
    if (in[0] < 1 || in[2] < 1 || in[3] < 1)
        return d3sr_fail(D3SR_ERR_VALUE, "sample is empty: shape [%lld, %lld, %lld, %lld]", (long long)in[0],
                         (long long)in[1], (long long)in[2], (long long)in[3]);
    if (in[0] > 65536 || in[2] > 65536 || in[3] > 65536 || in[0] * in[2] * in[3] > ((int64_t)1 << 32))
        return d3sr_fail(D3SR_ERR_VALUE, "sample is too large: shape [%lld, %lld, %lld, %lld]", (long long)in[0],
                         (long long)in[1], (long long)in[2], (long long)in[3]);
    out[0] = in[0];
    out[1] = u->trunk_only ? c->block_out_channels[c->num_levels - 1] : c->out_channels;
    out[2] = in[2];
    out[3] = in[3];
    if (u->trunk_only)
        for (int i = 1; i < c->num_levels; i++) { /* stride-2 convs with padding p: floor((x + 2p - 3) / 2) + 1 */
            out[2] = (out[2] + 2 * c->downsample_padding - 3) / 2 + 1;
            out[3] = (out[3] + 2 * c->downsample_padding - 3) / 2 + 1;
        }
    if (out[2] < 1 || out[3] < 1)
        return d3sr_fail(D3SR_ERR_VALUE, "a %lld x %lld sample is too small for %d levels", (long long)in[2],
                         (long long)in[3], c->num_levels);
    return D3SR_OK;
}

d3sr_status d3sr_unet_forward(d3sr_model *m, const float *sample, int n, int h, int w, const float *timesteps,
                              const float *context, int context_len, int context_dim, const float *text_embeds,
                              int text_dim, const float *time_ids, int n_time_ids, float *out)
{
    D3SR_CHECK(d3sr_model_enter(m, D3SR_MODEL_UNET, "unet"));
    unet *u = m->impl;
    const d3sr_unet_config *c = &u->cfg;
    d3sr_status status = D3SR_OK;
    int64_t in_shape[4] = {n, c->in_channels, h, w}, out_shape[4];
    if ((status = d3sr_unet_output_shape(m, in_shape, out_shape)) != D3SR_OK) goto done;
    if (context_len < 1 || context_dim != c->cross_attention_dim) {
        status = d3sr_fail(D3SR_ERR_VALUE, "encoder_hidden_states must have shape [N, L, %d], got [%d, %d, %d]",
                           c->cross_attention_dim, n, context_len, context_dim);
        goto done;
    }
    if (c->text_time) {
        /* 64-bit: T * D overflows an int for T = 2^29, and embed_time writes P + T * D floats. */
        if (!text_embeds || !time_ids || text_dim < 1 || n_time_ids < 1 ||
            (int64_t)text_dim + (int64_t)n_time_ids * c->addition_time_embed_dim != c->addition_input_dim) {
            status = d3sr_fail(D3SR_ERR_VALUE,
                               "this UNet (addition_embed_type 'text_time') needs text_embeds [N, P] and time_ids [N, T] "
                               "with P + T * %d = %d, got P = %d, T = %d", c->addition_time_embed_dim,
                               c->addition_input_dim, text_dim, n_time_ids);
            goto done;
        }
    } else if (text_embeds || time_ids) {
        status = d3sr_fail(D3SR_ERR_VALUE, "text_embeds and time_ids are only for UNets with addition_embed_type 'text_time'");
        goto done;
    }
    for (int i = 0; i < n; i++)
        if (!(timesteps[i] >= 0.0f && timesteps[i] <= 999.0f)) {
            status = d3sr_fail(D3SR_ERR_VALUE, "timestep %g (sample %d) is outside [0, 999]", (double)timesteps[i], i);
            goto done;
        }
    if ((status = d3sr_check_finite(sample, (size_t)n * c->in_channels * h * w, "sample")) != D3SR_OK ||
        (status = d3sr_check_finite(context, (size_t)n * context_len * context_dim, "encoder_hidden_states")) != D3SR_OK)
        goto done;
    if (c->text_time &&
        ((status = d3sr_check_finite(text_embeds, (size_t)n * text_dim, "text_embeds")) != D3SR_OK ||
         (status = d3sr_check_finite(time_ids, (size_t)n * n_time_ids, "time_ids")) != D3SR_OK))
        goto done;

    size_t floats = (size_t)n * c->block_out_channels[0] + (c->text_time ? (size_t)n * c->addition_input_dim : 0);
    if (floats > u->host_embedding_floats) {
        free(u->host_embedding);
        u->host_embedding_floats = 0;
        u->host_embedding = malloc(floats * sizeof *u->host_embedding);
        if (!u->host_embedding) {
            status = d3sr_fail(D3SR_ERR_MEMORY, "out of host memory for the time embedding");
            goto done;
        }
        u->host_embedding_floats = floats;
    }
    unet_call call = {u, sample, timesteps, context, text_embeds, time_ids, n, h, w, context_len, text_dim, n_time_ids,
                      u->host_embedding, out};
    status = d3sr_ctx_run(&m->ctx, unet_forward, &call);
    if (status == D3SR_OK)
        status = d3sr_check_output(out, (size_t)out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3],
                                   "the UNet's output");
done:
    d3sr_model_leave(m);
    return status;
}
