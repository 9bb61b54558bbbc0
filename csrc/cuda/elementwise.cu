/* elementwise.cu: resizing, GEGLU, activations, additions, concatenation,
 * the bias/residual epilogue and zero padding, channels-last.
 *
 * Each kernel is a grid-stride loop over vectors of VEC consecutive channels
 * (VEC = 16 bytes' worth when the channel counts and pointers allow, else 1);
 * values are computed in float and rounded once on store. Semantics follow
 * cpu/elementwise.c exactly, including PyTorch's nearest-neighbour index rule.
 */
#include <math.h>

#include "elementwise.cuh"

#define THREADS 256

/* ---- activations ------------------------------------------------------- */

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

__device__ __forceinline__ float activate(float x, d3sr_activation_kind kind, float param)
{
    switch (kind) {
    case D3SR_ACT_SILU: return silu(x);
    case D3SR_ACT_RELU: return x < 0.0f ? 0.0f : x; /* NaN stays NaN, as in PyTorch */
    case D3SR_ACT_LEAKY_RELU: return x < 0.0f ? param * x : x;
    case D3SR_ACT_GELU: return gelu(x);
    }
    return x;
}

template <typename T, int VEC>
__global__ void activation_kernel(const T *x, T *y, size_t vectors, d3sr_activation_kind kind, float param)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < vectors; i += (size_t)gridDim.x * blockDim.x) {
        float v[VEC];
        load_f32<T, VEC>(x + i * VEC, v);
#pragma unroll
        for (int j = 0; j < VEC; j++) v[j] = activate(v[j], kind, param);
        store_f32<T, VEC>(y + i * VEC, v);
    }
}

d3sr_status cuda_activation(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_activation_kind kind, float param,
                            d3sr_tensor *out)
{
    const size_t count = d3sr_tensor_numel(x);
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        const int V = vec16<T>::n;
        if (count % V == 0 && aligned16(x->data) && aligned16(out->data))
            activation_kernel<T, V><<<cuda_blocks(ctx, count / V, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (const T *)x->data, (T *)out->data, count / V, kind, param);
        else
            activation_kernel<T, 1><<<cuda_blocks(ctx, count, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (const T *)x->data, (T *)out->data, count, kind, param);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}

/* ---- GEGLU ------------------------------------------------------------- */

/* x [rows, 2 half] = [value | gate] -> y [rows, half] = value * gelu(gate). */
template <typename T, int VEC>
__global__ void geglu_kernel(const T *x, T *y, size_t rows, int half)
{
    const size_t per_row = (size_t)half / VEC, vectors = rows * per_row;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < vectors; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / per_row, j = (i % per_row) * VEC;
        const T *value = x + r * 2 * half + j;
        float a[VEC], g[VEC];
        load_f32<T, VEC>(value, a);
        load_f32<T, VEC>(value + half, g);
#pragma unroll
        for (int k = 0; k < VEC; k++) a[k] *= gelu(g[k]);
        store_f32<T, VEC>(y + r * half + j, a);
    }
}

d3sr_status cuda_geglu(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out)
{
    const size_t rows = d3sr_tensor_numel(out) / (size_t)out->c;
    const int half = out->c;
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        const int V = vec16<T>::n;
        if (half % V == 0 && aligned16(x->data) && aligned16(out->data))
            geglu_kernel<T, V><<<cuda_blocks(ctx, rows * half / V, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (const T *)x->data, (T *)out->data, rows, half);
        else
            geglu_kernel<T, 1><<<cuda_blocks(ctx, rows * half, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (const T *)x->data, (T *)out->data, rows, half);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}

/* ---- additions --------------------------------------------------------- */

/* out[r, j] += bias[j] + residual[r, j]; either may be NULL. cols % VEC == 0. */
template <typename T, int VEC>
__global__ void bias_residual_kernel(T *out, const T *bias, const T *residual, size_t rows, int cols)
{
    const size_t per_row = (size_t)cols / VEC, vectors = rows * per_row;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < vectors; i += (size_t)gridDim.x * blockDim.x) {
        float v[VEC], t[VEC];
        load_f32<T, VEC>(out + i * VEC, v);
        if (bias) {
            load_f32<T, VEC>(bias + (i % per_row) * VEC, t);
#pragma unroll
            for (int k = 0; k < VEC; k++) v[k] += t[k];
        }
        if (residual) {
            load_f32<T, VEC>(residual + i * VEC, t);
#pragma unroll
            for (int k = 0; k < VEC; k++) v[k] += t[k];
        }
        store_f32<T, VEC>(out + i * VEC, v);
    }
}

