/* gemm.cu: every cuBLAS and cuBLASLt call of the backend.
 *
 * Row-major out [rows, n_out] = x [rows, n_in] W^T is, in cuBLAS's
 * column-major terms, out^T [n_out, rows] = W^T' x^T with W read as a
 * [n_in, n_out] column-major matrix and transposed: m = n_out, n = rows,
 * k = n_in, A = W (op T, lda = n_in), B = x (op N, ldb = n_in), C = D = out
 * (ldc = n_out). cuBLASLt adds the bias (a vector of m, one per output
 * feature) in its epilogue and the residual as C with beta = 1, so a linear
 * layer with both is one kernel. A plan (descriptors, layouts and the
 * heuristic's algorithm) is made once per shape, bias/residual presence and
 * pointer alignment, and kept for the model's life. Handles, plans and the
 * 32 MiB workspace both libraries share belong to one model (gemm_state).
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "elementwise.cuh"
#include "gemm.cuh"

#define GEMM_WORKSPACE_BYTES ((size_t)32 << 20)

typedef struct {
    int m, n, k;          /* cuBLAS's: m = output features, n = rows, k = input features */
    int bias, residual;
    unsigned align[4];    /* bytes of alignment of A (W), B (x), C, D, at most 256 */
    int lt;               /* 1: cuBLASLt with the fused epilogue; 0: cublasGemmEx, then elementwise.cu's */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} gemm_plan;

struct gemm_state {
    cublasHandle_t blas;    /* owned */
    cublasLtHandle_t lt;    /* owned */
    void *workspace;        /* owned: device, GEMM_WORKSPACE_BYTES, shared by both handles (one stream) */
    gemm_plan *plans;       /* owned */
    int count, capacity;
    d3sr_dtype dtype;
    int verbose;
};

static d3sr_status blas_check(cublasStatus_t st, const char *expr, const char *file, int line)
{
    if (st == CUBLAS_STATUS_SUCCESS) return D3SR_OK;
    return cuda_fail(st == CUBLAS_STATUS_ALLOC_FAILED ? D3SR_ERR_MEMORY : D3SR_ERR_RUNTIME,
                     "cuBLAS error %s (%s) in %s at %s:%d", cublasGetStatusName(st), cublasGetStatusString(st), expr,
                     file, line);
}

#define BLAS_STATUS(expr) blas_check((expr), #expr, __FILE__, __LINE__)
#define BLAS_TRY(expr) D3SR_CHECK(BLAS_STATUS(expr))

