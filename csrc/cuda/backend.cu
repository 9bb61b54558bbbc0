/* backend.cu: libd3sr_cuda.so's entry point, its kernel table and the
 * per-model state.
 *
 * ops/device.c dlopens this library beside the core and calls
 * d3sr_cuda_backend() once: it checks the ABI, that a driver and a device of
 * compute capability 8.0+ are there and that the vendor libraries that loaded
 * are the ones built against, and returns the table, or NULL with the reason
 * in words. Each model's init makes its own stream, cuDNN handle and cuBLAS
 * handles (destroy releases them); memory is plain cudaMalloc/cudaFree, and a
 * free first waits for the model's stream, so a buffer never goes while a
 * kernel may still use it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.cuh"
#include "conv.cuh"
#include "elementwise.cuh"
#include "gemm.cuh"
#include "memory.cuh"
#include "norm.cuh"

const d3sr_core_services *cuda_core;

/* ---- errors ------------------------------------------------------------ */

d3sr_status cuda_fail(d3sr_status status, const char *fmt, ...)
{
    char message[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    return cuda_core->fail(status, "%s", message);
}

d3sr_status cuda_check(cudaError_t err, const char *expr, const char *file, int line)
{
    if (err == cudaSuccess) return D3SR_OK;
    if (err == cudaErrorMemoryAllocation) (void)cudaGetLastError(); /* not sticky: clear it */
    return cuda_fail(err == cudaErrorMemoryAllocation ? D3SR_ERR_MEMORY : D3SR_ERR_RUNTIME,
                     "CUDA error %s (%s) in %s at %s:%d", cudaGetErrorName(err), cudaGetErrorString(err), expr, file,
                     line);
}

/* ---- per-model state --------------------------------------------------- */

static void cuda_destroy(d3sr_ctx *ctx)
{
    cuda_state *s = cuda_state_of(ctx);
    if (!s) return;
    if (s->stream) (void)cudaStreamSynchronize(s->stream);
    gemm_state_destroy(s->gemm);
    conv_state_destroy(s->conv);
    if (s->stream) (void)cudaStreamDestroy(s->stream);
    free(s);
    ctx->backend_state = NULL;
}

static int env_is(const char *name, const char *value)
{
    const char *v = getenv(name);
    return v && strcmp(v, value) == 0;
}

static d3sr_status cuda_init(d3sr_ctx *ctx)
{
    cuda_state *s = (cuda_state *)calloc(1, sizeof *s);
    if (!s) return cuda_fail(D3SR_ERR_MEMORY, "out of host memory creating a CUDA context");
    ctx->backend_state = s; /* cuda_destroy releases whatever is made below, also after a failure */
    s->verbose = env_is("D3SR_CUDA_VERBOSE", "1");
    s->attention = env_is("D3SR_CUDA_ATTENTION", "generic")   ? ATTENTION_GENERIC
                   : env_is("D3SR_CUDA_ATTENTION", "chunked") ? ATTENTION_CHUNKED
                                                              : ATTENTION_AUTO;
    int smem = 0;
    CUDA_TRY(cudaGetDevice(&s->device));
    CUDA_TRY(cudaDeviceGetAttribute(&s->sm_count, cudaDevAttrMultiProcessorCount, s->device));
    CUDA_TRY(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, s->device));
    s->smem_optin = (size_t)smem;
    CUDA_TRY(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    D3SR_CHECK(conv_state_create(ctx, &s->conv));
    D3SR_CHECK(gemm_state_create(ctx, &s->gemm));
    return D3SR_OK;
}

static d3sr_status cuda_alloc(d3sr_ctx *ctx, size_t bytes, void **out)
{
    (void)ctx;
    cudaError_t err = cudaMalloc(out, bytes ? bytes : 256);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        size_t free_bytes = 0, total = 0;
        (void)cudaMemGetInfo(&free_bytes, &total);
        *out = NULL;
        return cuda_fail(D3SR_ERR_MEMORY, "out of GPU memory allocating %.1f MiB (%.1f of %.1f MiB free)",
                         bytes / 1048576.0, free_bytes / 1048576.0, total / 1048576.0);
    }
    CUDA_TRY(err);
    return D3SR_OK;
}

static void cuda_free(d3sr_ctx *ctx, void *p)
{
    cuda_state *s = cuda_state_of(ctx);
    if (!p) return;
    if (s && s->stream) (void)cudaStreamSynchronize(s->stream);
    (void)cudaFree(p);
}

