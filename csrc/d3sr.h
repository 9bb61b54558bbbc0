/* d3sr.h: the C API of the d3sr core, the only header the Python binding needs.
 *
 * Usage (error handling shortened):
 *
 *     d3sr_vae_config cfg = ...;                // from the VAE's config.json
 *     d3sr_model *vae;
 *     d3sr_vae_create(&cfg, D3SR_VAE_ENCODER | D3SR_VAE_DECODER, "cpu", D3SR_F32, &vae);
 *     for each (name, array) in the weight file:
 *         d3sr_model_set_weight(vae, name, D3SR_F32, ndim, shape, data);
 *     d3sr_model_check_complete(vae);           // names the first missing weight
 *     d3sr_vae_encode(vae, x, n, h, w, mean);   // NCHW float32 in, NCHW float32 out
 *     d3sr_model_free(vae);
 *
 * Thread safety: functions on different models may run concurrently. One model
 * serves one call at a time; a second concurrent call on the same model returns
 * D3SR_ERR_BUSY. Every failure returns a status and leaves a message that
 * d3sr_last_error() returns on the same thread. Nothing here exits or aborts.
 *
 * Arrays crossing this API are host memory, row-major, NCHW for images and
 * latents (the layout of diffusers and NumPy callers); inside, activations are
 * channels-last (NHWC).
 */
#ifndef D3SR_H
#define D3SR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define D3SR_API __attribute__((visibility("default")))
#else
#define D3SR_API
#endif

typedef enum {
    D3SR_OK = 0,
    D3SR_ERR_VALUE = 1,       /* a bad argument value or shape */
    D3SR_ERR_TYPE = 2,        /* a wrong dtype */
    D3SR_ERR_MEMORY = 3,      /* an allocation failed */
    D3SR_ERR_RUNTIME = 4,     /* a backend failure */
    D3SR_ERR_BUSY = 5,        /* the model is serving another call */
    D3SR_ERR_UNAVAILABLE = 6, /* the device asked for cannot run here */
} d3sr_status;

typedef enum {
    D3SR_F32 = 0,
    D3SR_F16 = 1,
    D3SR_BF16 = 2,
} d3sr_dtype;

/* The message of the last failure on the calling thread ("" if none). */
D3SR_API const char *d3sr_last_error(void);

/* 1 if device="cuda" can run here (libd3sr_cuda.so loads and sees a GPU);
 * else 0 and *why says why. */
D3SR_API int d3sr_cuda_available(const char **why);

/* Threads used by CPU kernels, process-wide. n <= 0 means "all cores"; n
 * above d3sr_max_threads() is taken as that many (the binding refuses it):
 * OpenMP creates every thread asked for, and thousands exhaust the stack or
 * the memory cap and end the process. */
D3SR_API void d3sr_set_num_threads(int n);
D3SR_API int d3sr_get_num_threads(void);
D3SR_API int d3sr_max_threads(void); /* max(64, 4 x the cores) */

/* ---- models: common ---------------------------------------------------- */

typedef struct d3sr_model d3sr_model;

/* Hand one weight to the model by its PyTorch state_dict name. data is host
 * memory in PyTorch's layout, of dtype F32, F16 or BF16; it is copied. Fails
 * with D3SR_ERR_VALUE if the name is unknown or the shape differs (the message
 * names the key, the expected and the actual shape). */
D3SR_API d3sr_status d3sr_model_set_weight(d3sr_model *m, const char *name, d3sr_dtype dtype,
                                           int ndim, const int64_t *shape, const void *data);

/* The model's expected weights, for loaders and tools: i in [0, count). */
D3SR_API int d3sr_model_num_weights(const d3sr_model *m);
D3SR_API d3sr_status d3sr_model_weight_info(const d3sr_model *m, int i, const char **name,
                                            int *ndim, int64_t shape[4], int *is_set);

/* D3SR_OK once every expected weight was set; else names the first missing one. */
D3SR_API d3sr_status d3sr_model_check_complete(const d3sr_model *m);

