/* memory.cuh: weights and activations between host float32 and the device.
 *
 * The host side is always float32 (ops.c converts fp16/bf16 weight files to
 * float32 before upload_weight); the device side is ctx->dtype. Conversions
 * and the NCHW <-> NHWC transposes run on the GPU, on the model's stream,
 * with the float32 staging copy in the model's workspace. Downloads
 * synchronise the stream before they return. */
#ifndef D3SR_CUDA_MEMORY_CUH
#define D3SR_CUDA_MEMORY_CUH

#include "backend.cuh"

d3sr_status cuda_upload_weight(d3sr_ctx *ctx, d3sr_weight_kind kind, const float *host, d3sr_tensor *dst);
d3sr_status cuda_upload(d3sr_ctx *ctx, const float *host, d3sr_tensor *dst);
d3sr_status cuda_download(d3sr_ctx *ctx, const d3sr_tensor *src, float *host);
d3sr_status cuda_upload_nchw(d3sr_ctx *ctx, const float *host, d3sr_tensor *dst);
d3sr_status cuda_download_nchw(d3sr_ctx *ctx, const d3sr_tensor *src, int c0, int c1, float *host);

#endif /* D3SR_CUDA_MEMORY_CUH */
