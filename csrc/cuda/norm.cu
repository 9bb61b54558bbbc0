/* norm.cu: GroupNorm (+SiLU) and LayerNorm, channels-last.
 *
 * GroupNorm runs in three launches over x [n, pixels, c]:
 *   1. stats: each block reads a chunk of pixels of one sample, all channels,
 *      in rows of 16-byte vectors (each vector inside one group), keeps a
 *      Welford (count, mean, M2) per vector and merges them per group (Chan's
 *      formula) into partial[n, chunk, group];
 *   2. finalize: per sample, merges the chunks into mean and 1/std per group
 *      and folds gamma and beta into scale[c] and shift[c];
 *   3. apply: y = x * scale + shift (then SiLU), vectorised.
 * x is read twice and y written once, the least a norm over all pixels can
 * do without holding the sample on chip. Groups whose channel vectors do not
 * fit the block's layout (more than 2048 vectors a row) take a simple
 * per-group stats kernel instead. LayerNorm takes one warp per row, two passes
 * over the row (it stays in L1) for the mean and the variance.
 */
#include <stdlib.h>

#include "norm.cuh"

#define GN_THREADS 256
#define GN_MAX_K 8 /* channel vectors one thread covers in a row */

typedef struct {
    float n, mean, m2;
} welford;

__device__ __forceinline__ welford welford_merge(welford a, welford b)
{
    float n = a.n + b.n;
    if (b.n == 0.0f) return a;
    if (a.n == 0.0f) return b;
    float delta = b.mean - a.mean, fb = b.n / n;
    welford r;
    r.n = n;
    r.mean = a.mean + delta * fb;
    r.m2 = a.m2 + b.m2 + delta * delta * a.n * fb;
    return r;
}

/* Merges every thread's acc over a block of GN_THREADS threads (a tree in
 * shared memory, states[GN_THREADS]); every thread gets the block's total. */
__device__ __forceinline__ welford welford_block_merge(welford *states, welford acc)
{
    states[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = GN_THREADS / 2; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) states[threadIdx.x] = welford_merge(states[threadIdx.x], states[threadIdx.x + stride]);
        __syncthreads();
    }
    return states[0];
}

template <int V> __device__ __forceinline__ welford welford_of(const float (&v)[V])
{
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i++) s += v[i];
    welford w;
    w.n = (float)V;
    w.mean = s / (float)V;
    w.m2 = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i++) w.m2 += (v[i] - w.mean) * (v[i] - w.mean);
    return w;
}

/* Block (chunk, sample): pixels [chunk * rows_per_chunk, ...) of one sample.
 * Thread t covers row r = t / W of each step and channel vectors
 * t % W + k * W, k < K; W = min(c / V, GN_THREADS). */
template <typename T, int V>
__global__ void __launch_bounds__(GN_THREADS)
    gn_stats_kernel(const T *x, size_t pixels, int c, int cg, int groups, size_t rows_per_chunk, int chunks,
                    welford *partial)
{
    __shared__ welford states[GN_THREADS * GN_MAX_K];
    const int cv_count = c / V;
    const int W = cv_count < GN_THREADS ? cv_count : GN_THREADS;
    const int K = (cv_count + W - 1) / W;
    const int rows_at_once = GN_THREADS / W;
    const int t = threadIdx.x, r = t / W, cv0 = t % W;
    const int chunk = blockIdx.x, b = blockIdx.y;
    const size_t p0 = (size_t)chunk * rows_per_chunk;
    const size_t p1 = p0 + rows_per_chunk < pixels ? p0 + rows_per_chunk : pixels;
    const T *xs = x + (size_t)b * pixels * c;

    welford st[GN_MAX_K];
#pragma unroll
    for (int k = 0; k < GN_MAX_K; k++) st[k].n = st[k].mean = st[k].m2 = 0.0f;
    if (r < rows_at_once) {
        for (size_t p = p0 + r; p < p1; p += rows_at_once) {
#pragma unroll
            for (int k = 0; k < GN_MAX_K; k++) {
                int cv = cv0 + k * W;
                if (k < K && cv < cv_count) {
                    float v[V];
                    load_f32<T, V>(xs + p * c + (size_t)cv * V, v);
                    st[k] = welford_merge(st[k], welford_of<V>(v));
                }
            }
        }
    }
#pragma unroll
    for (int k = 0; k < GN_MAX_K; k++) states[t * GN_MAX_K + k] = st[k];
    __syncthreads();
    for (int g = t; g < groups; g += GN_THREADS) {
        welford acc = {0.0f, 0.0f, 0.0f};
        const int cv_end = (g + 1) * cg / V;
        for (int cv = g * cg / V; cv < cv_end; cv++) {
            int k = cv / W, tc = cv % W;
            for (int rr = 0; rr < rows_at_once; rr++) acc = welford_merge(acc, states[(rr * W + tc) * GN_MAX_K + k]);
        }
        partial[((size_t)b * chunks + chunk) * groups + g] = acc;
    }
}

