/* conv.cuh: 2-D convolution; conv.cu is the only file that sees cuDNN.
 *
 * x [n, h, w, cin] and weights [cout, kh, kw, cin] (cuDNN's NHWC filter),
 * out [n, ho, wo, cout], float32 accumulation, bias and residual added after.
 * 1x1 stride-1 convolutions are the GEMM of gemm.cu over pixels. */
#ifndef D3SR_CUDA_CONV_CUH
#define D3SR_CUDA_CONV_CUH

#include "backend.cuh"

d3sr_status conv_state_create(d3sr_ctx *ctx, struct conv_state **out);
void conv_state_destroy(struct conv_state *c);

d3sr_status cuda_conv2d(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_conv *conv, const d3sr_tensor *residual,
                        d3sr_tensor *out);

/* 1 if the cuDNN that loaded is the major version this was built against;
 * else 0 and why says which versions meet. */
int conv_library_ok(char *why, size_t why_size);

#endif /* D3SR_CUDA_CONV_CUH */