/* Profiling times kernels, not launches: it waits for the model's stream. */
static d3sr_status cuda_synchronize(d3sr_ctx *ctx)
{
    CUDA_TRY(cudaStreamSynchronize(cuda_state_of(ctx)->stream));
    return D3SR_OK;
}

/* Designated initialisers (C++20): a field named wrongly or out of struct
 * d3sr_backend's order does not compile. The metrics' pooling and statistics
 * kernels are not implemented on CUDA: left out, they are NULL, which is how
 * a backend declares it lacks them (d3sr_ctx_require names them when a model
 * that needs them is created on this device). */
static const d3sr_backend cuda_backend = {
    .name = "cuda",
    .init = cuda_init,
    .destroy = cuda_destroy,
    .synchronize = cuda_synchronize,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload_weight = cuda_upload_weight,
    .upload = cuda_upload,
    .download = cuda_download,
    .upload_nchw = cuda_upload_nchw,
    .download_nchw = cuda_download_nchw,
    .conv2d = cuda_conv2d,
    .linear = cuda_linear,
    .group_norm = cuda_group_norm,
    .group_stats = cuda_group_stats,
    .group_norm_with = cuda_group_norm_with,
    .attention = cuda_attention,
    .layer_norm = cuda_layer_norm,
    .upsample_nearest = cuda_upsample_nearest,
    .geglu = cuda_geglu,
    .activation = cuda_activation,
    .add_inplace = cuda_add_inplace,
    .add_channel_offset = cuda_add_channel_offset,
    .concat_channels = cuda_concat_channels,
};

/* ---- entry ------------------------------------------------------------- */

/* A kernel whose attributes tell whether this build has code for the device. */
__global__ void probe_kernel(int *p)
{
    if (p) *p = 0;
}

/* Why the driver or device cannot run the backend, in words; "" if it can. */
static void check_device(char *why, size_t why_size)
{
    int driver = 0, count = 0;
    (void)cudaDriverGetVersion(&driver);
    if (driver == 0) {
        snprintf(why, why_size, "no NVIDIA driver was found (libcuda.so.1 did not load)");
        return;
    }
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err == cudaErrorInsufficientDriver) {
        snprintf(why, why_size, "the NVIDIA driver supports CUDA %d.%d, older than the CUDA %d.%d runtime d3sr was built with (%s)",
                 driver / 1000, driver % 1000 / 10, CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10,
                 cudaGetErrorName(err));
        return;
    }
    if (err == cudaErrorNoDevice || (err == cudaSuccess && count == 0)) {
        snprintf(why, why_size, "no CUDA device is visible (%s; check CUDA_VISIBLE_DEVICES)", cudaGetErrorName(err));
        return;
    }
    if (err != cudaSuccess) {
        snprintf(why, why_size, "the CUDA runtime cannot start: %s (%s)", cudaGetErrorName(err), cudaGetErrorString(err));
        return;
    }
    int device = 0, major = 0, minor = 0;
    cudaDeviceProp prop;
    if ((err = cudaGetDevice(&device)) != cudaSuccess || (err = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) {
        snprintf(why, why_size, "cannot query the CUDA device: %s (%s)", cudaGetErrorName(err), cudaGetErrorString(err));
        return;
    }
    major = prop.major;
    minor = prop.minor;
    if (major < 8) {
        snprintf(why, why_size, "GPU %d (%s) has compute capability %d.%d; d3sr's CUDA backend needs 8.0 or newer",
                 device, prop.name, major, minor);
        return;
    }
    cudaFuncAttributes attr;
    err = cudaFuncGetAttributes(&attr, probe_kernel);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(why, why_size, "this build has no code for GPU %d (%s, compute capability %d.%d): %s; rebuild with D3SR_CUDA_ARCHS=%d%d",
                 device, prop.name, major, minor, cudaGetErrorName(err), major, minor);
        return;
    }
    why[0] = '\0';
}

extern "C" __attribute__((visibility("default"))) const d3sr_backend *
d3sr_cuda_backend(const d3sr_core_services *core, char *why, size_t why_size)
{
    if (!core || core->abi != D3SR_BACKEND_ABI) {
        snprintf(why, why_size, "libd3sr_cuda.so speaks backend ABI %d, the core %d: they come from different builds; reinstall d3sr",
                 D3SR_BACKEND_ABI, core ? core->abi : -1);
        return NULL;
    }
    check_device(why, why_size);
    if (why[0]) return NULL;
    if (!conv_library_ok(why, why_size)) return NULL;
    cuda_core = core;
    return &cuda_backend;
}