/* Block (group, sample): the whole group, element by element; for layouts
 * gn_stats_kernel does not cover. Writes partial as one chunk. */
template <typename T>
__global__ void __launch_bounds__(GN_THREADS)
    gn_stats_generic_kernel(const T *x, size_t pixels, int c, int cg, int groups, welford *partial)
{
    __shared__ welford states[GN_THREADS];
    const int g = blockIdx.x, b = blockIdx.y;
    const T *xs = x + (size_t)b * pixels * c + (size_t)g * cg;
    welford acc = {0.0f, 0.0f, 0.0f};
    for (size_t i = threadIdx.x; i < pixels * cg; i += GN_THREADS) {
        welford one = {1.0f, to_f32(xs[(i / cg) * c + i % cg]), 0.0f};
        acc = welford_merge(acc, one);
    }
    const welford total = welford_block_merge(states, acc);
    if (threadIdx.x == 0) partial[(size_t)b * groups + g] = total;
}

/* Block per sample: scale_shift[b] = [scale[c] | shift[c]] from the merged chunks. */
template <typename T>
__global__ void gn_finalize_kernel(const welford *partial, int chunks, int groups, int c, int cg, float eps,
                                   const T *gamma, const T *beta, float *scale_shift)
{
    extern __shared__ float group_stats[]; /* [groups] mean, then [groups] 1/std */
    const int b = blockIdx.x;
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
        welford acc = {0.0f, 0.0f, 0.0f};
        for (int ch = 0; ch < chunks; ch++) acc = welford_merge(acc, partial[((size_t)b * chunks + ch) * groups + g]);
        group_stats[g] = acc.mean;
        group_stats[groups + g] = 1.0f / sqrtf(acc.m2 / acc.n + eps);
    }
    __syncthreads();
    float *scale = scale_shift + (size_t)b * 2 * c, *shift = scale + c;
    for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
        int g = ch / cg;
        float s = group_stats[groups + g] * to_f32(gamma[ch]);
        scale[ch] = s;
        shift[ch] = to_f32(beta[ch]) - group_stats[g] * s;
    }
}

template <typename T, int VEC>
__global__ void gn_apply_kernel(const T *x, T *y, const float *scale_shift, size_t pixels, int c, int silu,
                                size_t vectors)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < vectors; i += (size_t)gridDim.x * blockDim.x) {
        size_t e = i * VEC;
        int ch = (int)(e % c);
        size_t b = e / ((size_t)c * pixels);
        const float *scale = scale_shift + b * 2 * c + ch, *shift = scale + c;
        float v[VEC];
        load_f32<T, VEC>(x + e, v);
#pragma unroll
        for (int k = 0; k < VEC; k++) {
            float z = v[k] * scale[k] + shift[k];
            v[k] = silu ? z / (1.0f + expf(-z)) : z;
        }
        store_f32<T, VEC>(y + e, v);
    }
}

/* The widest vector (8, 4, 2 or 1 values, at most 16 bytes) that tiles each group. */
template <typename T> static int group_vector(int cg, const void *p)
{
    int v = vec16<T>::n;
    while (v > 1 && (cg % v || ((uintptr_t)p % (v * sizeof(T))))) v /= 2;
    return v;
}

template <typename T, int V>
static void launch_stats(d3sr_ctx *ctx, const T *x, size_t pixels, int c, int cg, int groups, size_t rows, int chunks,
                         int n, welford *partial)
{
    gn_stats_kernel<T, V><<<dim3((unsigned)chunks, (unsigned)n), GN_THREADS, 0, cuda_stream(ctx)>>>(
        x, pixels, c, cg, groups, rows, chunks, partial);
}

