/* attention.cu: the three attention paths of attention.cuh.
 *
 * Both flash kernels take one (query tile, head, sample) per block and walk
 * the keys in tiles with the online softmax: per query row a running maximum
 * m and sum l in float32; each tile's scores s become p = 2^(s - m_new) and
 * the output so far is scaled by 2^(m_old - m_new). The softmax scale and
 * log2(e) are folded into the scores once, so the exponentials are exp2f.
 * Keys past Lk score -inf (their V rows are zero); query rows past Lq are
 * computed on zeros and not written.
 *
 * Tuning notes (unmeasured): the mma kernel loads K and V tiles without
 * double buffering (cp.async would overlap the next tile's load with this
 * one's math) and builds V's fragments from 16-bit shared loads
 * (ldmatrix.trans would take a quarter of the instructions); a Hopper
 * version would use wgmma. Head width 64 only: 128 would need its own
 * instantiation.
 */
#include <math.h>

#include "attention.cuh"
#include "gemm.cuh"

#define LOG2E 1.4426950408889634f

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ---- tensor-core flash attention, d = 64, fp16/bf16 --------------------- */

#define FA_D 64
#define FA_BQ 64            /* query rows per block: 16 per warp */
#define FA_BK 64            /* keys per tile */
#define FA_LD (FA_D + 8)    /* shared row in 16-bit values; +8 puts fragment loads on 32 distinct banks */
#define FA_THREADS 128

/* mma.sync.m16n8k16 with float32 accumulators: c += a b, a 16x16 (row
 * major), b 16x8 (column major), per the PTX ISA's fragment layout: with
 * g = lane / 4 and t = lane % 4, a holds rows g and g + 8, columns 2t, 2t+1
 * (registers 0, 1) and 2t+8, 2t+9 (registers 2, 3); b holds column g, rows
 * 2t, 2t+1 and 2t+8, 2t+9; c holds rows g (c[0], c[1]) and g + 8 (c[2],
 * c[3]), columns 2t, 2t+1. A 32-bit register holds two 16-bit values, the
 * lower column (or row, for b) in the low half. */
template <typename T> struct mma_op;

template <> struct mma_op<__half> {
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi)
    {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
};

template <> struct mma_op<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi)
    {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
};

__device__ __forceinline__ uint32_t ld32(const uint16_t *p) { return *reinterpret_cast<const uint32_t *>(p); }

/* Warp w owns query rows [16w, 16w + 16) of the tile; its thread (g, t)
 * holds rows g and g + 8 of the scores and of the output in registers. */
