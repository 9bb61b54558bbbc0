/* backend.cuh: what every file of the CUDA backend shares.
 *
 * The backend lives in libd3sr_cuda.so, loaded by ops/device.c. Its only
 * global is the core's service table (cuda_core), handed over by
 * d3sr_cuda_backend(); everything else is per model, in cuda_state at
 * ctx->backend_state: the stream every kernel and library call runs on, and
 * the cuDNN (conv.cu) and cuBLAS/cuBLASLt (gemm.cu) state, opaque here so
 * that each vendor library stays inside its one file.
 *
 * Conventions: tensors are channels-last [n, h, w, c] in ctx->dtype (fp32,
 * fp16 or bf16); kernels load to float, compute in float and round once when
 * they store. Every CUDA call is checked and a failure becomes a d3sr_status
 * with the expression, file, line and CUDA's own message; nothing here exits,
 * aborts or prints to stdout.
 */
#ifndef D3SR_CUDA_BACKEND_CUH
#define D3SR_CUDA_BACKEND_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "../core/status.h"
#include "../ops/backend.h"
}

/* The core's services (errors, workspace); set once by d3sr_cuda_backend. */
extern const d3sr_core_services *cuda_core;

struct conv_state; /* conv.cu: cuDNN handle and convolution plans */
struct gemm_state; /* gemm.cu: cuBLAS and cuBLASLt handles, GEMM plans, their workspace */

typedef enum { ATTENTION_AUTO, ATTENTION_GENERIC, ATTENTION_CHUNKED } attention_mode;

/* One model's CUDA state (ctx->backend_state). */
typedef struct cuda_state {
    int device;
    int sm_count;
    size_t smem_optin;        /* shared memory a block may opt in to */
    cudaStream_t stream;      /* owned: every kernel and library call of this model */
    struct conv_state *conv;  /* owned */
    struct gemm_state *gemm;  /* owned */
    attention_mode attention; /* D3SR_CUDA_ATTENTION: force a path, for debugging */
    int verbose;              /* D3SR_CUDA_VERBOSE=1: plan choices to stderr */
} cuda_state;

static inline cuda_state *cuda_state_of(const d3sr_ctx *ctx) { return (cuda_state *)ctx->backend_state; }

/* ---- errors ------------------------------------------------------------ */

/* Formats a message into the core's thread-local error and returns status. */
d3sr_status cuda_fail(d3sr_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* D3SR_OK, or the failure of a CUDA runtime call as a status and message. */
d3sr_status cuda_check(cudaError_t err, const char *expr, const char *file, int line);

#define CUDA_STATUS(expr) cuda_check((expr), #expr, __FILE__, __LINE__)
#define CUDA_TRY(expr) D3SR_CHECK(CUDA_STATUS(expr))
/* After a kernel launch: a bad launch configuration shows up here. */
#define CUDA_LAUNCHED() CUDA_TRY(cudaGetLastError())

/* ---- dtypes ------------------------------------------------------------ */

template <typename T> struct type_tag { typedef T type; };

/* Calls f(type_tag<T>()) with T the storage type of dtype: the one switch
 * from a run-time dtype to the templated launchers. */
template <typename F> static inline d3sr_status by_dtype(d3sr_dtype dtype, F &&f)
{
    switch (dtype) {
    case D3SR_F32: return f(type_tag<float>());
    case D3SR_F16: return f(type_tag<__half>());
    case D3SR_BF16: return f(type_tag<__nv_bfloat16>());
    }
    return cuda_fail(D3SR_ERR_TYPE, "CUDA backend: unknown dtype %d", (int)dtype);
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/* N consecutive values moved as one access (16 bytes for 8 halves or 4 floats). */
template <typename T, int N> struct alignas(sizeof(T) * N) pack {
    T v[N];
};

template <typename T, int N> __device__ __forceinline__ void load_f32(const T *p, float (&f)[N])
{
    pack<T, N> q = *reinterpret_cast<const pack<T, N> *>(p);
#pragma unroll
    for (int i = 0; i < N; i++) f[i] = to_f32(q.v[i]);
}

template <typename T, int N> __device__ __forceinline__ void store_f32(T *p, const float (&f)[N])
{
    pack<T, N> q;
#pragma unroll
    for (int i = 0; i < N; i++) q.v[i] = from_f32<T>(f[i]);
    *reinterpret_cast<pack<T, N> *>(p) = q;
}

/* Elements of T in one 16-byte access. */
template <typename T> struct vec16 {
    static const int n = 16 / sizeof(T);
};

static inline int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

static inline size_t dtype_bytes(d3sr_dtype dtype) { return d3sr_dtype_size(dtype); }

static inline cudaStream_t cuda_stream(const d3sr_ctx *ctx) { return cuda_state_of(ctx)->stream; }

/* Blocks for a grid-stride loop over items: enough to fill the GPU, no more. */
static inline unsigned cuda_blocks(const d3sr_ctx *ctx, size_t items, int threads)
{
    size_t need = (items + (size_t)threads - 1) / (size_t)threads;
    size_t cap = (size_t)cuda_state_of(ctx)->sm_count * 16;
    if (need < 1) need = 1;
    return (unsigned)(need < cap ? need : cap);
}

/* Workspace bytes rounded so that pieces carved from it stay 256-byte aligned. */
static inline size_t round256(size_t bytes) { return (bytes + 255) / 256 * 256; }

#endif /* D3SR_CUDA_BACKEND_CUH */
