/* metric_reductions.c: the reductions of the perceptual metrics: LPIPS' per-layer
 * distance and the per-channel moments DISTS compares.
 *
 * Both reduce a sample's pixels into float64 sums. Pixels are split across
 * threads; each thread sums its share into its own row of a workspace, and
 * the rows are added in thread order, so results do not depend on timing.
 */
#include <math.h>
#include <string.h>

#include "../core/threads.h"
#include "cpu.h"

/* sum_c w_c (a_c / (|a| + eps) - b_c / (|b| + eps))^2 of one pixel. */
CPU_VECTOR_CLONES
static double lpips_pixel(const float *a, const float *b, const float *w, int c)
{
    float na = 0.0f, nb = 0.0f;
    for (int j = 0; j < c; j++) {
        na += a[j] * a[j];
        nb += b[j] * b[j];
    }
    float ia = 1.0f / (sqrtf(na) + 1e-10f), ib = 1.0f / (sqrtf(nb) + 1e-10f);
    float d = 0.0f;
    for (int j = 0; j < c; j++) {
        float diff = a[j] * ia - b[j] * ib;
        d += w[j] * diff * diff;
    }
    return d;
}

d3sr_status cpu_lpips_distance(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b,
                               const d3sr_tensor *weight, d3sr_tensor *out)
{
    const int threads = d3sr_threads(), c = a->c;
    const size_t pixels = d3sr_tensor_pixels(a);
    double *partial;
    D3SR_CHECK(d3sr_workspace(ctx, (size_t)threads * sizeof *partial, (void **)&partial));
    for (int n = 0; n < a->n; n++) {
        const float *an = (const float *)a->data + (size_t)n * pixels * c;
        const float *bn = (const float *)b->data + (size_t)n * pixels * c;
        memset(partial, 0, (size_t)threads * sizeof *partial);
#pragma omp parallel num_threads(threads)
        {
            size_t p0, p1;
            cpu_share(pixels, &p0, &p1);
            double sum = 0.0;
            for (size_t p = p0; p < p1; p++) sum += lpips_pixel(an + p * c, bn + p * c, weight->data, c);
#ifdef _OPENMP
            partial[omp_get_thread_num()] = sum;
#else
            partial[0] = sum;
#endif
        }
        double total = 0.0;
        for (int t = 0; t < threads; t++) total += partial[t];
        ((float *)out->data)[n] = (float)(total / (double)pixels);
    }
    return D3SR_OK;
}

CPU_VECTOR_CLONES
static void sum_pair(const float *a, const float *b, size_t rows, int c, double *sa, double *sb)
{
    for (size_t p = 0; p < rows; p++)
        for (int j = 0; j < c; j++) {
            sa[j] += a[p * c + j];
            sb[j] += b[p * c + j];
        }
}

CPU_VECTOR_CLONES
static void sum_centered(const float *a, const float *b, size_t rows, int c, const double *ma, const double *mb,
                         double *vaa, double *vbb, double *vab)
{
    for (size_t p = 0; p < rows; p++)
        for (int j = 0; j < c; j++) {
            double da = (double)a[p * c + j] - ma[j], db = (double)b[p * c + j] - mb[j];
            vaa[j] += da * da;
            vbb[j] += db * db;
            vab[j] += da * db;
        }
}

d3sr_status cpu_pair_moments(d3sr_ctx *ctx, const d3sr_tensor *a, const d3sr_tensor *b, d3sr_tensor *out)
{
    const int threads = d3sr_threads(), c = a->c;
    const size_t pixels = d3sr_tensor_pixels(a), row = 3 * (size_t)c;
    double *work; /* [threads, 3c] partial sums, then [5c] totals */
    D3SR_CHECK(d3sr_workspace(ctx, ((size_t)threads * row + 5 * (size_t)c) * sizeof *work, (void **)&work));
    double *total = work + (size_t)threads * row;
    double *mean_a = total, *mean_b = total + c;
    for (int n = 0; n < a->n; n++) {
        const float *an = (const float *)a->data + (size_t)n * pixels * c;
        const float *bn = (const float *)b->data + (size_t)n * pixels * c;
        for (int pass = 0; pass < 2; pass++) {
            /* Every row zeroed: OpenMP may start fewer threads than asked. */
            memset(work, 0, (size_t)threads * row * sizeof *work);
#pragma omp parallel num_threads(threads)
            {
#ifdef _OPENMP
                double *acc = work + (size_t)omp_get_thread_num() * row;
#else
                double *acc = work;
#endif
                size_t p0, p1;
                cpu_share(pixels, &p0, &p1);
                if (pass == 0)
                    sum_pair(an + p0 * c, bn + p0 * c, p1 - p0, c, acc, acc + c);
                else
                    sum_centered(an + p0 * c, bn + p0 * c, p1 - p0, c, mean_a, mean_b, acc, acc + c, acc + 2 * c);
            }
            /* pass 0 fills the means, pass 1 the variances and covariance. */
            double *dst = pass == 0 ? total : total + 2 * c;
            size_t count = pass == 0 ? 2 * (size_t)c : row;
            for (size_t j = 0; j < count; j++) {
                double s = 0.0;
                for (int t = 0; t < threads; t++) s += work[(size_t)t * row + j];
                dst[j] = s / (double)pixels;
            }
        }
        float *o = (float *)out->data + (size_t)n * 5 * c;
        for (size_t j = 0; j < 5 * (size_t)c; j++) o[j] = (float)total[j];
    }
    return D3SR_OK;
}
