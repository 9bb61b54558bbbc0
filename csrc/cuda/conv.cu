/* conv.cu: convolutions on cuDNN, the only file that includes cudnn.h.
 *
 * A plan per shape (cuDNN descriptors for NHWC data and an NHWC filter, the
 * algorithm, its workspace) is made at the first call and kept for the
 * model's life. The algorithm comes from cuDNN's heuristic, or with
 * D3SR_CUDNN_SEARCH=1 from timing the candidates once (cudnnFind...Ex).
 * fp16/bf16 run on tensor cores with float32 accumulation; fp32 is held to
 * FMA kernels (no TF32) and to algorithms exact up to float32 rounding (no
 * FFT, no non-fused Winograd), since fp32 results are verified against
 * float64 references.
 *
 * cuDNN pads symmetrically; asymmetric padding (the VAE's (0, 1, 0, 1)
 * downsampling) runs on a zero-padded copy in the workspace. Bias and residual
 * are one elementwise pass after the convolution (elementwise.cu); 1x1
 * stride-1 convolutions go to gemm.cu, which fuses both. Where cuDNN offers
 * no algorithm, a direct kernel here computes the same convolution (slowly,
 * and D3SR_CUDA_VERBOSE=1 says so); D3SR_CUDA_CONV=direct forces it, to check
 * cuDNN against it.
 *
 * Tuning notes: cudnnConvolutionBiasActivationForward or the graph API's
 * runtime fusion could fold the epilogue into the convolution; cin = 3 or 4
 * (conv_in) may run faster padded to 8 channels.
 */
#include <cudnn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv.cuh"
#include "elementwise.cuh"
#include "gemm.cuh"

#define SEARCH_WORKSPACE_BYTES ((size_t)256 << 20)
#define MAX_WORKSPACE_BYTES ((size_t)1 << 30)
#define KEY_INTS 12

typedef struct {
    int key[KEY_INTS];        /* n, h, w, cin, cout, kh, kw, stride, pad top, bottom, left, right */
    int direct;               /* 1: the direct kernel below */
    int padded;               /* 1: cuDNN runs on a zero-padded copy (asymmetric padding) */
    int searched;             /* the algorithm was timed (D3SR_CUDNN_SEARCH) */
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    cudnnConvolutionFwdAlgo_t algo;
    size_t ws_bytes;
} conv_plan;

struct conv_state {
    cudnnHandle_t dnn;  /* owned */
    conv_plan *plans;   /* owned */
    int count, capacity;
    d3sr_dtype dtype;
    int search;         /* D3SR_CUDNN_SEARCH=1 */
    int force_direct;   /* D3SR_CUDA_CONV=direct */
    int verbose;
};

static d3sr_status dnn_check(cudnnStatus_t st, const char *expr, const char *file, int line)
{
    if (st == CUDNN_STATUS_SUCCESS) return D3SR_OK;
    char detail[512] = "";
    cudnnGetLastErrorString(detail, sizeof detail);
    d3sr_status status = st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
                                 st == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED
                             ? D3SR_ERR_MEMORY
                             : D3SR_ERR_RUNTIME;
    return cuda_fail(status, "cuDNN error %d (%s) in %s at %s:%d%s%s", (int)st, cudnnGetErrorString(st), expr, file,
                     line, detail[0] ? ": " : "", detail);
}

#define DNN_STATUS(expr) dnn_check((expr), #expr, __FILE__, __LINE__)
#define DNN_TRY(expr) D3SR_CHECK(DNN_STATUS(expr))

int conv_library_ok(char *why, size_t why_size)
{
    size_t version = cudnnGetVersion();
    if (version / 10000 != CUDNN_MAJOR) {
        snprintf(why, why_size, "the cuDNN found at run time is version %zu.%zu, d3sr's CUDA backend was built for %d.x",
                 version / 10000, version / 100 % 100, CUDNN_MAJOR);
        return 0;
    }
    return 1;
}

d3sr_status conv_state_create(d3sr_ctx *ctx, conv_state **out)
{
    cuda_state *s = cuda_state_of(ctx);
    conv_state *c = (conv_state *)calloc(1, sizeof *c);
    if (!c) return cuda_fail(D3SR_ERR_MEMORY, "out of host memory creating the cuDNN state");
    *out = c; /* conv_state_destroy frees what was made if a step below fails */
    c->dtype = ctx->dtype;
    c->verbose = s->verbose;
    const char *search = getenv("D3SR_CUDNN_SEARCH"), *mode = getenv("D3SR_CUDA_CONV");
    c->search = search && strcmp(search, "1") == 0;
    c->force_direct = mode && strcmp(mode, "direct") == 0;
    DNN_TRY(cudnnCreate(&c->dnn));
    DNN_TRY(cudnnSetStream(c->dnn, s->stream));
    return D3SR_OK;
}

