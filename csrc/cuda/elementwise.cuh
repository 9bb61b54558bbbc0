/* elementwise.cuh: the memory-bound ops, and the helpers conv.cu and gemm.cu
 * share (a bias/residual epilogue, explicit zero padding). Each kernel moves
 * 16 bytes per access where the channel count and the pointers allow it. */
#ifndef D3SR_CUDA_ELEMENTWISE_CUH
#define D3SR_CUDA_ELEMENTWISE_CUH

#include "backend.cuh"

d3sr_status cuda_upsample_nearest(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out);
d3sr_status cuda_geglu(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out);
d3sr_status cuda_activation(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_activation_kind kind, float param,
                            d3sr_tensor *out);
d3sr_status cuda_add_inplace(d3sr_ctx *ctx, d3sr_tensor *a, const d3sr_tensor *b);
d3sr_status cuda_add_channel_offset(d3sr_ctx *ctx, d3sr_tensor *x, const d3sr_tensor *offset);
d3sr_status cuda_concat_channels(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b, d3sr_tensor *out);

/* out[r, j] += bias[j] (when not NULL) + residual[r, j] (when not NULL), for
 * rows x cols values in ctx->dtype; the epilogue of a convolution or GEMM
 * that could not fuse it. */
d3sr_status cuda_bias_residual(d3sr_ctx *ctx, void *out, const void *bias, const void *residual, size_t rows,
                               int cols);

/* dst [n, h + top + bottom, w + left + right, c] = x zero-padded: cuDNN takes
 * symmetric padding only, so asymmetric convolutions run on a padded copy. */
d3sr_status cuda_pad_nhwc(d3sr_ctx *ctx, const d3sr_tensor *x, int top, int bottom, int left, int right, void *dst);

#endif /* D3SR_CUDA_ELEMENTWISE_CUH */
