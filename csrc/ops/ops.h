/* ops.h: the operations models are written in, the same for every backend.
 *
 * Shapes are [n, h, w, c] (channels-last); token sequences are [n, 1, L, c].
 * Each op checks its shapes, allocates its output from the context's arena
 * and, except while planning, runs the backend's kernel. Models call only
 * these functions, so a model is written once for CPU and CUDA. Nobody frees
 * an output: the planning pass learns which op reads each activation last
 * and the arena releases it right after that op (core/arena.h). Ops mark
 * what they read with reads(); an op added here must do the same.
 */
#ifndef D3SR_OPS_OPS_H
#define D3SR_OPS_OPS_H

#include "../core/arena.h"
#include "../core/params.h"
#include "../core/tensor.h"

typedef struct d3sr_backend d3sr_backend;
typedef struct d3sr_ctx d3sr_ctx;

/* Intermediate activations copied to the host while a call runs, for
 * block-by-block comparison with a reference and for inspection. */
typedef struct {
    char name[D3SR_NAME_BYTES];
    int64_t shape[4]; /* NCHW */
    float *data;      /* owned: host, NCHW */
} d3sr_captured;

typedef struct {
    int enabled;
    d3sr_captured *items; /* owned */
    int count, capacity;
} d3sr_capture;

/* Per-op time of the backend's kernels, when profiling is on. */
typedef enum {
    D3SR_OP_TRANSFER, D3SR_OP_CONV2D, D3SR_OP_LINEAR, D3SR_OP_GROUP_NORM, D3SR_OP_LAYER_NORM, D3SR_OP_ATTENTION,
    D3SR_OP_UPSAMPLE, D3SR_OP_GEGLU, D3SR_OP_ACTIVATION, D3SR_OP_ADD, D3SR_OP_CONCAT, D3SR_OP_POOL,
    D3SR_OP_METRIC, D3SR_OP_COUNT,
} d3sr_op_id;

extern const char *const d3sr_op_names[D3SR_OP_COUNT];

typedef struct {
    int enabled;
    long calls[D3SR_OP_COUNT];
    double seconds[D3SR_OP_COUNT];
} d3sr_profile;

/* The GroupNorm layers of a tiled call (see d3sr_norm_pool in d3sr.h): the
 * pool names the tile's core at the input's resolution in_h x in_w; next
 * counts the layers run so far in this pass. */
typedef struct {
    const d3sr_norm_pool *pool; /* borrowed from the caller for one call; NULL: plain GroupNorm */
    int in_h, in_w;
    int next;
    float *mean_rstd;           /* owned by the caller: host [n, groups, 2] scratch */
    double *stats;              /* owned by the caller: host [n, groups, 3] scratch */
    /* Called after a layer's statistics are collected and before they are
     * applied (NULL: none): where the tiles of one image wait for each other
     * (models/tiles.c). */
    d3sr_status (*barrier)(d3sr_ctx *ctx, void *user);
    void *barrier_user;
    /* The plan pass's largest live set of arena bytes at a layer's barrier:
     * what a tile parks at most (models/tiles.c predicts from it). */
    size_t planned_barrier_bytes;
} d3sr_norm_pooling;

/* One model's execution state: backend, activation arena and scratch. */
struct d3sr_ctx {
    const d3sr_backend *backend; /* borrowed: static table of the backend */
    void *backend_state;         /* owned by the backend (CUDA handles, stream); NULL on CPU */
    d3sr_dtype dtype;            /* activation dtype: F32 on CPU */
    d3sr_arena arena;
    void *workspace;             /* owned (backend memory): scratch of the running op */
    size_t workspace_bytes;
    d3sr_capture capture;
    d3sr_profile profile;
    d3sr_norm_pooling pooling;   /* GroupNorm statistics of a tiled call (pool NULL otherwise) */
};

/* A convolution, weights in the backend's layout. */
typedef struct {
    d3sr_tensor weight; /* [cout, kh, kw, cin] on CPU */
    d3sr_tensor bias;   /* [cout]; data NULL when the layer has none */
    int cin, cout, kh, kw, stride;
    int pad_top, pad_bottom, pad_left, pad_right;
} d3sr_conv;

/* y = x W^T + b over the last dimension. */
typedef struct {
    d3sr_tensor weight; /* [out, in] */
    d3sr_tensor bias;   /* [out]; data NULL when the layer has none */
    int in, out;
} d3sr_linear;

/* GroupNorm (groups over channels, statistics over pixels) or LayerNorm
 * (statistics over the channels of each token; groups unused). */
typedef struct {
    d3sr_tensor gamma, beta; /* [channels] */
    int channels, groups;
    float eps;
} d3sr_norm;