static void plan_release(conv_plan *p)
{
    if (p->cd) (void)cudnnDestroyConvolutionDescriptor(p->cd);
    if (p->wd) (void)cudnnDestroyFilterDescriptor(p->wd);
    if (p->yd) (void)cudnnDestroyTensorDescriptor(p->yd);
    if (p->xd) (void)cudnnDestroyTensorDescriptor(p->xd);
    p->cd = NULL;
    p->wd = NULL;
    p->xd = p->yd = NULL;
}

void conv_state_destroy(conv_state *c)
{
    if (!c) return;
    for (int i = 0; i < c->count; i++) plan_release(&c->plans[i]);
    free(c->plans);
    if (c->dnn) (void)cudnnDestroy(c->dnn);
    free(c);
}

static const char *algo_name(cudnnConvolutionFwdAlgo_t a)
{
    switch (a) {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: return "IMPLICIT_GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM: return "IMPLICIT_PRECOMP_GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM: return "GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_DIRECT: return "DIRECT";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT: return "FFT";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING: return "FFT_TILING";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD: return "WINOGRAD";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED: return "WINOGRAD_NONFUSED";
    default: return "?";
    }
}

static cudnnDataType_t dnn_type(d3sr_dtype dtype)
{
    return dtype == D3SR_F32 ? CUDNN_DATA_FLOAT : dtype == D3SR_F16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}

/* Whether a candidate of cuDNN's list may serve this model's dtype. */
static int acceptable(const conv_state *c, const cudnnConvolutionFwdAlgoPerf_t *perf)
{
    if (perf->status != CUDNN_STATUS_SUCCESS || perf->memory > MAX_WORKSPACE_BYTES) return 0;
    if (c->dtype != D3SR_F32) return 1;
    return perf->algo != CUDNN_CONVOLUTION_FWD_ALGO_FFT && perf->algo != CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING &&
           perf->algo != CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED &&
           (perf->mathType == CUDNN_FMA_MATH || perf->mathType == CUDNN_DEFAULT_MATH);
}

/* Takes a candidate: its math type (fp32 stays on FMA) and exact workspace. */
static d3sr_status plan_take(conv_state *c, conv_plan *p, const cudnnConvolutionFwdAlgoPerf_t *perf)
{
    if (c->dtype != D3SR_F32) DNN_TRY(cudnnSetConvolutionMathType(p->cd, perf->mathType));
    p->algo = perf->algo;
    DNN_TRY(cudnnGetConvolutionForwardWorkspaceSize(c->dnn, p->xd, p->wd, p->cd, p->yd, p->algo, &p->ws_bytes));
    return D3SR_OK;
}

static void plan_report(const conv_state *c, const conv_plan *p, const char *how)
{
    if (!c->verbose) return;
    const int *k = p->key;
    if (p->direct)
        fprintf(stderr, "d3sr cuda: conv [%d,%d,%d,%d] -> %d, %dx%d /%d: direct kernel (%s)\n", k[0], k[1], k[2], k[3], k[4],
                k[5], k[6], k[7], how);
    else
        fprintf(stderr, "d3sr cuda: conv [%d,%d,%d,%d] -> %d, %dx%d /%d%s: cuDNN %s, %zu KiB workspace (%s)\n", k[0], k[1],
                k[2], k[3], k[4], k[5], k[6], k[7], p->padded ? " padded" : "", algo_name(p->algo), p->ws_bytes >> 10,
                how);
}

