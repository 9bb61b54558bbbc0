/* attention.cuh: multi-head scaled dot-product attention, softmax in float32.
 *
 * q [n, Lq, heads*d], k and v [n, Lk, heads*d]; head h is columns
 * [h*d, (h+1)*d). Three paths, chosen by shape and dtype:
 *   - fp16/bf16 with d = 64 (SD 2.1 and SDXL): a flash-attention kernel on
 *     tensor cores (mma.sync), scores never leave registers;
 *   - d <= 128 otherwise (fp32, other head widths): a flash-attention kernel
 *     in float32 on CUDA cores, scores in shared memory one tile at a time;
 *   - d > 128 (the VAE's single 512-wide head): blocks of queries through
 *     cuBLAS, scores of one block at a time in the workspace, as the CPU does.
 * None holds the whole Lq x Lk score matrix. D3SR_CUDA_ATTENTION=generic or
 * =chunked forces a path (generic still needs d <= 128), for cross-checks. */
#ifndef D3SR_CUDA_ATTENTION_CUH
#define D3SR_CUDA_ATTENTION_CUH

#include "backend.cuh"

d3sr_status cuda_attention(d3sr_ctx *ctx, const d3sr_tensor *q, const d3sr_tensor *k, const d3sr_tensor *v, int heads,
                           d3sr_tensor *out);

#endif /* D3SR_CUDA_ATTENTION_CUH */