static cudaDataType_t data_type(d3sr_dtype dtype)
{
    return dtype == D3SR_F32 ? CUDA_R_32F : dtype == D3SR_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

/* No TF32 for fp32 models: their results are checked against float64 references. */
static cublasComputeType_t compute_type(d3sr_dtype dtype)
{
    return dtype == D3SR_F32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
}

d3sr_status gemm_state_create(d3sr_ctx *ctx, gemm_state **out)
{
    cuda_state *s = cuda_state_of(ctx);
    gemm_state *g = (gemm_state *)calloc(1, sizeof *g);
    if (!g) return cuda_fail(D3SR_ERR_MEMORY, "out of host memory creating the cuBLAS state");
    *out = g; /* gemm_state_destroy frees what was made if a step below fails */
    g->dtype = ctx->dtype;
    g->verbose = s->verbose;
    BLAS_TRY(cublasCreate(&g->blas));
    BLAS_TRY(cublasSetStream(g->blas, s->stream));
    cublasMath_t math = ctx->dtype == D3SR_F32
                            ? CUBLAS_PEDANTIC_MATH
                            : (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
    BLAS_TRY(cublasSetMathMode(g->blas, math));
    BLAS_TRY(cublasLtCreate(&g->lt));
    cudaError_t err = cudaMalloc(&g->workspace, GEMM_WORKSPACE_BYTES);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return cuda_fail(D3SR_ERR_MEMORY, "out of GPU memory for the %zu MiB cuBLAS workspace",
                         GEMM_WORKSPACE_BYTES >> 20);
    }
    CUDA_TRY(err);
    BLAS_TRY(cublasSetWorkspace(g->blas, g->workspace, GEMM_WORKSPACE_BYTES));
    return D3SR_OK;
}

static void plan_release(gemm_plan *p)
{
    if (p->lc) (void)cublasLtMatrixLayoutDestroy(p->lc);
    if (p->lb) (void)cublasLtMatrixLayoutDestroy(p->lb);
    if (p->la) (void)cublasLtMatrixLayoutDestroy(p->la);
    if (p->desc) (void)cublasLtMatmulDescDestroy(p->desc);
    p->lc = p->lb = p->la = NULL;
    p->desc = NULL;
}

void gemm_state_destroy(gemm_state *g)
{
    if (!g) return;
    for (int i = 0; i < g->count; i++) plan_release(&g->plans[i]);
    free(g->plans);
    if (g->lt) (void)cublasLtDestroy(g->lt);
    if (g->blas) (void)cublasDestroy(g->blas);
    if (g->workspace) (void)cudaFree(g->workspace);
    free(g);
}

static unsigned alignment(const void *p)
{
    unsigned a = 256;
    while (a > 1 && ((uintptr_t)p % a)) a /= 2;
    return a;
}

/* Fills p's cuBLASLt objects and algorithm; p->lt = 0 when cuBLASLt offers
 * none for this shape (the caller then uses cublasGemmEx). */
static d3sr_status plan_make(gemm_state *g, gemm_plan *p)
{
    const cudaDataType_t dt = data_type(g->dtype);
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    cublasLtMatmulPreference_t pref = NULL;
    p->lt = 0;
    d3sr_status st = BLAS_STATUS(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    if (st == D3SR_OK)
        st = BLAS_STATUS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a));
    if (st == D3SR_OK)
        st = BLAS_STATUS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof trans_b));
    if (st == D3SR_OK && p->bias) {
        cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS; /* bias in D's type, one per row of D (m) */
        st = BLAS_STATUS(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                                        sizeof epilogue));
    }
    if (st == D3SR_OK) st = BLAS_STATUS(cublasLtMatrixLayoutCreate(&p->la, dt, p->k, p->m, p->k));
    if (st == D3SR_OK) st = BLAS_STATUS(cublasLtMatrixLayoutCreate(&p->lb, dt, p->k, p->n, p->k));
    if (st == D3SR_OK) st = BLAS_STATUS(cublasLtMatrixLayoutCreate(&p->lc, dt, p->m, p->n, p->m));
    if (st == D3SR_OK) st = BLAS_STATUS(cublasLtMatmulPreferenceCreate(&pref));
    if (st == D3SR_OK) {
        uint64_t bytes = GEMM_WORKSPACE_BYTES;
        /* Split-K partial sums stay in float32, never in the output type. */
        uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_INPLACE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
        const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        st = BLAS_STATUS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bytes,
                                                              sizeof bytes));
        if (st == D3SR_OK)
            st = BLAS_STATUS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                                  &schemes, sizeof schemes));
        for (int i = 0; i < 4 && st == D3SR_OK; i++) {
            uint32_t a = p->align[i];
            st = BLAS_STATUS(cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &a, sizeof a));
        }
    }
    if (st == D3SR_OK) {
        cublasLtMatmulHeuristicResult_t result;
        int found = 0;
        cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(g->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1,
                                                           &result, &found);
        if (hs == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS &&
            result.workspaceSize <= GEMM_WORKSPACE_BYTES) {
            p->algo = result.algo;
            p->lt = 1;
        } else if (hs != CUBLAS_STATUS_SUCCESS && hs != CUBLAS_STATUS_NOT_SUPPORTED) {
            st = BLAS_STATUS(hs);
        }
    }
    if (pref) (void)cublasLtMatmulPreferenceDestroy(pref);
    if (st != D3SR_OK || !p->lt) plan_release(p);
    if (st == D3SR_OK && g->verbose)
        fprintf(stderr, "d3sr cuda: gemm m=%d n=%d k=%d bias=%d residual=%d -> %s\n", p->m, p->n, p->k, p->bias,
                p->residual, p->lt ? "cuBLASLt, fused epilogue" : "cublasGemmEx + epilogue kernel");
    return st;
}