d3sr_status d3sr_ctx_init(d3sr_ctx *ctx, const char *device, d3sr_dtype dtype);
void d3sr_ctx_destroy(d3sr_ctx *ctx);

/* A model calls this when it is created, with the NULL-ended names of the
 * kernels it needs that a backend may lack (backend.h: max_pool, l2_pool,
 * lpips_distance, pair_moments), so a device without them fails there,
 * naming them and the model, rather than at the first call. */
d3sr_status d3sr_ctx_require(const d3sr_ctx *ctx, const char *model, const char *const *kernels);

/* Runs forward(ctx, arg): planning (d3sr_ctx_plan), then for real once the arena holds the plan. */
d3sr_status d3sr_ctx_run(d3sr_ctx *ctx, d3sr_status (*forward)(d3sr_ctx *ctx, void *arg), void *arg);

/* Only plans forward(ctx, arg): two passes that run no op and touch no
 * memory; afterwards ctx->arena.peak is the arena a real pass needs. */
d3sr_status d3sr_ctx_plan(d3sr_ctx *ctx, d3sr_status (*forward)(d3sr_ctx *ctx, void *arg), void *arg);

static inline int d3sr_ctx_planning(const d3sr_ctx *ctx) { return ctx->arena.planning; }

/* Scratch for the op being run: valid until the next call. Grows on demand. */
d3sr_status d3sr_workspace(d3sr_ctx *ctx, size_t bytes, void **out);

/* ---- weights ----------------------------------------------------------- */

/* Registers "<prefix>.weight" (and "<prefix>.bias") of a layer with the params
 * table and fills in its sizes; the tensors are set when the weights load.
 * The prefix is fmt with its arguments, the state_dict name, e.g.
 * ("down_blocks.%d.resnets.%d.conv1", i, j). Every *_register function of the
 * models takes its name the same way. */
d3sr_status d3sr_conv_register(d3sr_params *params, d3sr_conv *conv, int cin, int cout, int kernel, int stride,
                               int pad, int bias, const char *fmt, ...) __attribute__((format(printf, 9, 10)));
d3sr_status d3sr_linear_register(d3sr_params *params, d3sr_linear *lin, int in, int out, int bias, const char *fmt,
                                 ...)
    __attribute__((format(printf, 6, 7)));
d3sr_status d3sr_norm_register(d3sr_params *params, d3sr_norm *norm, int channels, int groups, float eps,
                               const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Converts a host weight (PyTorch layout, F32/F16/BF16) into dst on the ctx's device. */
d3sr_status d3sr_weight_upload(d3sr_ctx *ctx, const d3sr_param *param, d3sr_dtype dtype,
                               const void *host, d3sr_tensor *dst);
void d3sr_weight_free(d3sr_ctx *ctx, d3sr_tensor *weight);

/* ---- activations ------------------------------------------------------- */

d3sr_status d3sr_tensor_new(d3sr_ctx *ctx, int n, int h, int w, int c, d3sr_tensor *out);

/* Host float32 [n, h, w, c] (channels-last, e.g. token sequences) <-> a device tensor. */
d3sr_status d3sr_upload(d3sr_ctx *ctx, const float *host, int n, int h, int w, int c, d3sr_tensor *out);
d3sr_status d3sr_download(d3sr_ctx *ctx, const d3sr_tensor *x, float *host);

/* Host NCHW float32 [n, c, h, w] <-> a device tensor [n, h, w, c]. download
 * copies channels [c0, c1) only. */
d3sr_status d3sr_upload_nchw(d3sr_ctx *ctx, const float *host, int n, int c, int h, int w,
                             d3sr_tensor *out);
d3sr_status d3sr_download_nchw(d3sr_ctx *ctx, const d3sr_tensor *x, int c0, int c1, float *host);

/* Copies x to the host under name when capturing is on (a no-op otherwise). */
d3sr_status d3sr_capture_tensor(d3sr_ctx *ctx, const d3sr_tensor *x, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void d3sr_capture_clear(d3sr_capture *capture);

/* ---- ops --------------------------------------------------------------- */

/* Output height and width of conv on an h x w input (<= 0 when the input is too small). */
void d3sr_conv_output_size(const d3sr_conv *conv, int h, int w, int *ho, int *wo);

/* out = conv(x) + bias (+ residual, same shape as out, when not NULL). */
d3sr_status d3sr_conv2d(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_conv *conv,
                        const d3sr_tensor *residual, d3sr_tensor *out);

/* out = x W^T + b (+ residual) over the channel dimension. */
d3sr_status d3sr_linear_apply(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_linear *lin,
                              const d3sr_tensor *residual, d3sr_tensor *out);

/* GroupNorm over [h, w, c/groups] per sample and group, then SiLU if silu. */
d3sr_status d3sr_group_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, int silu,
                            d3sr_tensor *out);

/* d3sr_group_norm under a tiled call: ctx->pooling.pool set, the layer's core
 * statistics go to pool->collect and pool->apply's statistics normalise (see
 * d3sr_norm_pool). Called by d3sr_group_norm; exposed for the op tests. */
d3sr_status d3sr_group_norm_pooled(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, int silu,
                                   d3sr_tensor *out);

/* Multi-head scaled dot-product attention, softmax in fp32.
 * q [n, 1, Lq, heads*d], k and v [n, 1, Lk, heads*d] -> out [n, 1, Lq, heads*d]. */
d3sr_status d3sr_attention(d3sr_ctx *ctx, const d3sr_tensor *q, const d3sr_tensor *k,
                           const d3sr_tensor *v, int heads, d3sr_tensor *out);

/* Nearest-neighbour resize to out_h x out_w with PyTorch's source index,
 * src = min(floor(dst * (in / out)), in - 1), and dst / 2 when out = 2 in. */
d3sr_status d3sr_upsample_nearest(d3sr_ctx *ctx, const d3sr_tensor *x, int out_h, int out_w,
                                  d3sr_tensor *out);

/* LayerNorm over the channels of each pixel or token. */
d3sr_status d3sr_layer_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm,
                            d3sr_tensor *out);

