/* memory.cu: weight upload, activation upload/download, NCHW <-> NHWC.
 *
 * Weights get their own cudaMalloc (they live as long as the model); their
 * float32 host copy goes through a temporary device buffer and one kernel
 * converts it to ctx->dtype and, for convolutions, reorders PyTorch's
 * [cout, cin, kh, kw] into [cout, kh, kw, cin] (cuDNN's NHWC filter, the CPU
 * backend's layout too). Activations stage through the model's workspace,
 * so no forward pass allocates once its shapes have been seen.
 */
#include "memory.cuh"

#define THREADS 256
#define TILE 32
#define TILE_ROWS 8

/* ---- weights ----------------------------------------------------------- */

/* dst = src in T; for reorder, src is [cout, cin, kh, kw] and dst [cout, kh, kw, cin]. */
template <typename T>
__global__ void weight_kernel(const float *src, T *dst, size_t count, int reorder, int cin, int kh, int kw)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        size_t from = i;
        if (reorder) { /* i indexes [o, y, x, c] */
            size_t c = i % cin, rest = i / cin;
            size_t x = rest % kw, y = rest / kw % kh, o = rest / kw / kh;
            from = ((o * cin + c) * kh + y) * kw + x;
        }
        dst[i] = from_f32<T>(src[from]);
    }
}

d3sr_status cuda_upload_weight(d3sr_ctx *ctx, d3sr_weight_kind kind, const float *host, d3sr_tensor *dst)
{
    cuda_state *s = cuda_state_of(ctx);
    const size_t count = d3sr_tensor_numel(dst), bytes = count * dtype_bytes(ctx->dtype);
    /* Conv weights as ops.c shapes them: n = cout, h = kh, w = kw, c = cin. */
    const int reorder = kind == D3SR_WEIGHT_CONV && dst->h * dst->w > 1;
    void *data = NULL;
    float *staging = NULL;
    cudaError_t err = cudaMalloc(&data, bytes ? bytes : 1);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return cuda_fail(D3SR_ERR_MEMORY, "out of GPU memory for a weight of %zu bytes", bytes);
    }
    d3sr_status st = CUDA_STATUS(err);
    if (st == D3SR_OK && ctx->dtype == D3SR_F32 && !reorder) {
        st = CUDA_STATUS(cudaMemcpyAsync(data, host, bytes, cudaMemcpyHostToDevice, s->stream));
    } else if (st == D3SR_OK) {
        err = cudaMalloc(&staging, count * sizeof(float));
        if (err == cudaErrorMemoryAllocation) {
            (void)cudaGetLastError();
            st = cuda_fail(D3SR_ERR_MEMORY, "out of GPU memory staging a weight of %zu floats", count);
        } else {
            st = CUDA_STATUS(err);
        }
        if (st == D3SR_OK)
            st = CUDA_STATUS(cudaMemcpyAsync(staging, host, count * sizeof(float), cudaMemcpyHostToDevice, s->stream));
        if (st == D3SR_OK)
            st = by_dtype(ctx->dtype, [&](auto tag) {
                typedef typename decltype(tag)::type T;
                weight_kernel<T><<<cuda_blocks(ctx, count, THREADS), THREADS, 0, s->stream>>>(
                    staging, (T *)data, count, reorder, dst->c, dst->h, dst->w);
                CUDA_LAUNCHED();
                return D3SR_OK;
            });
    }
    if (st == D3SR_OK) st = CUDA_STATUS(cudaStreamSynchronize(s->stream));
    if (staging) (void)cudaFree(staging);
    if (st != D3SR_OK) {
        (void)cudaFree(data);
        return st;
    }
    dst->data = data;
    return D3SR_OK;
}

/* ---- activations ------------------------------------------------------- */

template <typename T> __global__ void to_storage_kernel(const float *src, T *dst, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = from_f32<T>(src[i]);
}

template <typename T> __global__ void to_float_kernel(const T *src, float *dst, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = to_f32(src[i]);
}

d3sr_status cuda_upload(d3sr_ctx *ctx, const float *host, d3sr_tensor *dst)
{
    cuda_state *s = cuda_state_of(ctx);
    const size_t count = d3sr_tensor_numel(dst);
    if (ctx->dtype == D3SR_F32) {
        CUDA_TRY(cudaMemcpyAsync(dst->data, host, count * sizeof(float), cudaMemcpyHostToDevice, s->stream));
        return D3SR_OK;
    }
    float *staging;
    D3SR_CHECK(cuda_core->workspace(ctx, count * sizeof(float), (void **)&staging));
    CUDA_TRY(cudaMemcpyAsync(staging, host, count * sizeof(float), cudaMemcpyHostToDevice, s->stream));
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        to_storage_kernel<T><<<cuda_blocks(ctx, count, THREADS), THREADS, 0, s->stream>>>(staging, (T *)dst->data, count);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}