/* Bytes held by weights and by the activation arena (grown on demand). */
D3SR_API size_t d3sr_model_weight_bytes(const d3sr_model *m);
D3SR_API size_t d3sr_model_arena_bytes(const d3sr_model *m);

/* With capture on, each call keeps copies of the activations after each block
 * (NCHW, host), named like diffusers' modules ("encoder.down_blocks.0"), until
 * the next call. For block-by-block checks and for looking inside a model. */
D3SR_API void d3sr_model_set_capture(d3sr_model *m, int enabled);
D3SR_API int d3sr_model_num_captured(const d3sr_model *m);
D3SR_API d3sr_status d3sr_model_captured(const d3sr_model *m, int i, const char **name,
                                         int64_t shape[4], const float **data);

/* With profiling on, each op's kernel time accumulates (the backend is
 * synchronised around each op, so it costs a little speed) until turned on
 * again. Op i in [0, d3sr_model_num_ops()): its name, calls and seconds. */
D3SR_API void d3sr_model_set_profiling(d3sr_model *m, int enabled);
D3SR_API int d3sr_model_num_ops(void);
D3SR_API void d3sr_model_op_profile(const d3sr_model *m, int i, const char **name, long *calls, double *seconds);

D3SR_API void d3sr_model_free(d3sr_model *m);

/* ---- the VAE (diffusers AutoencoderKL) --------------------------------- */

#define D3SR_MAX_LEVELS 8

/* Size limits checked when a model is created and on every activation: far
 * above every real model (SDXL: 1280 channels, 2816-wide add_embedding, 10
 * transformer layers) and low enough that every size the core derives from
 * them (8 x channels in a feed-forward, kernels x channels in a GEMM) fits
 * the 32-bit integers of the kernels and of OpenBLAS. */
#define D3SR_MAX_CHANNELS 65536          /* any channel or feature width */
#define D3SR_MAX_LAYERS_PER_BLOCK 32     /* ResNets per level */
#define D3SR_MAX_TRANSFORMER_LAYERS 64   /* transformer blocks per Transformer2DModel */
#define D3SR_MAX_ROWS (1 << 30)          /* n x h x w of one activation (pixels or tokens) */

typedef struct {
    int in_channels;      /* image channels, 3 */
    int out_channels;     /* image channels, 3 */
    int latent_channels;  /* 4 for SD */
    int num_levels;       /* len(block_out_channels) */
    int block_out_channels[D3SR_MAX_LEVELS];
    int layers_per_block;
    int norm_num_groups;
    int use_quant_conv;          /* quant_conv after the encoder */
    int use_post_quant_conv;     /* post_quant_conv before the decoder */
    int mid_block_add_attention; /* self-attention in both mid blocks */
} d3sr_vae_config;

enum { D3SR_VAE_ENCODER = 1, D3SR_VAE_DECODER = 2 };

/* parts: D3SR_VAE_ENCODER and/or D3SR_VAE_DECODER; only their weights are expected. */
D3SR_API d3sr_status d3sr_vae_create(const d3sr_vae_config *cfg, int parts, const char *device,
                                     d3sr_dtype dtype, d3sr_model **out);

/* x: [n, in_channels, h, w], h and w multiples of 2^(num_levels-1).
 * mean: [n, latent_channels, h / f, w / f], f = 2^(num_levels-1): the posterior
 * mean, unscaled (diffusers' encode(x).latent_dist.mean). */
D3SR_API d3sr_status d3sr_vae_encode(d3sr_model *m, const float *x, int n, int h, int w,
                                     float *mean);

/* The output shape of encode (encode = 1) or decode for an NCHW input shape;
 * D3SR_ERR_VALUE, naming what is wrong, if the VAE cannot take that input. */
D3SR_API d3sr_status d3sr_vae_output_shape(const d3sr_model *m, int encode, const int64_t in[4],
                                           int64_t out[4]);

/* z: [n, latent_channels, h, w]; image: [n, out_channels, h * f, w * f], unclamped
 * (diffusers' decode(z).sample). */