/* Descriptors and the heuristic's choice; p->direct when cuDNN offers nothing. */
static d3sr_status plan_make(conv_state *c, conv_plan *p)
{
    const int *k = p->key;
    const int n = k[0], h = k[1], w = k[2], cin = k[3], cout = k[4], kh = k[5], kw = k[6], stride = k[7];
    const int pt = k[8], pb = k[9], pl = k[10], pr = k[11];
    const cudnnDataType_t dt = dnn_type(c->dtype);
    p->padded = pt != pb || pl != pr;
    const int hp = p->padded ? h + pt + pb : h, wp = p->padded ? w + pl + pr : w;
    const int ph = p->padded ? 0 : pt, pw = p->padded ? 0 : pl;
    const int ho = (h + pt + pb - kh) / stride + 1, wo = (w + pl + pr - kw) / stride + 1;
    if (c->force_direct || (size_t)n * hp * wp * cin > INT_MAX || (size_t)n * ho * wo * cout > INT_MAX) {
        p->direct = 1;
        plan_report(c, p, c->force_direct ? "D3SR_CUDA_CONV=direct" : "tensor too large for cuDNN's 4-d descriptors");
        return D3SR_OK;
    }
    DNN_TRY(cudnnCreateTensorDescriptor(&p->xd));
    DNN_TRY(cudnnCreateTensorDescriptor(&p->yd));
    DNN_TRY(cudnnCreateFilterDescriptor(&p->wd));
    DNN_TRY(cudnnCreateConvolutionDescriptor(&p->cd));
    DNN_TRY(cudnnSetTensor4dDescriptor(p->xd, CUDNN_TENSOR_NHWC, dt, n, cin, hp, wp));
    DNN_TRY(cudnnSetFilter4dDescriptor(p->wd, dt, CUDNN_TENSOR_NHWC, cout, cin, kh, kw));
    DNN_TRY(cudnnSetConvolution2dDescriptor(p->cd, ph, pw, stride, stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                            CUDNN_DATA_FLOAT));
    DNN_TRY(cudnnSetConvolutionMathType(p->cd, c->dtype == D3SR_F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
    int on, oc, oh, ow;
    DNN_TRY(cudnnGetConvolution2dForwardOutputDim(p->cd, p->xd, p->wd, &on, &oc, &oh, &ow));
    if (on != n || oc != cout || oh != ho || ow != wo)
        return cuda_fail(D3SR_ERR_RUNTIME, "cuDNN computes a [%d, %d, %d, %d] output where d3sr expects [%d, %d, %d, %d]",
                         on, oh, ow, oc, n, ho, wo, cout);
    DNN_TRY(cudnnSetTensor4dDescriptor(p->yd, CUDNN_TENSOR_NHWC, dt, n, cout, ho, wo));

    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = 0;
    DNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(c->dnn, p->xd, p->wd, p->cd, p->yd, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                   &returned, perf));
    for (int i = 0; i < returned; i++)
        if (acceptable(c, &perf[i])) {
            D3SR_CHECK(plan_take(c, p, &perf[i]));
            plan_report(c, p, "heuristic");
            return D3SR_OK;
        }
    p->direct = 1;
    plan_report(c, p, "cuDNN offers no algorithm for this shape and dtype");
    return D3SR_OK;
}

/* Times cuDNN's candidates on the real buffers once and keeps the fastest. */
static d3sr_status plan_search(d3sr_ctx *ctx, conv_state *c, conv_plan *p, const void *x, const void *w, void *y,
                               size_t pad_bytes)
{
    char *ws;
    D3SR_CHECK(cuda_core->workspace(ctx, pad_bytes + SEARCH_WORKSPACE_BYTES, (void **)&ws));
    if (p->padded) { /* the workspace may have moved: the caller pads again after this */
        const int *k = p->key;
        d3sr_tensor xt = {(void *)x, c->dtype, k[0], k[1], k[2], k[3]};
        D3SR_CHECK(cuda_pad_nhwc(ctx, &xt, k[8], k[9], k[10], k[11], ws));
        x = ws;
    }
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = 0;
    DNN_TRY(cudnnFindConvolutionForwardAlgorithmEx(c->dnn, p->xd, x, p->wd, w, p->cd, p->yd, y,
                                                   CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf, ws + pad_bytes,
                                                   SEARCH_WORKSPACE_BYTES));
    p->searched = 1;
    for (int i = 0; i < returned; i++) /* sorted fastest first */
        if (acceptable(c, &perf[i])) {
            D3SR_CHECK(plan_take(c, p, &perf[i]));
            plan_report(c, p, "timed");
            return D3SR_OK;
        }
    plan_report(c, p, "timing found nothing better than the heuristic");
    return D3SR_OK;
}

static d3sr_status plan_find(conv_state *c, const int key[KEY_INTS], conv_plan **out)
{
    for (int i = 0; i < c->count; i++)
        if (!memcmp(c->plans[i].key, key, sizeof c->plans[i].key)) {
            *out = &c->plans[i];
            return D3SR_OK;
        }
    if (c->count == c->capacity) {
        int capacity = c->capacity ? 2 * c->capacity : 64;
        conv_plan *plans = (conv_plan *)realloc(c->plans, (size_t)capacity * sizeof *plans);
        if (!plans) return cuda_fail(D3SR_ERR_MEMORY, "out of host memory for convolution plans");
        c->plans = plans;
        c->capacity = capacity;
    }
    conv_plan *p = &c->plans[c->count];
    memset(p, 0, sizeof *p);
    memcpy(p->key, key, sizeof p->key);
    d3sr_status st = plan_make(c, p);
    if (st != D3SR_OK) {
        plan_release(p);
        return st;
    }
    c->count++;
    *out = p;
    return D3SR_OK;
}

/* ---- the direct kernel ------------------------------------------------- */

/* One output value per thread: float32 sum over kh x kw x cin. */
template <typename T>
__global__ void conv_direct_kernel(const T *x, const T *w, T *y, int h, int wd, int cin, int cout, int kh, int kw,
                                   int stride, int pt, int pl, int ho, int wo, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int co = (int)(i % cout);
        size_t pixel = i / cout;
        int ox = (int)(pixel % wo), oy = (int)(pixel / wo % ho);
        size_t b = pixel / ((size_t)wo * ho);
        float acc = 0.0f;
        for (int ky = 0; ky < kh; ky++) {
            int iy = oy * stride - pt + ky;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < kw; kx++) {
                int ix = ox * stride - pl + kx;
                if (ix < 0 || ix >= wd) continue;
                const T *xp = x + ((b * h + iy) * wd + ix) * cin;
                const T *wp = w + (((size_t)co * kh + ky) * kw + kx) * cin;
                for (int ci = 0; ci < cin; ci++) acc += to_f32(xp[ci]) * to_f32(wp[ci]);
            }
        }
        y[i] = from_f32<T>(acc);
    }
}

