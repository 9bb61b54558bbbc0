/* color_fix.c: StableSR's colour corrections of a super-resolved image
 * against a reference (the bicubic-upsampled input), in place on the host.
 *
 * Images are [n, h, w, c] float32 (channels-last, as NumPy holds them).
 * adain:   per sample and channel, out = (sr - mean_sr) / std_sr * std_ref + mean_ref,
 *          std = sqrt(unbiased variance + 1e-5); sums in float64, two passes.
 * wavelet: out = sr - low(sr) + low(ref) = sr + low(ref - sr), low = five
 *          levels of the 3x3 blur [1 2 1]^T [1 2 1] / 16 with dilation
 *          r = 1, 2, 4, 8, 16 and replicate padding r. The blur is linear and
 *          separable, so one difference plane and one scratch plane per channel
 *          are the only extra memory (never a full-size copy of the image).
 * Both clamp the result to [0, 1].
 */
#include <math.h>
#include <stdlib.h>

#include "../core/status.h"
#include "../core/threads.h"
#include "../d3sr.h"

#define ADAIN_EPS 1e-5
#define WAVELET_LEVELS 5

static float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

/* mean and sqrt(unbiased variance + eps) of channel ch of one sample. */
static void channel_mean_std(const float *x, size_t pixels, int c, int ch, double *mean, double *std)
{
    double s = 0.0, q = 0.0;
#pragma omp parallel for num_threads(d3sr_threads()) reduction(+ : s) schedule(static)
    for (size_t p = 0; p < pixels; p++) s += x[p * c + ch];
    const double m = s / (double)pixels;
#pragma omp parallel for num_threads(d3sr_threads()) reduction(+ : q) schedule(static)
    for (size_t p = 0; p < pixels; p++) {
        double d = x[p * c + ch] - m;
        q += d * d;
    }
    *mean = m;
    *std = sqrt((pixels > 1 ? q / (double)(pixels - 1) : 0.0) + ADAIN_EPS);
}

static void adain(float *sr, const float *ref, size_t pixels, int c)
{
    for (int ch = 0; ch < c; ch++) {
        double sr_mean, sr_std, ref_mean, ref_std;
        channel_mean_std(sr, pixels, c, ch, &sr_mean, &sr_std);
        channel_mean_std(ref, pixels, c, ch, &ref_mean, &ref_std);
        const float m = (float)sr_mean, s = (float)sr_std, rm = (float)ref_mean, rs = (float)ref_std;
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
        for (size_t p = 0; p < pixels; p++) sr[p * c + ch] = clamp01((sr[p * c + ch] - m) / s * rs + rm);
    }
}

/* One blur level of plane src [h, w] into dst, through scratch: rows, then columns. */
static void blur_level(const float *src, float *scratch, float *dst, int h, int w, int r)
{
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (int y = 0; y < h; y++) {
        const float *row = src + (size_t)y * w;
        float *out = scratch + (size_t)y * w;
        for (int x = 0; x < w; x++) {
            int xl = x - r < 0 ? 0 : x - r, xr = x + r > w - 1 ? w - 1 : x + r;
            out[x] = 0.25f * row[xl] + 0.5f * row[x] + 0.25f * row[xr];
        }
    }
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (int y = 0; y < h; y++) {
        int yu = y - r < 0 ? 0 : y - r, yd = y + r > h - 1 ? h - 1 : y + r;
        const float *up = scratch + (size_t)yu * w, *mid = scratch + (size_t)y * w, *down = scratch + (size_t)yd * w;
        float *out = dst + (size_t)y * w;
        for (int x = 0; x < w; x++) out[x] = 0.25f * up[x] + 0.5f * mid[x] + 0.25f * down[x];
    }
}

static void wavelet(float *sr, const float *ref, int h, int w, int c, float *plane, float *scratch)
{
    const size_t pixels = (size_t)h * w;
    for (int ch = 0; ch < c; ch++) {
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
        for (size_t p = 0; p < pixels; p++) plane[p] = ref[p * c + ch] - sr[p * c + ch];
        for (int level = 0; level < WAVELET_LEVELS; level++) blur_level(plane, scratch, plane, h, w, 1 << level);
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
        for (size_t p = 0; p < pixels; p++) sr[p * c + ch] = clamp01(sr[p * c + ch] + plane[p]);
    }
}

d3sr_status d3sr_color_fix(float *sr, const float *ref, int n, int h, int w, int c, d3sr_color_fix_kind kind)
{
    if (n < 1 || h < 1 || w < 1 || c < 1)
        return d3sr_fail(D3SR_ERR_VALUE, "color_fix: the images are empty: [%d, %d, %d, %d]", n, h, w, c);
    if (kind != D3SR_COLOR_FIX_ADAIN && kind != D3SR_COLOR_FIX_WAVELET)
        return d3sr_fail(D3SR_ERR_VALUE, "color_fix: unknown kind %d", (int)kind);
    const size_t pixels = (size_t)h * w, sample = pixels * c;
    float *plane = NULL, *scratch = NULL;
    if (kind == D3SR_COLOR_FIX_WAVELET) {
        plane = malloc(pixels * sizeof *plane);
        scratch = malloc(pixels * sizeof *scratch);
        if (!plane || !scratch) {
            free(plane);
            free(scratch);
            return d3sr_fail(D3SR_ERR_MEMORY, "color_fix: out of memory for two %d x %d planes", h, w);
        }
    }
    for (int i = 0; i < n; i++) {
        if (kind == D3SR_COLOR_FIX_ADAIN)
            adain(sr + i * sample, ref + i * sample, pixels, c);
        else
            wavelet(sr + i * sample, ref + i * sample, h, w, c, plane, scratch);
    }
    free(plane);
    free(scratch);
    return D3SR_OK;
}