static d3sr_status plan_find(gemm_state *g, const gemm_plan *key, gemm_plan **out)
{
    for (int i = 0; i < g->count; i++) {
        gemm_plan *p = &g->plans[i];
        if (p->m == key->m && p->n == key->n && p->k == key->k && p->bias == key->bias &&
            p->residual == key->residual && !memcmp(p->align, key->align, sizeof p->align)) {
            *out = p;
            return D3SR_OK;
        }
    }
    if (g->count == g->capacity) {
        int capacity = g->capacity ? 2 * g->capacity : 64;
        gemm_plan *plans = (gemm_plan *)realloc(g->plans, (size_t)capacity * sizeof *plans);
        if (!plans) return cuda_fail(D3SR_ERR_MEMORY, "out of host memory for GEMM plans");
        g->plans = plans;
        g->capacity = capacity;
    }
    gemm_plan *p = &g->plans[g->count];
    *p = *key;
    p->desc = NULL;
    p->la = p->lb = p->lc = NULL;
    D3SR_CHECK(plan_make(g, p));
    g->count++;
    *out = p;
    return D3SR_OK;
}

d3sr_status cuda_gemm_rows(d3sr_ctx *ctx, const void *x, size_t rows, int n_in, const void *w, const void *bias,
                           const void *residual, void *out, int n_out)
{
    cuda_state *s = cuda_state_of(ctx);
    gemm_state *g = s->gemm;
    if (rows > INT_MAX)
        return cuda_fail(D3SR_ERR_VALUE, "linear: %zu rows are more than cuBLAS takes in one product", rows);
    gemm_plan key;
    memset(&key, 0, sizeof key);
    key.m = n_out;
    key.n = (int)rows;
    key.k = n_in;
    key.bias = bias != NULL;
    key.residual = residual != NULL;
    key.align[0] = alignment(w);
    key.align[1] = alignment(x);
    key.align[2] = alignment(residual ? residual : out);
    key.align[3] = alignment(out);
    gemm_plan *p = NULL;
    D3SR_CHECK(plan_find(g, &key, &p));
    const float one = 1.0f, zero = 0.0f;
    if (p->lt) {
        if (bias)
            BLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        BLAS_TRY(cublasLtMatmul(g->lt, p->desc, &one, w, p->la, x, p->lb, residual ? &one : &zero,
                                residual ? residual : out, p->lc, out, p->lc, &p->algo, g->workspace,
                                GEMM_WORKSPACE_BYTES, s->stream));
        return D3SR_OK;
    }
    const cudaDataType_t dt = data_type(g->dtype);
    BLAS_TRY(cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, p->m, p->n, p->k, &one, w, dt, p->k, x, dt, p->k, &zero,
                          out, dt, p->m, compute_type(g->dtype), CUBLAS_GEMM_DEFAULT));
    return cuda_bias_residual(ctx, out, bias, residual, rows, n_out);
}

d3sr_status cuda_linear(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_linear *lin, const d3sr_tensor *residual,
                        d3sr_tensor *out)
{
    const size_t rows = d3sr_tensor_numel(x) / (size_t)lin->in;
    return cuda_gemm_rows(ctx, x->data, rows, lin->in, lin->weight.data, lin->bias.data,
                          residual ? residual->data : NULL, out->data, lin->out);
}

d3sr_status cuda_gemm_batched(d3sr_ctx *ctx, int trans_a, int trans_b, int m, int n, int k, float alpha,
                              const void *a, int lda, long long stride_a, const void *b, int ldb, long long stride_b,
                              float beta, void *c, gemm_type c_type, int ldc, long long stride_c, int batch)
{
    gemm_state *g = cuda_state_of(ctx)->gemm;
    const cudaDataType_t dt = data_type(g->dtype), ct = c_type == GEMM_F32 ? CUDA_R_32F : dt;
    BLAS_TRY(cublasGemmStridedBatchedEx(g->blas, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                        m, n, k, &alpha, a, dt, lda, stride_a, b, dt, ldb, stride_b, &beta, c, ct, ldc,
                                        stride_c, batch, compute_type(g->dtype), CUBLAS_GEMM_DEFAULT));
    return D3SR_OK;
}