template <typename T>
static d3sr_status group_norm_typed(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, int silu,
                                    d3sr_tensor *out)
{
    cuda_state *s = cuda_state_of(ctx);
    const int n = x->n, c = x->c, groups = norm->groups, cg = c / groups;
    const size_t pixels = d3sr_tensor_pixels(x);
    const int V = group_vector<T>(cg, x->data);
    const int cv_count = c / V;
    const int fits = (cv_count + GN_THREADS - 1) / GN_THREADS <= GN_MAX_K;
    if (n > 65535) return cuda_fail(D3SR_ERR_VALUE, "group_norm: a batch of %d is more than 65535 samples", n);

    /* Chunks: about four blocks per multiprocessor in all, at least 16 pixels each. */
    int chunks = 1;
    size_t rows = pixels;
    if (fits) {
        size_t want = ((size_t)s->sm_count * 4 + n - 1) / n, most = (pixels + 15) / 16;
        size_t ch = want < most ? want : most;
        if (ch < 1) ch = 1;
        rows = (pixels + ch - 1) / ch;
        chunks = (int)((pixels + rows - 1) / rows);
    }
    const size_t partial_bytes = round256((size_t)n * chunks * groups * sizeof(welford));
    char *ws;
    D3SR_CHECK(cuda_core->workspace(ctx, partial_bytes + (size_t)n * 2 * c * sizeof(float), (void **)&ws));
    welford *partial = (welford *)ws;
    float *scale_shift = (float *)(ws + partial_bytes);

    const T *xd = (const T *)x->data;
    if (!fits) {
        gn_stats_generic_kernel<T><<<dim3((unsigned)groups, (unsigned)n), GN_THREADS, 0, s->stream>>>(
            xd, pixels, c, cg, groups, partial);
    } else if (V == 8) {
        launch_stats<T, (vec16<T>::n >= 8 ? 8 : 1)>(ctx, xd, pixels, c, cg, groups, rows, chunks, n, partial);
    } else if (V == 4) {
        launch_stats<T, 4>(ctx, xd, pixels, c, cg, groups, rows, chunks, n, partial);
    } else if (V == 2) {
        launch_stats<T, 2>(ctx, xd, pixels, c, cg, groups, rows, chunks, n, partial);
    } else {
        launch_stats<T, 1>(ctx, xd, pixels, c, cg, groups, rows, chunks, n, partial);
    }
    CUDA_LAUNCHED();

    const size_t finalize_smem = 2 * (size_t)groups * sizeof(float);
    if (finalize_smem > 48 * 1024)
        return cuda_fail(D3SR_ERR_VALUE, "group_norm: %d groups are more than the CUDA backend supports", groups);
    gn_finalize_kernel<T><<<n, 256, finalize_smem, s->stream>>>(partial, chunks, groups, c, cg, norm->eps,
                                                                (const T *)norm->gamma.data,
                                                                (const T *)norm->beta.data, scale_shift);
    CUDA_LAUNCHED();

    const size_t count = d3sr_tensor_numel(x);
    const int VA = vec16<T>::n;
    if (c % VA == 0 && aligned16(x->data) && aligned16(out->data))
        gn_apply_kernel<T, vec16<T>::n><<<cuda_blocks(ctx, count / VA, 256), 256, 0, s->stream>>>(
            xd, (T *)out->data, scale_shift, pixels, c, silu, count / VA);
    else
        gn_apply_kernel<T, 1><<<cuda_blocks(ctx, count, 256), 256, 0, s->stream>>>(xd, (T *)out->data, scale_shift,
                                                                                   pixels, c, silu, count);
    CUDA_LAUNCHED();
    return D3SR_OK;
}

d3sr_status cuda_group_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, int silu, d3sr_tensor *out)
{
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        return group_norm_typed<T>(ctx, x, norm, silu, out);
    });
}

/* ---- tiled GroupNorm ------------------------------------------------------ */

/* Block (group, sample): Welford over the group's channels in rows [r0, r1) x
 * columns [c0, c1) of one sample, merged as gn_stats_generic_kernel does. The
 * pooled pass is a few layers of a tile, so this simple layout is enough. */
