/* backend.h: the table of kernels each backend (CPU, CUDA) implements.
 *
 * ops.c checks shapes and allocates outputs; a backend function receives
 * tensors whose shapes are already known to agree and only computes. The
 * CUDA backend lives in its own shared object and hands this table over
 * through d3sr_cuda_backend(); see ops/device.c. Both tables are written
 * with designated initialisers, so a field cannot be filled by position.
 */
#ifndef D3SR_OPS_BACKEND_H
#define D3SR_OPS_BACKEND_H

#include "ops.h"

struct d3sr_backend {
    const char *name;
    d3sr_status (*init)(d3sr_ctx *ctx);
    void (*destroy)(d3sr_ctx *ctx);

    /* Waits for the work queued so far (asynchronous backends), so profiling
     * times kernels rather than launches; NULL where calls are synchronous. */
    d3sr_status (*synchronize)(d3sr_ctx *ctx);

    d3sr_status (*alloc)(d3sr_ctx *ctx, size_t bytes, void **out);
    void (*free)(d3sr_ctx *ctx, void *p);

    /* host: float32 in PyTorch layout; dst comes shaped by ops.c (conv [cout, kh, kw, cin],
     * linear [1, 1, out, in], vector [1, 1, 1, c]) and gets the backend's copy. */
    d3sr_status (*upload_weight)(d3sr_ctx *ctx, d3sr_weight_kind kind, const float *host,
                                 d3sr_tensor *dst);
    /* Host float32 in the tensor's own layout [n, h, w, c], or in NCHW. */
    d3sr_status (*upload)(d3sr_ctx *ctx, const float *host, d3sr_tensor *dst);
    d3sr_status (*download)(d3sr_ctx *ctx, const d3sr_tensor *src, float *host);
    d3sr_status (*upload_nchw)(d3sr_ctx *ctx, const float *host, d3sr_tensor *dst);
    d3sr_status (*download_nchw)(d3sr_ctx *ctx, const d3sr_tensor *src, int c0, int c1,
                                 float *host);

    d3sr_status (*conv2d)(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_conv *conv,
                          const d3sr_tensor *residual, d3sr_tensor *out);
    d3sr_status (*linear)(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_linear *lin,
                          const d3sr_tensor *residual, d3sr_tensor *out);
    d3sr_status (*group_norm)(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm,
                              int silu, d3sr_tensor *out);
    /* Tiled GroupNorm: stats [n, groups, 3] (count, mean, M2) on the host over
     * rows region[0]..region[1], columns region[2]..region[3] of each sample;
     * and GroupNorm (+SiLU) with given host mean_rstd [n, groups, 2]. */
    d3sr_status (*group_stats)(d3sr_ctx *ctx, const d3sr_tensor *x, int groups, const int region[4],
                               double *stats);
    d3sr_status (*group_norm_with)(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm,
                                   const float *mean_rstd, int silu, d3sr_tensor *out);
    d3sr_status (*attention)(d3sr_ctx *ctx, const d3sr_tensor *q, const d3sr_tensor *k,
                             const d3sr_tensor *v, int heads, d3sr_tensor *out);
    d3sr_status (*layer_norm)(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm,
                              d3sr_tensor *out);
    d3sr_status (*upsample_nearest)(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out);
    d3sr_status (*geglu)(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out);
    /* out may be x itself (in place) */
    d3sr_status (*activation)(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_activation_kind kind, float param,
                              d3sr_tensor *out);
    d3sr_status (*add_inplace)(d3sr_ctx *ctx, d3sr_tensor *a, const d3sr_tensor *b);
    d3sr_status (*add_channel_offset)(d3sr_ctx *ctx, d3sr_tensor *x, const d3sr_tensor *offset);
    d3sr_status (*concat_channels)(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                                   d3sr_tensor *out);

    /* Optional: the perceptual metrics' kernels. A backend declares it lacks
     * one by leaving it NULL; models that need them ask d3sr_ctx_require. */
    d3sr_status (*max_pool)(d3sr_ctx *ctx, const d3sr_tensor *x, int kernel, int stride, d3sr_tensor *out);
    d3sr_status (*l2_pool)(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out);
    d3sr_status (*lpips_distance)(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                                  const d3sr_tensor *weight, d3sr_tensor *out);
    d3sr_status (*pair_moments)(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                                d3sr_tensor *out);
};

extern const d3sr_backend d3sr_cpu_backend;

/* What a backend in its own shared object (the CUDA one) needs from the core.
 * The core's symbols are hidden and libraries loaded after it cannot see
 * them, so the core hands these over when it loads the backend: errors go to
 * the same thread-local message, scratch to the same per-model workspace. */
#define D3SR_BACKEND_ABI 1

typedef struct {
    int abi;                                                    /* D3SR_BACKEND_ABI of the core */
    d3sr_status (*fail)(d3sr_status status, const char *fmt, ...);
    d3sr_status (*workspace)(d3sr_ctx *ctx, size_t bytes, void **out);
    int (*threads)(void);                                       /* host threads for host-side work */
} d3sr_core_services;

/* libd3sr_cuda.so exports d3sr_cuda_backend of this type. It returns its table,
 * or NULL with why filled in (no driver, no device, ABI mismatch). */
typedef const d3sr_backend *(*d3sr_backend_entry)(const d3sr_core_services *core, char *why, size_t why_size);

#endif /* D3SR_OPS_BACKEND_H */
