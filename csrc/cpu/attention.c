/* attention.c: multi-head scaled dot-product attention in blocks of queries.
 *
 * q [n, Lq, heads*d], k and v [n, Lk, heads*d]; head h is columns [h*d, (h+1)*d).
 * Each task takes one (sample, head, block of queries): scores = q_blk k^T
 * into a [block, Lk] scratch, a row softmax in float32, then out_blk = p v.
 * Memory is block * Lk per thread, never Lq * Lk.
 */
#include <math.h>

#include "../core/threads.h"
#include "cpu.h"

#define QUERY_BLOCK 64

CPU_VECTOR_CLONES
static void softmax_rows(float *s, int rows, int cols, float scale)
{
    for (int r = 0; r < rows; r++) {
        float *row = s + (size_t)r * cols;
        float max = row[0];
        for (int j = 1; j < cols; j++) max = row[j] > max ? row[j] : max;
        float sum = 0.0f;
        for (int j = 0; j < cols; j++) {
            row[j] = cpu_expf((row[j] - max) * scale);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < cols; j++) row[j] *= inv;
    }
}

d3sr_status cpu_attention(d3sr_ctx *ctx, const d3sr_tensor *q, const d3sr_tensor *k,
                          const d3sr_tensor *v, int heads, d3sr_tensor *out)
{
    const int width = q->c, d = width / heads;
    const int lq = (int)d3sr_tensor_pixels(q), lk = (int)d3sr_tensor_pixels(k);
    const int blocks = (lq + QUERY_BLOCK - 1) / QUERY_BLOCK;
    const size_t tasks = (size_t)q->n * heads * blocks;
    const float scale = 1.0f / sqrtf((float)d);
    const int threads = d3sr_threads();

    float *scores;
    D3SR_CHECK(d3sr_workspace(ctx, (size_t)threads * QUERY_BLOCK * lk * sizeof(float), (void **)&scores));
    const float *qd = q->data, *kd = k->data, *vd = v->data;
    float *od = out->data;

#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        float *s = scores + (size_t)omp_get_thread_num() * QUERY_BLOCK * lk;
#else
        float *s = scores;
#endif
#pragma omp for schedule(dynamic)
        for (size_t t = 0; t < tasks; t++) {
            int block = (int)(t % blocks);
            int head = (int)(t / blocks % heads);
            int n = (int)(t / blocks / heads);
            int q0 = block * QUERY_BLOCK;
            int rows = lq - q0 < QUERY_BLOCK ? lq - q0 : QUERY_BLOCK;
            const float *qb = qd + ((size_t)n * lq + q0) * width + (size_t)head * d;
            const float *kb = kd + (size_t)n * lk * width + (size_t)head * d;
            const float *vb = vd + (size_t)n * lk * width + (size_t)head * d;
            float *ob = od + ((size_t)n * lq + q0) * width + (size_t)head * d;
            cpu_gemm_serial(1, rows, lk, d, qb, width, kb, width, 0.0f, s, lk);
            softmax_rows(s, rows, lk, scale);
            cpu_gemm_serial(0, rows, d, lk, s, lk, vb, width, 0.0f, ob, width);
        }
    }
    return D3SR_OK;
}