template <typename T>
__global__ void __launch_bounds__(GN_THREADS)
    gn_region_stats_kernel(const T *x, size_t sample_stride, int w, int c, int cg, int groups, int r0, int r1,
                           int c0, int c1, welford *out)
{
    __shared__ welford states[GN_THREADS];
    const int g = blockIdx.x, b = blockIdx.y;
    const size_t width = (size_t)(c1 - c0), count = (size_t)(r1 - r0) * width * cg;
    const T *xs = x + (size_t)b * sample_stride + (size_t)g * cg;
    welford acc = {0.0f, 0.0f, 0.0f};
    for (size_t i = threadIdx.x; i < count; i += GN_THREADS) {
        size_t p = i / cg, j = i % cg;
        size_t row = (size_t)r0 + p / width, col = (size_t)c0 + p % width;
        welford one = {1.0f, to_f32(xs[(row * w + col) * c + j]), 0.0f};
        acc = welford_merge(acc, one);
    }
    const welford total = welford_block_merge(states, acc);
    if (threadIdx.x == 0) out[(size_t)b * groups + g] = total;
}

/* Block per sample: scale_shift[b] = [scale[c] | shift[c]] from given mean and 1/std per group. */
template <typename T>
__global__ void gn_fold_kernel(const float *mean_rstd, int groups, int c, int cg, const T *gamma, const T *beta,
                               float *scale_shift)
{
    const int b = blockIdx.x;
    const float *ms = mean_rstd + (size_t)b * groups * 2;
    float *scale = scale_shift + (size_t)b * 2 * c, *shift = scale + c;
    for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
        int g = ch / cg;
        float s = ms[2 * g + 1] * to_f32(gamma[ch]);
        scale[ch] = s;
        shift[ch] = to_f32(beta[ch]) - ms[2 * g] * s;
    }
}

template <typename T>
static d3sr_status group_stats_typed(d3sr_ctx *ctx, const d3sr_tensor *x, int groups, const int region[4],
                                     double *stats)
{
    cuda_state *s = cuda_state_of(ctx);
    const int n = x->n, cg = x->c / groups;
    if (n > 65535) return cuda_fail(D3SR_ERR_VALUE, "group_norm: a batch of %d is more than 65535 samples", n);
    welford *partial;
    const size_t bytes = (size_t)n * groups * sizeof(welford);
    D3SR_CHECK(cuda_core->workspace(ctx, bytes, (void **)&partial));
    gn_region_stats_kernel<T><<<dim3((unsigned)groups, (unsigned)n), GN_THREADS, 0, s->stream>>>(
        (const T *)x->data, d3sr_tensor_pixels(x) * x->c, x->w, x->c, cg, groups, region[0], region[1], region[2],
        region[3], partial);
    CUDA_LAUNCHED();
    welford *host = (welford *)malloc(bytes);
    if (!host) return cuda_fail(D3SR_ERR_MEMORY, "group_norm: out of host memory for %zu bytes", bytes);
    d3sr_status st = CUDA_STATUS(cudaMemcpyAsync(host, partial, bytes, cudaMemcpyDeviceToHost, s->stream));
    if (st == D3SR_OK) st = CUDA_STATUS(cudaStreamSynchronize(s->stream));
    for (size_t i = 0; st == D3SR_OK && i < (size_t)n * groups; i++) {
        stats[3 * i] = host[i].n;
        stats[3 * i + 1] = host[i].mean;
        stats[3 * i + 2] = host[i].m2;
    }
    free(host);
    return st;
}