static d3sr_status conv_direct(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_conv *cv, d3sr_tensor *out)
{
    const size_t total = d3sr_tensor_numel(out);
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        conv_direct_kernel<T><<<cuda_blocks(ctx, total, 256), 256, 0, cuda_stream(ctx)>>>(
            (const T *)x->data, (const T *)cv->weight.data, (T *)out->data, x->h, x->w, cv->cin, cv->cout, cv->kh,
            cv->kw, cv->stride, cv->pad_top, cv->pad_left, out->h, out->w, total);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}

/* ---- entry ------------------------------------------------------------- */

d3sr_status cuda_conv2d(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_conv *cv, const d3sr_tensor *residual,
                        d3sr_tensor *out)
{
    const void *bias = cv->bias.data, *res = residual ? residual->data : NULL;
    const size_t pixels = d3sr_tensor_numel(out) / (size_t)out->c;
    if (cv->kh == 1 && cv->kw == 1 && cv->stride == 1 && !cv->pad_top && !cv->pad_bottom && !cv->pad_left &&
        !cv->pad_right) /* weights [cout, 1, 1, cin] are a linear layer's [cout, cin] */
        return cuda_gemm_rows(ctx, x->data, pixels, cv->cin, cv->weight.data, bias, res, out->data, cv->cout);

    conv_state *c = cuda_state_of(ctx)->conv;
    const int key[KEY_INTS] = {x->n, x->h, x->w, cv->cin, cv->cout, cv->kh, cv->kw, cv->stride,
                               cv->pad_top, cv->pad_bottom, cv->pad_left, cv->pad_right};
    conv_plan *p = NULL;
    D3SR_CHECK(plan_find(c, key, &p));
    if (!p->direct) {
        const size_t pad_bytes =
            p->padded ? round256((size_t)x->n * (x->h + cv->pad_top + cv->pad_bottom) *
                                 (x->w + cv->pad_left + cv->pad_right) * cv->cin * dtype_bytes(ctx->dtype))
                      : 0;
        if (c->search && !p->searched) D3SR_CHECK(plan_search(ctx, c, p, x->data, cv->weight.data, out->data, pad_bytes));
        char *ws;
        D3SR_CHECK(cuda_core->workspace(ctx, pad_bytes + p->ws_bytes + 256, (void **)&ws));
        const void *xin = x->data;
        if (p->padded) {
            D3SR_CHECK(cuda_pad_nhwc(ctx, x, cv->pad_top, cv->pad_bottom, cv->pad_left, cv->pad_right, ws));
            xin = ws;
        }
        const float one = 1.0f, zero = 0.0f;
        cudnnStatus_t st = cudnnConvolutionForward(c->dnn, &one, p->xd, xin, p->wd, cv->weight.data, p->cd, p->algo,
                                                   p->ws_bytes ? ws + pad_bytes : NULL, p->ws_bytes, &zero, p->yd,
                                                   out->data);
        if (CUDNN_STATUS_CATEGORY(st) == CUDNN_STATUS_NOT_SUPPORTED) {
            /* The heuristic's choice refused to run: the direct kernel from now on. */
            p->direct = 1;
            plan_report(c, p, "cuDNN's algorithm refused to run");
        } else {
            DNN_TRY(st);
        }
    }
    if (p->direct) D3SR_CHECK(conv_direct(ctx, x, cv, out));
    return cuda_bias_residual(ctx, out->data, bias, res, pixels, cv->cout);
}
