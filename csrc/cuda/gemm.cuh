/* gemm.cuh: matrix products; gemm.cu is the only file that sees cuBLAS.
 *
 * Linear layers (and 1x1 convolutions, the same product over pixels) run on
 * cuBLASLt with the bias and the residual fused into its epilogue, plans
 * cached by shape; products cuBLASLt declines run on cublasGemmEx plus
 * elementwise.cu's epilogue. Accumulation is float32 always; for fp32 models
 * no TF32 (compute type 32F, pedantic math) so results can be verified. */
#ifndef D3SR_CUDA_GEMM_CUH
#define D3SR_CUDA_GEMM_CUH

#include "backend.cuh"

d3sr_status gemm_state_create(d3sr_ctx *ctx, struct gemm_state **out);
void gemm_state_destroy(struct gemm_state *g);

d3sr_status cuda_linear(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_linear *lin, const d3sr_tensor *residual,
                        d3sr_tensor *out);

/* out [rows, n_out] = x [rows, n_in] W^T (W [n_out, n_in]) + bias + residual,
 * all in ctx->dtype; bias and residual may be NULL. */
d3sr_status cuda_gemm_rows(d3sr_ctx *ctx, const void *x, size_t rows, int n_in, const void *w, const void *bias,
                           const void *residual, void *out, int n_out);

/* Element types a strided batched product may take (see cuda_gemm_batched). */
typedef enum { GEMM_STORAGE, GEMM_F32 } gemm_type;

/* Column-major C[b] = alpha op(A[b]) op(B[b]) + beta C[b] for b < batch, as
 * cublasGemmStridedBatchedEx: A and B in ctx->dtype, C in ctx->dtype or
 * float32 (c_type), float32 accumulation. Strides in elements. */
d3sr_status cuda_gemm_batched(d3sr_ctx *ctx, int trans_a, int trans_b, int m, int n, int k, float alpha,
                              const void *a, int lda, long long stride_a, const void *b, int ldb, long long stride_b,
                              float beta, void *c, gemm_type c_type, int ldc, long long stride_c, int batch);

#endif /* D3SR_CUDA_GEMM_CUH */