template <typename T>
__global__ void __launch_bounds__(FA_THREADS)
    attention_mma_kernel(const T *q, const T *k, const T *v, T *o, int lq, int lk, int width, float scale_log2)
{
    __shared__ __align__(16) uint16_t Qs[FA_BQ * FA_LD];
    __shared__ __align__(16) uint16_t Ks[FA_BK * FA_LD];
    __shared__ __align__(16) uint16_t Vs[FA_BK * FA_LD];
    typedef mma_op<T> op;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int q0 = blockIdx.x * FA_BQ, head = blockIdx.y, b = blockIdx.z;
    const size_t col = (size_t)head * FA_D;
    const uint16_t *qb = reinterpret_cast<const uint16_t *>(q) + (size_t)b * lq * width + col;
    const uint16_t *kb = reinterpret_cast<const uint16_t *>(k) + (size_t)b * lk * width + col;
    const uint16_t *vb = reinterpret_cast<const uint16_t *>(v) + (size_t)b * lk * width + col;
    uint16_t *ob = reinterpret_cast<uint16_t *>(o) + (size_t)b * lq * width + col;
    const uint4 zero = make_uint4(0, 0, 0, 0);

    /* Q tile: 64 rows of 8 16-byte pieces. */
    for (int i = tid; i < FA_BQ * 8; i += FA_THREADS) {
        int r = i >> 3, c8 = (i & 7) * 8;
        uint4 val = zero;
        if (q0 + r < lq) val = *reinterpret_cast<const uint4 *>(qb + (size_t)(q0 + r) * width + c8);
        *reinterpret_cast<uint4 *>(Qs + r * FA_LD + c8) = val;
    }
    __syncthreads();
    const int r0 = warp * 16 + g;
    uint32_t qa[FA_D / 16][4];
#pragma unroll
    for (int kk = 0; kk < FA_D / 16; kk++) {
        const uint16_t *p = Qs + r0 * FA_LD + kk * 16 + 2 * t;
        qa[kk][0] = ld32(p);
        qa[kk][1] = ld32(p + 8 * FA_LD);
        qa[kk][2] = ld32(p + 8);
        qa[kk][3] = ld32(p + 8 * FA_LD + 8);
    }

    float acc[FA_D / 8][4];
#pragma unroll
    for (int nt = 0; nt < FA_D / 8; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    for (int k0 = 0; k0 < lk; k0 += FA_BK) {
        __syncthreads(); /* every warp is done with the previous K and V tiles */
        for (int i = tid; i < FA_BK * 8; i += FA_THREADS) {
            int r = i >> 3, c8 = (i & 7) * 8;
            uint4 kv = zero, vv = zero;
            if (k0 + r < lk) {
                kv = *reinterpret_cast<const uint4 *>(kb + (size_t)(k0 + r) * width + c8);
                vv = *reinterpret_cast<const uint4 *>(vb + (size_t)(k0 + r) * width + c8);
            }
            *reinterpret_cast<uint4 *>(Ks + r * FA_LD + c8) = kv;
            *reinterpret_cast<uint4 *>(Vs + r * FA_LD + c8) = vv;
        }
        __syncthreads();

        /* s = q k^T for 16 rows x 64 keys: n-tile nt is keys [8nt, 8nt + 8). */
        float s[FA_BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const uint16_t *kr = Ks + (nt * 8 + g) * FA_LD + 2 * t;
#pragma unroll
            for (int kk = 0; kk < FA_D / 16; kk++) op::run(s[nt], qa[kk], ld32(kr + kk * 16), ld32(kr + kk * 16 + 8));
        }

        /* Online softmax; the 4 threads of a quad share rows g and g + 8. */
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = k0 + nt * 8 + 2 * t + (e & 1);
                float val = key < lk ? s[nt][e] * scale_log2 : -INFINITY;
                s[nt][e] = val;
                if (e < 2) mx0 = fmaxf(mx0, val);
                else mx1 = fmaxf(mx1, val);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1); /* finite: key k0 < lk is in every tile */
        const float a0 = exp2f(m0 - mn0), a1 = exp2f(m1 - mn1);
        m0 = mn0;
        m1 = mn1;
        float ls0 = 0.0f, ls1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++) {
            s[nt][0] = exp2f(s[nt][0] - mn0);
            s[nt][1] = exp2f(s[nt][1] - mn0);
            s[nt][2] = exp2f(s[nt][2] - mn1);
            s[nt][3] = exp2f(s[nt][3] - mn1);
            ls0 += s[nt][0] + s[nt][1];
            ls1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * a0 + ls0; /* this thread's share; the quad's shares are summed at the end */
        l1 = l1 * a1 + ls1;
#pragma unroll
        for (int nt = 0; nt < FA_D / 8; nt++) {
            acc[nt][0] *= a0;
            acc[nt][1] *= a0;
            acc[nt][2] *= a1;
            acc[nt][3] *= a1;
        }

        /* acc += p v: k-step j is keys [16j, 16j + 16), whose p the score
         * accumulators of n-tiles 2j and 2j + 1 already hold in a's layout. */
#pragma unroll
        for (int j = 0; j < FA_BK / 16; j++) {
            const uint32_t pa[4] = {op::pack(s[2 * j][0], s[2 * j][1]), op::pack(s[2 * j][2], s[2 * j][3]),
                                    op::pack(s[2 * j + 1][0], s[2 * j + 1][1]),
                                    op::pack(s[2 * j + 1][2], s[2 * j + 1][3])};
            const uint16_t *vr = Vs + (j * 16 + 2 * t) * FA_LD + g;
#pragma unroll
            for (int nt = 0; nt < FA_D / 8; nt++) {
                const uint16_t *p = vr + nt * 8;
                uint32_t b0 = (uint32_t)p[0] | ((uint32_t)p[FA_LD] << 16);
                uint32_t b1 = (uint32_t)p[8 * FA_LD] | ((uint32_t)p[9 * FA_LD] << 16);
                op::run(acc[nt], pa, b0, b1);
            }
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    const int row0 = q0 + r0, row1 = row0 + 8;
#pragma unroll
    for (int nt = 0; nt < FA_D / 8; nt++) {
        const int c = nt * 8 + 2 * t;
        if (row0 < lq)
            *reinterpret_cast<uint32_t *>(ob + (size_t)row0 * width + c) = op::pack(acc[nt][0] * inv0, acc[nt][1] * inv0);
        if (row1 < lq)
            *reinterpret_cast<uint32_t *>(ob + (size_t)row1 * width + c) = op::pack(acc[nt][2] * inv1, acc[nt][3] * inv1);
    }
}

/* ---- float32 flash attention, any d <= 128 ------------------------------ */

#define GA_BQ 32
#define GA_BK 32 /* = the warp width: the softmax step gives each lane one key */
#define GA_THREADS 128
#define GA_MAX_D 128

static size_t generic_smem_bytes(int d)
{
    return sizeof(float) * ((size_t)GA_BQ * d            /* Q, pre-scaled */
                            + (size_t)GA_BK * (d + 1)    /* K, rows padded against bank conflicts */
                            + (size_t)GA_BK * d          /* V */
                            + (size_t)GA_BQ * d          /* O, unnormalised */
                            + (size_t)GA_BQ * (GA_BK + 1) /* scores, then p */
                            + 3 * GA_BQ);                /* running max, sum, and this tile's rescale */
}

template <typename T>
__global__ void __launch_bounds__(GA_THREADS)
    attention_generic_kernel(const T *q, const T *k, const T *v, T *o, int lq, int lk, int width, int d, float scale_log2)
{
    extern __shared__ float smem[];
    const int dk = d + 1, ls = GA_BK + 1;
    float *Qs = smem, *Ks = Qs + GA_BQ * d, *Vs = Ks + GA_BK * dk, *Os = Vs + GA_BK * d, *Ss = Os + GA_BQ * d;
    float *row_max = Ss + GA_BQ * ls, *row_sum = row_max + GA_BQ, *row_scale = row_sum + GA_BQ;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int q0 = blockIdx.x * GA_BQ, head = blockIdx.y, b = blockIdx.z;
    const size_t col = (size_t)head * d;
    const T *qb = q + (size_t)b * lq * width + col;
    const T *kb = k + (size_t)b * lk * width + col;
    const T *vb = v + (size_t)b * lk * width + col;
    T *ob = o + (size_t)b * lq * width + col;

    for (int i = tid; i < GA_BQ * d; i += GA_THREADS) {
        int r = i / d, x = i % d;
        Qs[i] = q0 + r < lq ? to_f32(qb[(size_t)(q0 + r) * width + x]) * scale_log2 : 0.0f;
        Os[i] = 0.0f;
    }
    for (int r = tid; r < GA_BQ; r += GA_THREADS) {
        row_max[r] = -INFINITY;
        row_sum[r] = 0.0f;
    }

    for (int k0 = 0; k0 < lk; k0 += GA_BK) {
        __syncthreads(); /* the previous tile is consumed; on the first, Q and the stats are set */
        for (int i = tid; i < GA_BK * d; i += GA_THREADS) {
            int j = i / d, x = i % d;
            float kv = 0.0f, vv = 0.0f;
            if (k0 + j < lk) {
                kv = to_f32(kb[(size_t)(k0 + j) * width + x]);
                vv = to_f32(vb[(size_t)(k0 + j) * width + x]);
            }
            Ks[j * dk + x] = kv;
            Vs[i] = vv;
        }
        __syncthreads();
        for (int i = tid; i < GA_BQ * GA_BK; i += GA_THREADS) {
            int r = i / GA_BK, j = i % GA_BK;
            float s = -INFINITY;
            if (k0 + j < lk) {
                const float *qr = Qs + r * d, *kr = Ks + j * dk;
                s = 0.0f;
                for (int x = 0; x < d; x++) s += qr[x] * kr[x];
            }
            Ss[r * ls + j] = s;
        }
        __syncthreads();
        for (int r = warp; r < GA_BQ; r += GA_THREADS / 32) {
            float s = Ss[r * ls + lane];
            float mx = warp_max(s); /* finite: key k0 < lk is in every tile */
            float m_old = row_max[r], m_new = fmaxf(m_old, mx);
            float p = exp2f(s - m_new);
            float sum = warp_sum(p); /* every lane has read row_max[r] before lane 0 writes it */
            Ss[r * ls + lane] = p;
            if (lane == 0) {
                float a = exp2f(m_old - m_new);
                row_scale[r] = a;
                row_sum[r] = row_sum[r] * a + sum;
                row_max[r] = m_new;
            }
        }
        __syncthreads();
        for (int i = tid; i < GA_BQ * d; i += GA_THREADS) {
            int r = i / d, x = i % d;
            const float *pr = Ss + r * ls;
            float acc = Os[i] * row_scale[r];
            for (int j = 0; j < GA_BK; j++) acc += pr[j] * Vs[j * d + x];
            Os[i] = acc;
        }
    }
    __syncthreads();
    for (int i = tid; i < GA_BQ * d; i += GA_THREADS) {
        int r = i / d, x = i % d;
        if (q0 + r < lq) ob[(size_t)(q0 + r) * width + x] = from_f32<T>(Os[i] / row_sum[r]);
    }
}

/* ---- blocks of queries through cuBLAS, any d ---------------------------- */

#define CHUNK_BYTES ((size_t)64 << 20) /* scores and probabilities of one block of queries */

__device__ __forceinline__ float block_reduce(float v, float *scratch, int is_max)
{
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads(); /* scratch may still be read from the previous reduction */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : (is_max ? -INFINITY : 0.0f);
    return is_max ? warp_max(v) : warp_sum(v);
}

/* p[row] = softmax(s[row]) over cols values; one block per row. */
template <typename T> __global__ void softmax_rows_kernel(const float *s, T *p, int cols)
{
    __shared__ float scratch[32];
    const float *row = s + (size_t)blockIdx.x * cols;
    T *out = p + (size_t)blockIdx.x * cols;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) mx = fmaxf(mx, row[j]);
    mx = block_reduce(mx, scratch, 1);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) sum += expf(row[j] - mx);
    const float inv = 1.0f / block_reduce(sum, scratch, 0);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) out[j] = from_f32<T>(expf(row[j] - mx) * inv);
}

