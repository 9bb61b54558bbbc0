/* norm.c: GroupNorm (with optional fused SiLU) and LayerNorm, channels-last.
 *
 * Per sample, three passes over the pixels, each split across threads:
 * per-channel sums for the group means, per-channel sums of squared
 * deviations from those means (two passes, so a large mean cannot cancel
 * the variance away), then y = x * a[c] + b[c] with the affine folded in.
 * Sums are float64; channels are the inner, vectorised loop.
 */
#include <math.h>
#include <string.h>

#include "../core/threads.h"
#include "cpu.h"

CPU_VECTOR_CLONES
static void add_rows(const float *x, size_t rows, int c, double *acc)
{
    for (size_t p = 0; p < rows; p++)
        for (int j = 0; j < c; j++) acc[j] += x[p * c + j];
}

CPU_VECTOR_CLONES
static void add_squared_deviations(const float *x, size_t rows, int c, const double *mean, double *acc)
{
    for (size_t p = 0; p < rows; p++)
        for (int j = 0; j < c; j++) {
            double d = (double)x[p * c + j] - mean[j];
            acc[j] += d * d;
        }
}

CPU_VECTOR_CLONES
static void scale_shift_rows(const float *x, size_t rows, int c, const float *scale, const float *shift,
                             int silu, float *y)
{
    for (size_t p = 0; p < rows; p++) {
        const float *row = x + p * c;
        float *dst = y + p * c;
        if (silu)
            for (int j = 0; j < c; j++) dst[j] = cpu_siluf(row[j] * scale[j] + shift[j]);
        else
            for (int j = 0; j < c; j++) dst[j] = row[j] * scale[j] + shift[j];
    }
}

static void sum_rows(const float *x, size_t rows, int c, const double *mean, double *acc)
{
    if (mean)
        add_squared_deviations(x, rows, c, mean, acc);
    else
        add_rows(x, rows, c, acc);
}

/* Per-channel sums of x (mean == NULL) or of (x - mean[c])^2 over rows
 * [region[0], region[1]) x columns [region[2], region[3]) of one sample
 * [h, w, c], each thread into its own row of partial, then reduced into
 * total[c]. A full-width region is split across threads by pixels, any other
 * by rows. OpenMP may start fewer threads than asked (OMP_THREAD_LIMIT,
 * OMP_DYNAMIC, nesting), so every row is zeroed here, not by a thread that
 * may not run. */
static void channel_sums(const float *xs, int w, int c, const int region[4], const double *mean, double *partial,
                         double *total, int threads)
{
    const size_t rows = (size_t)(region[1] - region[0]), width = (size_t)(region[3] - region[2]);
    const int full_width = width == (size_t)w;
    const float *first = xs + ((size_t)region[0] * w + (size_t)region[2]) * c;
    memset(partial, 0, (size_t)threads * c * sizeof *partial);
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        double *acc = partial + (size_t)omp_get_thread_num() * c;
#else
        double *acc = partial;
#endif
        size_t u0, u1;
        cpu_share(full_width ? rows * width : rows, &u0, &u1);
        if (full_width)
            sum_rows(first + u0 * c, u1 - u0, c, mean, acc);
        else
            for (size_t r = u0; r < u1; r++) sum_rows(first + r * w * c, width, c, mean, acc);
    }
    memset(total, 0, (size_t)c * sizeof *total);
    for (int t = 0; t < threads; t++)
        for (int j = 0; j < c; j++) total[j] += partial[(size_t)t * c + j];
}

d3sr_status cpu_group_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, int silu,
                           d3sr_tensor *out)
{
    const int c = x->c, groups = norm->groups, cg = c / groups;
    const size_t pixels = d3sr_tensor_pixels(x);
    const int threads = d3sr_threads();
    const float *gamma = norm->gamma.data, *beta = norm->beta.data;

    /* scratch: partial sums, channel totals, channel means, and the folded affine. */
    double *partial;
    size_t doubles = (size_t)threads * c + 2 * (size_t)c;
    D3SR_CHECK(d3sr_workspace(ctx, doubles * sizeof(double) + 2 * (size_t)c * sizeof(float), (void **)&partial));
    double *total = partial + (size_t)threads * c;
    double *mean = total + c;
    float *scale = (float *)(mean + c);
    float *shift = scale + c;

    const double count = (double)pixels * cg;
    const int whole[4] = {0, x->h, 0, x->w};
    for (int n = 0; n < x->n; n++) {
        const float *xs = (const float *)x->data + (size_t)n * pixels * c;
        float *ys = (float *)out->data + (size_t)n * pixels * c;

        channel_sums(xs, x->w, c, whole, NULL, partial, total, threads);
        for (int g = 0; g < groups; g++) {
            double s = 0;
            for (int j = 0; j < cg; j++) s += total[g * cg + j];
            for (int j = 0; j < cg; j++) mean[g * cg + j] = s / count;
        }
        channel_sums(xs, x->w, c, whole, mean, partial, total, threads);
        for (int g = 0; g < groups; g++) {
            double s = 0;
            for (int j = 0; j < cg; j++) s += total[g * cg + j];
            double rstd = 1.0 / sqrt(s / count + norm->eps);
            for (int j = 0; j < cg; j++) {
                int ch = g * cg + j;
                scale[ch] = (float)(rstd * gamma[ch]);
                shift[ch] = (float)(beta[ch] - mean[ch] * rstd * gamma[ch]);
            }
        }

#pragma omp parallel num_threads(threads)
        {
            size_t p0, p1;
            cpu_share(pixels, &p0, &p1);
            scale_shift_rows(xs + p0 * c, p1 - p0, c, scale, shift, silu, ys + p0 * c);
        }
    }
    return D3SR_OK;
}

