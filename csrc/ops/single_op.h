/* single_op.h: one op on host arrays, for testing every backend's kernels
 * against NumPy. Arrays are float32, channels-last ([n, h, w, c]; tokens
 * [n, L, c]); weights in PyTorch's layout. Each call builds a context on
 * device, runs the op through ops.h exactly as a model would, and frees it.
 */
#ifndef D3SR_OPS_SINGLE_OP_H
#define D3SR_OPS_SINGLE_OP_H

#include "../d3sr.h"

/* pad: top, bottom, left, right. residual: [n, ho, wo, cout] or NULL. */
D3SR_API d3sr_status d3sr_single_conv2d(const char *device, d3sr_dtype dtype, const float *x, int n,
                                        int h, int w, int cin, const float *weight, const float *bias,
                                        int cout, int kh, int kw, int stride, const int pad[4],
                                        const float *residual, float *out);

D3SR_API d3sr_status d3sr_single_linear(const char *device, d3sr_dtype dtype, const float *x,
                                        int rows, int in, const float *weight, const float *bias,
                                        int out_features, float *out);

D3SR_API d3sr_status d3sr_single_group_norm(const char *device, d3sr_dtype dtype, const float *x,
                                            int n, int h, int w, int c, int groups,
                                            const float *gamma, const float *beta, float eps,
                                            int silu, float *out);

/* GroupNorm of one tile under a statistics pool (d3sr_norm_pool, one layer;
 * the core in x's pixels). */
D3SR_API d3sr_status d3sr_single_group_norm_pooled(const char *device, d3sr_dtype dtype, const float *x,
                                                   int n, int h, int w, int c, int groups,
                                                   const float *gamma, const float *beta, float eps,
                                                   int silu, const d3sr_norm_pool *pool, float *out);

D3SR_API d3sr_status d3sr_single_attention(const char *device, d3sr_dtype dtype, const float *q,
                                           const float *k, const float *v, int n, int lq, int lk,
                                           int width, int heads, float *out);

D3SR_API d3sr_status d3sr_single_layer_norm(const char *device, d3sr_dtype dtype, const float *x,
                                            int rows, int c, const float *gamma, const float *beta,
                                            float eps, float *out);

/* Ops without weights on one or two tensors a [n, h, w, c] (and b). */
typedef enum {
    D3SR_SINGLE_SILU,               /* silu(a) */
    D3SR_SINGLE_RELU,               /* relu(a) */
    D3SR_SINGLE_LEAKY_RELU,         /* leaky_relu(a), negative slope 0.2 */
    D3SR_SINGLE_GELU,               /* gelu(a), exact */
    D3SR_SINGLE_GEGLU,              /* a = [value | gate] -> value * gelu(gate) */
    D3SR_SINGLE_ADD,                /* a + b */
    D3SR_SINGLE_ADD_CHANNEL_OFFSET, /* a + b, b [n, 1, 1, c] */
    D3SR_SINGLE_CONCAT,             /* [a | b] along channels */
    D3SR_SINGLE_UPSAMPLE_NEAREST,   /* a resized to size[0] x size[1] */
    D3SR_SINGLE_MAX_POOL,           /* max pooling, kernel size[0], stride size[1] */
    D3SR_SINGLE_L2_POOL,            /* DISTS' L2 pooling */
    D3SR_SINGLE_PAIR_MOMENTS,       /* per-channel moments of (a, b): [n, 1, 5, c] */
} d3sr_single_kind;

/* The output shape of a weightless op, or D3SR_ERR_VALUE when the shapes disagree. */
D3SR_API d3sr_status d3sr_single_shape(d3sr_single_kind kind, const int a_shape[4],
                                       const int b_shape[4], const int size[2], int out_shape[4]);
D3SR_API d3sr_status d3sr_single_run(const char *device, d3sr_dtype dtype, d3sr_single_kind kind,
                                     const float *a, const int a_shape[4], const float *b,
                                     const int b_shape[4], const int size[2], float *out);

/* LPIPS' distance of one layer: a, b [n, h, w, c], weight [c] -> out [n]. */
D3SR_API d3sr_status d3sr_single_lpips_distance(const char *device, d3sr_dtype dtype, const float *a,
                                                const float *b, const int shape[4], const float *weight,
                                                float *out);

#endif /* D3SR_OPS_SINGLE_OP_H */