d3sr_status cuda_download(d3sr_ctx *ctx, const d3sr_tensor *src, float *host)
{
    cuda_state *s = cuda_state_of(ctx);
    const size_t count = d3sr_tensor_numel(src);
    const float *from = (const float *)src->data;
    if (ctx->dtype != D3SR_F32) {
        float *staging;
        D3SR_CHECK(cuda_core->workspace(ctx, count * sizeof(float), (void **)&staging));
        D3SR_CHECK(by_dtype(ctx->dtype, [&](auto tag) {
            typedef typename decltype(tag)::type T;
            to_float_kernel<T><<<cuda_blocks(ctx, count, THREADS), THREADS, 0, s->stream>>>((const T *)src->data,
                                                                                             staging, count);
            CUDA_LAUNCHED();
            return D3SR_OK;
        }));
        from = staging;
    }
    CUDA_TRY(cudaMemcpyAsync(host, from, count * sizeof(float), cudaMemcpyDeviceToHost, s->stream));
    CUDA_TRY(cudaStreamSynchronize(s->stream));
    return D3SR_OK;
}

/* Per sample: src [channels, pixels] float32 -> dst [pixels, channels] in T,
 * through a padded shared tile so both sides are read and written in rows. */
template <typename T>
__global__ void nchw_to_nhwc_kernel(const float *src, T *dst, int channels, size_t pixels)
{
    __shared__ float tile[TILE][TILE + 1];
    const size_t p0 = (size_t)blockIdx.x * TILE, b = blockIdx.z;
    const int c0 = blockIdx.y * TILE;
    for (int k = threadIdx.y; k < TILE; k += TILE_ROWS) {
        int c = c0 + k;
        size_t p = p0 + threadIdx.x;
        if (c < channels && p < pixels) tile[k][threadIdx.x] = src[(b * channels + c) * pixels + p];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < TILE; k += TILE_ROWS) {
        int c = c0 + threadIdx.x;
        size_t p = p0 + k;
        if (c < channels && p < pixels) dst[(b * pixels + p) * channels + c] = from_f32<T>(tile[threadIdx.x][k]);
    }
}

/* Per sample: src [pixels, channels] in T, channels [c0, c0 + kept) -> dst [kept, pixels] float32. */
template <typename T>
__global__ void nhwc_to_nchw_kernel(const T *src, float *dst, int channels, int c0, int kept, size_t pixels)
{
    __shared__ float tile[TILE][TILE + 1];
    const size_t p0 = (size_t)blockIdx.x * TILE, b = blockIdx.z;
    const int k0 = blockIdx.y * TILE;
    for (int r = threadIdx.y; r < TILE; r += TILE_ROWS) {
        int k = k0 + threadIdx.x;
        size_t p = p0 + r;
        if (k < kept && p < pixels) tile[r][threadIdx.x] = to_f32(src[(b * pixels + p) * channels + c0 + k]);
    }
    __syncthreads();
    for (int r = threadIdx.y; r < TILE; r += TILE_ROWS) {
        int k = k0 + r;
        size_t p = p0 + threadIdx.x;
        if (k < kept && p < pixels) dst[(b * kept + k) * pixels + p] = tile[threadIdx.x][r];
    }
}

static d3sr_status grid_for(const d3sr_tensor *t, int channels, dim3 *grid)
{
    const size_t pixels = d3sr_tensor_pixels(t);
    if (t->n > 65535)
        return cuda_fail(D3SR_ERR_VALUE, "CUDA backend: a batch of %d is more than 65535 samples", t->n);
    *grid = dim3((unsigned)((pixels + TILE - 1) / TILE), (unsigned)((channels + TILE - 1) / TILE), (unsigned)t->n);
    return D3SR_OK;
}

d3sr_status cuda_upload_nchw(d3sr_ctx *ctx, const float *host, d3sr_tensor *dst)
{
    cuda_state *s = cuda_state_of(ctx);
    const size_t count = d3sr_tensor_numel(dst), pixels = d3sr_tensor_pixels(dst);
    float *staging;
    dim3 grid;
    D3SR_CHECK(grid_for(dst, dst->c, &grid));
    D3SR_CHECK(cuda_core->workspace(ctx, count * sizeof(float), (void **)&staging));
    CUDA_TRY(cudaMemcpyAsync(staging, host, count * sizeof(float), cudaMemcpyHostToDevice, s->stream));
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        nchw_to_nhwc_kernel<T><<<grid, dim3(TILE, TILE_ROWS), 0, s->stream>>>(staging, (T *)dst->data, dst->c, pixels);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}

d3sr_status cuda_download_nchw(d3sr_ctx *ctx, const d3sr_tensor *src, int c0, int c1, float *host)
{
    cuda_state *s = cuda_state_of(ctx);
    const int kept = c1 - c0;
    const size_t pixels = d3sr_tensor_pixels(src), count = (size_t)src->n * kept * pixels;
    float *staging;
    dim3 grid;
    D3SR_CHECK(grid_for(src, kept, &grid));
    D3SR_CHECK(cuda_core->workspace(ctx, count * sizeof(float), (void **)&staging));
    D3SR_CHECK(by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        nhwc_to_nchw_kernel<T><<<grid, dim3(TILE, TILE_ROWS), 0, s->stream>>>((const T *)src->data, staging, src->c,
                                                                                c0, kept, pixels);
        CUDA_LAUNCHED();
        return D3SR_OK;
    }));
    CUDA_TRY(cudaMemcpyAsync(host, staging, count * sizeof(float), cudaMemcpyDeviceToHost, s->stream));
    CUDA_TRY(cudaStreamSynchronize(s->stream));
    return D3SR_OK;
}