/* LayerNorm of rows of c values: two passes over each row in float64. */
CPU_VECTOR_CLONES
static void layer_norm_rows(const float *x, size_t rows, int c, const float *gamma, const float *beta,
                            float eps, float *y)
{
    for (size_t r = 0; r < rows; r++) {
        const float *row = x + r * c;
        double s = 0, q = 0;
        for (int j = 0; j < c; j++) s += row[j];
        double mean = s / c;
        for (int j = 0; j < c; j++) {
            double d = row[j] - mean;
            q += d * d;
        }
        float rstd = (float)(1.0 / sqrt(q / c + eps)), m = (float)mean;
        float *dst = y + r * c;
        for (int j = 0; j < c; j++) dst[j] = (row[j] - m) * rstd * gamma[j] + beta[j];
    }
}

d3sr_status cpu_layer_norm(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, d3sr_tensor *out)
{
    (void)ctx;
    const size_t rows = d3sr_tensor_numel(x) / (size_t)x->c;
    const int c = x->c;
#pragma omp parallel num_threads(d3sr_threads())
    {
        size_t r0, r1;
        cpu_share(rows, &r0, &r1);
        layer_norm_rows((const float *)x->data + r0 * c, r1 - r0, c, norm->gamma.data, norm->beta.data, norm->eps,
                        (float *)out->data + r0 * c);
    }
    return D3SR_OK;
}

/* ---- tiled GroupNorm: statistics over a region, normalisation with given ones ---- */

d3sr_status cpu_group_stats(d3sr_ctx *ctx, const d3sr_tensor *x, int groups, const int region[4], double *stats)
{
    const int c = x->c, cg = c / groups, threads = d3sr_threads();
    const size_t pixels = d3sr_tensor_pixels(x);
    double *partial;
    D3SR_CHECK(d3sr_workspace(ctx, ((size_t)threads * c + 2 * (size_t)c) * sizeof(double), (void **)&partial));
    double *total = partial + (size_t)threads * c, *mean = total + c;
    const double count = (double)(region[1] - region[0]) * (region[3] - region[2]) * cg;
    for (int n = 0; n < x->n; n++) {
        const float *xs = (const float *)x->data + (size_t)n * pixels * c;
        double *out = stats + (size_t)n * groups * 3;
        channel_sums(xs, x->w, c, region, NULL, partial, total, threads);
        for (int g = 0; g < groups; g++) {
            double s = 0;
            for (int j = 0; j < cg; j++) s += total[g * cg + j];
            for (int j = 0; j < cg; j++) mean[g * cg + j] = s / count;
        }
        channel_sums(xs, x->w, c, region, mean, partial, total, threads);
        for (int g = 0; g < groups; g++) {
            double s = 0;
            for (int j = 0; j < cg; j++) s += total[g * cg + j];
            out[g * 3] = count;
            out[g * 3 + 1] = mean[g * cg];
            out[g * 3 + 2] = s;
        }
    }
    return D3SR_OK;
}

d3sr_status cpu_group_norm_with(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_norm *norm, const float *mean_rstd,
                                int silu, d3sr_tensor *out)
{
    const int c = x->c, cg = c / norm->groups, threads = d3sr_threads();
    const size_t pixels = d3sr_tensor_pixels(x);
    const float *gamma = norm->gamma.data, *beta = norm->beta.data;
    float *scale;
    D3SR_CHECK(d3sr_workspace(ctx, 2 * (size_t)c * sizeof(float), (void **)&scale));
    float *shift = scale + c;
    for (int n = 0; n < x->n; n++) {
        const float *ms = mean_rstd + (size_t)n * norm->groups * 2;
        for (int ch = 0; ch < c; ch++) {
            double mean = ms[(ch / cg) * 2], rstd = ms[(ch / cg) * 2 + 1];
            scale[ch] = (float)(rstd * gamma[ch]);
            shift[ch] = (float)(beta[ch] - mean * rstd * gamma[ch]);
        }
        const float *xs = (const float *)x->data + (size_t)n * pixels * c;
        float *ys = (float *)out->data + (size_t)n * pixels * c;
#pragma omp parallel num_threads(threads)
        {
            size_t p0, p1;
            cpu_share(pixels, &p0, &p1);
            scale_shift_rows(xs + p0 * c, p1 - p0, c, scale, shift, silu, ys + p0 * c);
        }
    }
    return D3SR_OK;
}