D3SR_API d3sr_status d3sr_vae_decode(d3sr_model *m, const float *z, int n, int h, int w,
                                     float *image);

/* ---- tiled VAE calls: GroupNorm statistics pooled over an image's tiles ---
 *
 * A tile runs its window: its core, rows [y0, y1) and columns [x0, x1) of
 * the window, plus a halo. The cores of an image's tiles partition it, so
 * statistics over cores count every pixel once. Under a pool, each GroupNorm
 * layer (layer 0, 1, ... in call order) writes its input's statistics over
 * the core (scaled to the layer's resolution) to collect, and normalises with
 * apply, the image's pooled statistics, instead of the tile's own. */
typedef struct {
    int y0, y1, x0, x1;
    int layers, groups;  /* entries of apply and collect per sample */
    const double *apply; /* [n, layers, groups, 2] mean, variance; NULL: each layer's own statistics */
    double *collect;     /* [n, layers, groups, 3] count, mean, M2 over the core; NULL: not wanted */
} d3sr_norm_pool;

/* How a tiled VAE call gets the statistics of its GroupNorm layers. */
typedef struct {
    /* [n, layers, groups, 2] mean and variance of every GroupNorm layer, given
     * (from a pass over a smaller copy of the image, say): the tiles then run
     * one after another, nothing parked, memory one tile's. NULL: the image's
     * exact statistics, pooled layer by layer over the tiles, whose live
     * activations wait parked in host memory. */
    const double *statistics;
    int park_half;          /* pooled: park as float16 instead of float32 */
    double *pooled;         /* may be NULL: receives the statistics the tiles used, [n, layers, groups, 2] */
    /* 1: run nothing, only plan (x and out may be NULL): window_bytes and
     * parked_bytes say what the call would hold, before it holds it. */
    int plan_only;
    size_t parked_bytes;    /* out: the most host memory parked at once (planned: will be) */
    size_t window_bytes;    /* out, planned only: the activation memory of one tile (the model's device) */
} d3sr_vae_tiling;

/* The GroupNorm layers of the encoder (encode = 1) or decoder, and their
 * groups: the sizes of d3sr_vae_tiling's statistics. */
D3SR_API d3sr_status d3sr_vae_norm_layers(const d3sr_model *m, int encode, int *layers, int *groups);

/* encode (encode = 1) or decode of a whole image x [n, c, h, w] in count tiles,
 * every GroupNorm layer with the image's statistics (see models/tiles.h and
 * d3sr_vae_tiling). tiles[i] = window y0, y1, x0, x1 then core y0, y1, x0,
 * x1 in x's pixels: the cores partition the image, each window holds its core
 * and all windows have one size. */
D3SR_API d3sr_status d3sr_vae_run_tiled(d3sr_model *m, int encode, const float *x, int n, int h, int w,
                                        const int (*tiles)[8], int count, d3sr_vae_tiling *how, float *out);

/* ---- colour fix (StableSR's adain and wavelet) --------------------------- */

typedef enum { D3SR_COLOR_FIX_ADAIN = 1, D3SR_COLOR_FIX_WAVELET = 2 } d3sr_color_fix_kind;

/* Corrects sr [n, h, w, c] float32 in place towards ref (same shape), the
 * result clamped to [0, 1]; see images/color_fix.c for the formulas. */
D3SR_API d3sr_status d3sr_color_fix(float *sr, const float *ref, int n, int h, int w, int c,
                                    d3sr_color_fix_kind kind);

/* ---- the UNet (diffusers UNet2DConditionModel: SD 1.x/2.x, SDXL) ------- */