d3sr_status cuda_bias_residual(d3sr_ctx *ctx, void *out, const void *bias, const void *residual, size_t rows,
                               int cols)
{
    if (!bias && !residual) return D3SR_OK;
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        const int V = vec16<T>::n;
        const size_t count = rows * (size_t)cols;
        if (cols % V == 0 && aligned16(out) && (!bias || aligned16(bias)) && (!residual || aligned16(residual)))
            bias_residual_kernel<T, V><<<cuda_blocks(ctx, count / V, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (T *)out, (const T *)bias, (const T *)residual, rows, cols);
        else
            bias_residual_kernel<T, 1><<<cuda_blocks(ctx, count, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (T *)out, (const T *)bias, (const T *)residual, rows, cols);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}

d3sr_status cuda_add_inplace(d3sr_ctx *ctx, d3sr_tensor *a, const d3sr_tensor *b)
{
    return cuda_bias_residual(ctx, a->data, NULL, b->data, d3sr_tensor_numel(a) / (size_t)a->c, a->c);
}

/* x[i, p, j] += offset[i, j] over samples of `pixels` rows of c values. */
template <typename T, int VEC>
__global__ void channel_offset_kernel(T *x, const T *offset, size_t pixels, int c, size_t vectors)
{
    const size_t per_row = (size_t)c / VEC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < vectors; i += (size_t)gridDim.x * blockDim.x) {
        size_t row = i / per_row, j = (i % per_row) * VEC, sample = row / pixels;
        float v[VEC], o[VEC];
        load_f32<T, VEC>(x + i * VEC, v);
        load_f32<T, VEC>(offset + sample * c + j, o);
#pragma unroll
        for (int k = 0; k < VEC; k++) v[k] += o[k];
        store_f32<T, VEC>(x + i * VEC, v);
    }
}

d3sr_status cuda_add_channel_offset(d3sr_ctx *ctx, d3sr_tensor *x, const d3sr_tensor *offset)
{
    const size_t pixels = d3sr_tensor_pixels(x), count = d3sr_tensor_numel(x);
    const int c = x->c;
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        const int V = vec16<T>::n;
        if (c % V == 0 && aligned16(x->data) && aligned16(offset->data))
            channel_offset_kernel<T, V><<<cuda_blocks(ctx, count / V, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (T *)x->data, (const T *)offset->data, pixels, c, count / V);
        else
            channel_offset_kernel<T, 1><<<cuda_blocks(ctx, count, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (T *)x->data, (const T *)offset->data, pixels, c, count);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}

/* ---- data movement ----------------------------------------------------- */

/* out[p] = [a[p] | b[p]] for rows p of ca and cb values; ca, cb % VEC == 0. */
template <typename T, int VEC>
__global__ void concat_kernel(const T *a, const T *b, T *out, size_t rows, int ca, int cb)
{
    const int c = ca + cb;
    const size_t per_row = (size_t)c / VEC, vectors = rows * per_row;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < vectors; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / per_row;
        int j = (int)(i % per_row) * VEC;
        const T *src = j < ca ? a + r * ca + j : b + r * cb + (j - ca);
        *reinterpret_cast<pack<T, VEC> *>(out + i * VEC) = *reinterpret_cast<const pack<T, VEC> *>(src);
    }
}

d3sr_status cuda_concat_channels(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b, d3sr_tensor *out)
{
    const size_t rows = d3sr_tensor_numel(a) / (size_t)a->c, count = d3sr_tensor_numel(out);
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        const int V = vec16<T>::n;
        if (a->c % V == 0 && b->c % V == 0 && aligned16(a->data) && aligned16(b->data) && aligned16(out->data))
            concat_kernel<T, V><<<cuda_blocks(ctx, count / V, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (const T *)a->data, (const T *)b->data, (T *)out->data, rows, a->c, b->c);
        else
            concat_kernel<T, 1><<<cuda_blocks(ctx, count, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (const T *)a->data, (const T *)b->data, (T *)out->data, rows, a->c, b->c);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}