static d3sr_status attention_chunked(d3sr_ctx *ctx, const d3sr_tensor *q, const d3sr_tensor *k, const d3sr_tensor *v,
                                     int heads, d3sr_tensor *out)
{
    const int n = q->n, width = q->c, d = width / heads;
    const int lq = (int)d3sr_tensor_pixels(q), lk = (int)d3sr_tensor_pixels(k);
    const size_t ts = dtype_bytes(ctx->dtype);
    size_t rows = CHUNK_BYTES / ((size_t)n * lk * (sizeof(float) + ts));
    if (rows > (size_t)lq) rows = (size_t)lq;
    if (rows > 64) rows = rows / 64 * 64;
    if (rows < 1) rows = 1;
    const size_t s_bytes = round256((size_t)n * rows * lk * sizeof(float));
    char *ws;
    D3SR_CHECK(cuda_core->workspace(ctx, s_bytes + (size_t)n * rows * lk * ts, (void **)&ws));
    float *scores = (float *)ws;
    void *probs = ws + s_bytes;
    const float scale = 1.0f / sqrtf((float)d);
    const char *qd = (const char *)q->data, *kd = (const char *)k->data, *vd = (const char *)v->data;
    char *od = (char *)out->data;
    for (int h = 0; h < heads; h++) {
        const size_t hc = (size_t)h * d * ts;
        for (int q0 = 0; q0 < lq; q0 += (int)rows) {
            const int m = lq - q0 < (int)rows ? lq - q0 : (int)rows;
            const size_t qoff = (size_t)q0 * width * ts;
            /* scores^T [lk, m] (column-major) = scale * K_h [lk, d] Q_blk^T: row-major scores [m, lk]. */
            D3SR_CHECK(cuda_gemm_batched(ctx, 1, 0, lk, m, d, scale, kd + hc, width, (long long)lk * width,
                                         qd + qoff + hc, width, (long long)lq * width, 0.0f, scores, GEMM_F32, lk,
                                         (long long)m * lk, n));
            D3SR_CHECK(by_dtype(ctx->dtype, [&](auto tag) {
                typedef typename decltype(tag)::type T;
                softmax_rows_kernel<T><<<(unsigned)((size_t)n * m), 256, 0, cuda_stream(ctx)>>>(scores, (T *)probs, lk);
                CUDA_LAUNCHED();
                return D3SR_OK;
            }));
            /* out_blk^T [d, m] (column-major, ld width) = V_h^T [d, lk] p^T [lk, m]. */
            D3SR_CHECK(cuda_gemm_batched(ctx, 0, 0, d, m, lk, 1.0f, vd + hc, width, (long long)lk * width, probs, lk,
                                         (long long)m * lk, 0.0f, od + qoff + hc, GEMM_STORAGE, width,
                                         (long long)lq * width, n));
        }
    }
    return D3SR_OK;
}