/* diffusers' GEGLU after its projection: x = [a | gate] along channels,
 * out = a * gelu(gate) (the exact, erf-based GELU). */
d3sr_status d3sr_geglu(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out);

/* Elementwise activations; param is the negative slope of leaky ReLU. */
typedef enum {
    D3SR_ACT_SILU,
    D3SR_ACT_RELU,
    D3SR_ACT_LEAKY_RELU,
    D3SR_ACT_GELU, /* exact, erf-based */
} d3sr_activation_kind;

d3sr_status d3sr_activation(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_activation_kind kind, float param,
                            d3sr_tensor *out);

/* The same in place (the metrics' backbones keep one buffer per layer). */
d3sr_status d3sr_activation_inplace(d3sr_ctx *ctx, d3sr_tensor *x, d3sr_activation_kind kind, float param);

/* a += b (same shape). */
d3sr_status d3sr_add_inplace(d3sr_ctx *ctx, d3sr_tensor *a, const d3sr_tensor *b);

/* x[i, :, :, c] += offset[i, 0, 0, c]: a per-sample channel offset, as the
 * time embedding is added inside a ResNet block. */
d3sr_status d3sr_add_channel_offset(d3sr_ctx *ctx, d3sr_tensor *x, const d3sr_tensor *offset);

/* out = [a | b] along channels (the UNet's skip connections). */
d3sr_status d3sr_concat_channels(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                                 d3sr_tensor *out);

/* ---- ops of the perceptual metrics (LPIPS, DISTS) ------------------------ */

/* PyTorch's MaxPool2d(kernel, stride): no padding, floor mode. */
d3sr_status d3sr_max_pool(d3sr_ctx *ctx, const d3sr_tensor *x, int kernel, int stride, d3sr_tensor *out);

/* DISTS' L2 pooling per channel: out = sqrt(g * x^2 + 1e-12), g the 3x3 Hann
 * window [1 2 1]^T [1 2 1] / 16, stride 2, zero padding 1, so an h x w input
 * gives floor((h - 1) / 2) + 1 x floor((w - 1) / 2) + 1. */
d3sr_status d3sr_l2_pool(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out);

/* LPIPS' distance of one layer: a, b [n, h, w, c], weight [1, 1, 1, c] (the
 * layer's 1x1 "lin" conv, no bias) -> out [n, 1, 1, 1], the mean over pixels of
 * sum_c w_c (a_c / (|a| + 1e-10) - b_c / (|b| + 1e-10))^2, |.| the L2 norm over
 * channels. Sums are float64. */
d3sr_status d3sr_lpips_distance(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                                const d3sr_tensor *weight, d3sr_tensor *out);

/* Moments over the pixels of each sample and channel of a pair a, b [n, h, w, c]
 * -> out [n, 1, 5, c], rows: mean a, mean b, var a, var b, cov(a, b), the
 * variances divided by h*w (as DISTS' .mean()). Two passes in float64, so a
 * large mean cannot cancel a variance away. */
d3sr_status d3sr_pair_moments(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                              d3sr_tensor *out);

/* A view of samples [n0, n1) of x (never released on its own). */
d3sr_status d3sr_batch_slice(const d3sr_tensor *x, int n0, int n1, d3sr_tensor *out);

/* A view of the same data with another shape of equal element count. */
d3sr_status d3sr_reshape(const d3sr_tensor *x, int n, int h, int w, int c, d3sr_tensor *out);

#endif /* D3SR_OPS_OPS_H */