template <typename T>
static d3sr_status group_norm_with_typed(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm,
                                         const float *mean_rstd, int silu, d3sr_tensor *out)
{
    cuda_state *s = cuda_state_of(ctx);
    const int n = x->n, c = x->c, groups = norm->groups, cg = c / groups;
    const size_t pixels = d3sr_tensor_pixels(x), given_bytes = round256((size_t)n * groups * 2 * sizeof(float));
    char *ws;
    D3SR_CHECK(cuda_core->workspace(ctx, given_bytes + (size_t)n * 2 * c * sizeof(float), (void **)&ws));
    float *given = (float *)ws, *scale_shift = (float *)(ws + given_bytes);
    CUDA_TRY(cudaMemcpyAsync(given, mean_rstd, (size_t)n * groups * 2 * sizeof(float), cudaMemcpyHostToDevice,
                             s->stream));
    gn_fold_kernel<T><<<n, 256, 0, s->stream>>>(given, groups, c, cg, (const T *)norm->gamma.data,
                                                (const T *)norm->beta.data, scale_shift);
    CUDA_LAUNCHED();
    const size_t count = d3sr_tensor_numel(x);
    const int VA = vec16<T>::n;
    const T *xd = (const T *)x->data;
    if (c % VA == 0 && aligned16(x->data) && aligned16(out->data))
        gn_apply_kernel<T, vec16<T>::n><<<cuda_blocks(ctx, count / VA, 256), 256, 0, s->stream>>>(
            xd, (T *)out->data, scale_shift, pixels, c, silu, count / VA);
    else
        gn_apply_kernel<T, 1><<<cuda_blocks(ctx, count, 256), 256, 0, s->stream>>>(xd, (T *)out->data, scale_shift,
                                                                                   pixels, c, silu, count);
    CUDA_LAUNCHED();
    /* mean_rstd is the caller's pageable scratch, reused by the next layer: the copy must be done. */
    CUDA_TRY(cudaStreamSynchronize(s->stream));
    return D3SR_OK;
}

d3sr_status cuda_group_stats(d3sr_ctx *ctx, const d3sr_tensor *x, int groups, const int region[4], double *stats)
{
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        return group_stats_typed<T>(ctx, x, groups, region, stats);
    });
}

d3sr_status cuda_group_norm_with(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, const float *mean_rstd,
                                 int silu, d3sr_tensor *out)
{
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        return group_norm_with_typed<T>(ctx, x, norm, mean_rstd, silu, out);
    });
}

/* ---- LayerNorm --------------------------------------------------------- */

#define LN_WARPS 8

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* One warp per row of c values; c % VEC == 0. */
template <typename T, int VEC>
__global__ void __launch_bounds__(LN_WARPS * 32)
    layer_norm_kernel(const T *x, T *y, const T *gamma, const T *beta, size_t rows, int c, float eps)
{
    const size_t row = (size_t)blockIdx.x * LN_WARPS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const T *xr = x + row * c;
    float v[VEC];
    float sum = 0.0f;
    for (int j = lane * VEC; j < c; j += 32 * VEC) {
        load_f32<T, VEC>(xr + j, v);
#pragma unroll
        for (int k = 0; k < VEC; k++) sum += v[k];
    }
    const float mean = warp_sum(sum) / (float)c;
    float sq = 0.0f;
    for (int j = lane * VEC; j < c; j += 32 * VEC) {
        load_f32<T, VEC>(xr + j, v);
#pragma unroll
        for (int k = 0; k < VEC; k++) sq += (v[k] - mean) * (v[k] - mean);
    }
    const float rstd = 1.0f / sqrtf(warp_sum(sq) / (float)c + eps);
    for (int j = lane * VEC; j < c; j += 32 * VEC) {
        float g[VEC], b[VEC];
        load_f32<T, VEC>(xr + j, v);
        load_f32<T, VEC>(gamma + j, g);
        load_f32<T, VEC>(beta + j, b);
#pragma unroll
        for (int k = 0; k < VEC; k++) v[k] = (v[k] - mean) * rstd * g[k] + b[k];
        store_f32<T, VEC>(y + row * c + j, v);
    }
}

d3sr_status cuda_layer_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, d3sr_tensor *out)
{
    const size_t rows = d3sr_tensor_numel(x) / (size_t)x->c;
    const unsigned blocks = (unsigned)((rows + LN_WARPS - 1) / LN_WARPS);
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        const int V = vec16<T>::n;
        if (x->c % V == 0 && aligned16(x->data) && aligned16(out->data) && aligned16(norm->gamma.data) &&
            aligned16(norm->beta.data))
            layer_norm_kernel<T, V><<<blocks, LN_WARPS * 32, 0, cuda_stream(ctx)>>>(
                (const T *)x->data, (T *)out->data, (const T *)norm->gamma.data, (const T *)norm->beta.data, rows,
                x->c, norm->eps);
        else
            layer_norm_kernel<T, 1><<<blocks, LN_WARPS * 32, 0, cuda_stream(ctx)>>>(
                (const T *)x->data, (T *)out->data, (const T *)norm->gamma.data, (const T *)norm->beta.data, rows,
                x->c, norm->eps);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}
