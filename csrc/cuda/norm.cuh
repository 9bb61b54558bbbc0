/* norm.cuh: GroupNorm (with optional fused SiLU) and LayerNorm, channels-last,
 * statistics in float32 by Welford/Chan merging (no cancellation with large means). */
#ifndef D3SR_CUDA_NORM_CUH
#define D3SR_CUDA_NORM_CUH

#include "backend.cuh"

d3sr_status cuda_group_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, int silu, d3sr_tensor *out);
/* Tiled GroupNorm (see backend.h): statistics over a region to the host, and
 * normalisation with host statistics. */
d3sr_status cuda_group_stats(d3sr_ctx *ctx, const d3sr_tensor *x, int groups, const int region[4], double *stats);
d3sr_status cuda_group_norm_with(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, const float *mean_rstd,
                                 int silu, d3sr_tensor *out);
d3sr_status cuda_layer_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, d3sr_tensor *out);

#endif /* D3SR_CUDA_NORM_CUH */