/* ---- dispatch ---------------------------------------------------------- */

d3sr_status cuda_attention(d3sr_ctx *ctx, const d3sr_tensor *q, const d3sr_tensor *k, const d3sr_tensor *v, int heads,
                           d3sr_tensor *out)
{
    cuda_state *s = cuda_state_of(ctx);
    const int n = q->n, width = q->c, d = width / heads;
    const int lq = (int)d3sr_tensor_pixels(q), lk = (int)d3sr_tensor_pixels(k);
    const float scale_log2 = LOG2E / sqrtf((float)d);
    const int grid_fits = n <= 65535 && heads <= 65535;
    if (s->attention == ATTENTION_CHUNKED || d > GA_MAX_D || !grid_fits)
        return attention_chunked(ctx, q, k, v, heads, out);

    if (s->attention == ATTENTION_AUTO && ctx->dtype != D3SR_F32 && d == FA_D && width % 8 == 0 &&
        aligned16(q->data) && aligned16(k->data) && aligned16(v->data) && aligned16(out->data)) {
        dim3 grid((unsigned)((lq + FA_BQ - 1) / FA_BQ), (unsigned)heads, (unsigned)n);
        if (ctx->dtype == D3SR_F16)
            attention_mma_kernel<__half><<<grid, FA_THREADS, 0, s->stream>>>(
                (const __half *)q->data, (const __half *)k->data, (const __half *)v->data, (__half *)out->data, lq, lk,
                width, scale_log2);
        else
            attention_mma_kernel<__nv_bfloat16><<<grid, FA_THREADS, 0, s->stream>>>(
                (const __nv_bfloat16 *)q->data, (const __nv_bfloat16 *)k->data, (const __nv_bfloat16 *)v->data,
                (__nv_bfloat16 *)out->data, lq, lk, width, scale_log2);
        CUDA_LAUNCHED();
        return D3SR_OK;
    }

    const size_t smem = generic_smem_bytes(d);
    if (smem > s->smem_optin) return attention_chunked(ctx, q, k, v, heads, out);
    dim3 grid((unsigned)((lq + GA_BQ - 1) / GA_BQ), (unsigned)heads, (unsigned)n);
    return by_dtype(ctx->dtype, [&](auto tag) {
        typedef typename decltype(tag)::type T;
        CUDA_TRY(cudaFuncSetAttribute(attention_generic_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)smem));
        attention_generic_kernel<T><<<grid, GA_THREADS, smem, s->stream>>>(
            (const T *)q->data, (const T *)k->data, (const T *)v->data, (T *)out->data, lq, lk, width, d, scale_log2);
        CUDA_LAUNCHED();
        return D3SR_OK;
    });
}