typedef struct {
    int in_channels, out_channels;
    int num_levels;
    int block_out_channels[D3SR_MAX_LEVELS];
    int down_cross_attention[D3SR_MAX_LEVELS];  /* CrossAttnDownBlock2D (1) or DownBlock2D (0) */
    int up_cross_attention[D3SR_MAX_LEVELS];    /* in up_blocks order */
    int layers_per_block[D3SR_MAX_LEVELS];      /* resnets per down level; up levels get one more */
    int transformer_layers[D3SR_MAX_LEVELS];    /* per down level; the mid block takes the last */
    int up_transformer_layers[D3SR_MAX_LEVELS]; /* in up_blocks order */
    int attention_heads[D3SR_MAX_LEVELS];       /* per down level; SD 2's "attention_head_dim" */
    int cross_attention_dim;
    int norm_num_groups;
    float norm_eps;
    int use_linear_projection;
    int flip_sin_to_cos;
    float freq_shift;
    int time_embed_dim;          /* 4 * block_out_channels[0] in SD and SDXL */
    int text_time;               /* addition_embed_type == "text_time" (SDXL) */
    int addition_time_embed_dim; /* 256 in SDXL */
    int addition_input_dim;      /* projection_class_embeddings_input_dim: 2816 in SDXL */
    int downsample_padding;
} d3sr_unet_config;

/* trunk_only: build conv_in, the embeddings, the down blocks and the mid block
 * only (the discriminator's trunk); the forward returns the mid block's output. */
D3SR_API d3sr_status d3sr_unet_create(const d3sr_unet_config *cfg, int trunk_only, const char *device,
                                      d3sr_dtype dtype, d3sr_model **out);

/* Output shape for a sample [n, in_channels, h, w]: [n, out_channels, h, w], or
 * for a trunk [n, C_last, ceil(h / 2^(L-1)), ...]. */
D3SR_API d3sr_status d3sr_unet_output_shape(const d3sr_model *m, const int64_t in[4], int64_t out[4]);

/* sample [n, in_channels, h, w]; timesteps [n]; context [n, context_len,
 * cross_attention_dim]; for text_time, text_embeds [n, text_dim] and time_ids
 * [n, n_time_ids] with text_dim + n_time_ids * addition_time_embed_dim =
 * addition_input_dim (else pass NULL and 0). Matches diffusers'
 * UNet2DConditionModel(...).sample. */
D3SR_API d3sr_status d3sr_unet_forward(d3sr_model *m, const float *sample, int n, int h, int w,
                                       const float *timesteps, const float *context, int context_len,
                                       int context_dim, const float *text_embeds, int text_dim,
                                       const float *time_ids, int n_time_ids, float *out);

/* ---- the discriminator's patch head: a per-location MLP ------------------ */

typedef enum {
    D3SR_HEAD_SILU = 0,
    D3SR_HEAD_RELU = 1,
    D3SR_HEAD_LEAKY_RELU = 2,
    D3SR_HEAD_GELU = 3,
} d3sr_head_activation;

typedef struct {
    int in_channels;  /* the trunk's last width: 1280 for SDXL */
    int hidden;
    d3sr_head_activation activation;
    float negative_slope; /* leaky ReLU only */
} d3sr_head_config;

/* Weights as nn.Sequential(Conv2d(in, hidden, 1), act, Conv2d(hidden, 1, 1))
 * names them: "0.weight" [hidden, in, 1, 1] (or [hidden, in]), "0.bias",
 * "2.weight" [1, hidden, 1, 1] (or [1, hidden]), "2.bias". */
D3SR_API d3sr_status d3sr_head_create(const d3sr_head_config *cfg, const char *device, d3sr_dtype dtype,
                                      d3sr_model **out);

/* features [n, in_channels, h, w] -> logits [n, 1, h, w]. */
D3SR_API d3sr_status d3sr_head_forward(d3sr_model *m, const float *features, int n, int channels, int h,
                                       int w, float *logits);

/* ---- image-quality metrics ---------------------------------------------
 *
 * Images here are laid out as NumPy users hold them: [n, h, w, 3] RGB,
 * row-major, uint8 (0..255) or float32 in [0, 1]; each function scores the n
 * pairs (a[i], b[i]) into scores[n]. A float value outside [0, 1], NaN or Inf
 * is D3SR_ERR_VALUE naming the image. Conventions follow pyiqa, which the
 * numbers in super-resolution papers come from: uint8 values become float32
 * v / 255 as torchvision's ToTensor makes them, and the BT.601 luma is
 * computed in float32 as pyiqa computes it, so rounding it to 0..255 gives
 * pyiqa's integers.
 */