/* PyTorch's nearest source index, computed in float exactly as cpu/elementwise.c does. */
__device__ __forceinline__ int nearest_source(int dst, int in, int out)
{
    if (out == in) return dst;
    if (out == 2 * in) return dst >> 1;
    float scale = __fdiv_rn((float)in, (float)out);
    int src = (int)floorf(__fmul_rn((float)dst, scale));
    return src < in - 1 ? src : in - 1;
}

/* out [n, oh, ow, c] from x [n, h, w, c]; c % VEC == 0. */
template <typename T, int VEC>
__global__ void upsample_kernel(const T *x, T *out, int n, int h, int w, int oh, int ow, int c)
{
    const size_t per_pixel = (size_t)c / VEC, vectors = (size_t)n * oh * ow * per_pixel;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < vectors; i += (size_t)gridDim.x * blockDim.x) {
        size_t pixel = i / per_pixel, j = (i % per_pixel) * VEC;
        int ox = (int)(pixel % ow), oy = (int)(pixel / ow % oh);
        size_t b = pixel / ((size_t)ow * oh);
        int sy = nearest_source(oy, h, oh), sx = nearest_source(ox, w, ow);
        const T *src = x + (((b * h + sy) * w) + sx) * c + j;
        *reinterpret_cast<pack<T, VEC> *>(out + i * VEC) = *reinterpret_cast<const pack<T, VEC> *>(src);
    }
}

d3sr_status cuda_upsample_nearest(d3sr_ctx *ctx, const d3sr_tensor *x, d3sr_tensor *out)
{
    const size_t count = d3sr_tensor_numel(out);
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        const int V = vec16<T>::n;
        if (x->c % V == 0 && aligned16(x->data) && aligned16(out->data))
            upsample_kernel<T, V><<<cuda_blocks(ctx, count / V, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (const T *)x->data, (T *)out->data, x->n, x->h, x->w, out->h, out->w, x->c);
        else
            upsample_kernel<T, 1><<<cuda_blocks(ctx, count, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (const T *)x->data, (T *)out->data, x->n, x->h, x->w, out->h, out->w, x->c);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}

/* dst [n, hp, wp, c] = x [n, h, w, c] placed at (top, left), zeros around; c % VEC == 0. */
template <typename T, int VEC>
__global__ void pad_kernel(const T *x, T *dst, int n, int h, int w, int c, int top, int left, int hp, int wp)
{
    const size_t per_pixel = (size_t)c / VEC, vectors = (size_t)n * hp * wp * per_pixel;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < vectors; i += (size_t)gridDim.x * blockDim.x) {
        size_t pixel = i / per_pixel, j = (i % per_pixel) * VEC;
        int px = (int)(pixel % wp) - left, py = (int)(pixel / wp % hp) - top;
        size_t b = pixel / ((size_t)wp * hp);
        pack<T, VEC> v;
        if (px >= 0 && px < w && py >= 0 && py < h) {
            v = *reinterpret_cast<const pack<T, VEC> *>(x + (((b * h + py) * w) + px) * c + j);
        } else {
#pragma unroll
            for (int k = 0; k < VEC; k++) v.v[k] = from_f32<T>(0.0f);
        }
        *reinterpret_cast<pack<T, VEC> *>(dst + i * VEC) = v;
    }
}

d3sr_status cuda_pad_nhwc(d3sr_ctx *ctx, const d3sr_tensor *x, int top, int bottom, int left, int right, void *dst)
{
    const int hp = x->h + top + bottom, wp = x->w + left + right;
    const size_t count = (size_t)x->n * hp * wp * x->c;
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        const int V = vec16<T>::n;
        if (x->c % V == 0 && aligned16(x->data) && aligned16(dst))
            pad_kernel<T, V><<<cuda_blocks(ctx, count / V, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (const T *)x->data, (T *)dst, x->n, x->h, x->w, x->c, top, left, hp, wp);
        else
            pad_kernel<T, 1><<<cuda_blocks(ctx, count, THREADS), THREADS, 0, cuda_stream(ctx)>>>(
                (const T *)x->data, (T *)dst, x->n, x->h, x->w, x->c, top, left, hp, wp);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}