typedef enum {
    D3SR_PIXELS_U8 = 0,  /* 0..255 */
    D3SR_PIXELS_F32 = 1, /* [0, 1] */
} d3sr_pixels;

typedef struct {
    int crop_border; /* pixels dropped at each edge first */
    int y_channel;   /* 1: the Y of BT.601 YCbCr (16..235 of 255), 0: the three RGB channels */
    int downsample;  /* SSIM only: average-pool by max(1, round(min(h, w) / 256)) first, as
                        the original MATLAB code does */
} d3sr_pixel_metric_options;

/* PSNR in dB with a peak of 1: 10 log10(1 / (mse + 1e-8)), so identical images
 * score 80 (pyiqa's psnr with data_range 1). */
D3SR_API d3sr_status d3sr_psnr(const void *a, const void *b, d3sr_pixels type, int n, int h, int w,
                               const d3sr_pixel_metric_options *options, double *scores);

/* SSIM: values rounded to integers 0..255 (MATLAB's uint8 images), 11x11
 * Gaussian window of sigma 1.5, 'valid' filtering, C1 = (0.01 * 255)^2,
 * C2 = (0.03 * 255)^2, the contrast-structure term clipped at 0, the map
 * averaged over pixels and channels (pyiqa's ssim). The cropped (and
 * downsampled) image must be at least 11 x 11. */
D3SR_API d3sr_status d3sr_ssim(const void *a, const void *b, d3sr_pixels type, int n, int h, int w,
                               const d3sr_pixel_metric_options *options, double *scores);

/* The BT.601 luma of rgb [n, h, w, 3] into y [n, h, w]: in [16/255, 235/255],
 * or times 255 and rounded half to even when rounded (what SSIM sees). */
D3SR_API d3sr_status d3sr_luma(const void *rgb, d3sr_pixels type, int n, int h, int w, int rounded,
                               float *y);

/* Perceptual metrics: networks over the same ops as the models, weights by
 * the names of d3sr's metric weight file:
 *   LPIPS_ALEX: "alexnet.features.<i>.{weight,bias}" (torchvision's AlexNet),
 *               "lpips.alex.lin<k>.model.1.weight" (the lpips package, v0.1);
 *   LPIPS_VGG:  "vgg16.features.<i>.{weight,bias}" (torchvision's VGG16),
 *               "lpips.vgg.lin<k>.model.1.weight";
 *   DISTS:      "vgg16.features.<i>.{weight,bias}", "dists.alpha", "dists.beta"
 *               (DISTS_pytorch), VGG16 with L2 pooling in place of max pooling. */
typedef enum {
    D3SR_LPIPS_ALEX = 0,
    D3SR_LPIPS_VGG = 1,
    D3SR_DISTS = 2,
} d3sr_perceptual_kind;

D3SR_API d3sr_status d3sr_perceptual_create(d3sr_perceptual_kind kind, const char *device,
                                            d3sr_dtype dtype, d3sr_model **out);

/* LPIPS maps [0, 1] to [-1, 1] and applies its scaling layer; DISTS
 * normalises by ImageNet's mean and std and also compares the raw images.
 * With edge_aware (DISTS only) the score is EA-DISTS: DISTS(a, b) +
 * DISTS(S(a), S(b)), S the Sobel gradient magnitude of the channel mean,
 * sqrt(gx^2 + gy^2 + 1e-6) with zero padding 1, repeated to three channels.
 * Pairs run in chunks that bound the activation memory. */
D3SR_API d3sr_status d3sr_perceptual_score(d3sr_model *m, const void *a, const void *b, d3sr_pixels type,
                                           int n, int h, int w, int edge_aware, double *scores);

#ifdef __cplusplus
}
#endif

#endif /* D3SR_H */
