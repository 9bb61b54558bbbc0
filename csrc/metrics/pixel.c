/* pixel.c: PSNR and SSIM as pyiqa computes them (d3sr.h, "image-quality metrics").
 *
 * Inputs become float32 exactly as pyiqa sees them (images.h); PSNR then sums
 * squared float32 differences in float64, and SSIM filters the rounded
 * 0..255 values in float64, as pyiqa does after its .to(float64). SSIM's
 * 11x11 Gaussian is applied as two 11-tap passes (the window is separable);
 * the output rows are cut into strips, each strip filtered by one thread
 * through a small buffer, so memory stays a few MiB for any image size.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/status.h"
#include "../core/threads.h"
#include "images.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define SSIM_WINDOW 11
#define SSIM_SIGMA 1.5
#define SSIM_STRIP 64 /* output rows per strip */

static d3sr_status check_options(const d3sr_pixel_metric_options *o, int h, int w, const char *what)
{
    if (o->crop_border < 0)
        return d3sr_fail(D3SR_ERR_VALUE, "%s: crop_border must be >= 0, not %d", what, o->crop_border);
    if (2 * (int64_t)o->crop_border >= h || 2 * (int64_t)o->crop_border >= w)
        return d3sr_fail(D3SR_ERR_VALUE, "%s: crop_border %d leaves nothing of a %d x %d image", what,
                         o->crop_border, h, w);
    return D3SR_OK;
}

/* ---- PSNR -------------------------------------------------------------- */

d3sr_status d3sr_psnr(const void *a, const void *b, d3sr_pixels type, int n, int h, int w,
                      const d3sr_pixel_metric_options *o, double *scores)
{
    D3SR_CHECK(d3sr_check_images(a, b, type, n, h, w));
    D3SR_CHECK(check_options(o, h, w, "psnr"));
    const int cb = o->crop_border, hc = h - 2 * cb, wc = w - 2 * cb, y_channel = o->y_channel;
    for (int i = 0; i < n; i++) {
        double sum = 0.0;
#pragma omp parallel for num_threads(d3sr_threads()) reduction(+ : sum) schedule(static)
        for (int y = 0; y < hc; y++) {
            size_t base = (((size_t)i * h + y + cb) * w + cb) * 3;
            for (int x = 0; x < wc; x++) {
                size_t p = base + 3 * (size_t)x;
                float ra = d3sr_pixel_at(a, type, p), ga = d3sr_pixel_at(a, type, p + 1), ba = d3sr_pixel_at(a, type, p + 2);
                float rb = d3sr_pixel_at(b, type, p), gb = d3sr_pixel_at(b, type, p + 1), bb = d3sr_pixel_at(b, type, p + 2);
                if (y_channel) {
                    double d = d3sr_luma_of(ra, ga, ba) - d3sr_luma_of(rb, gb, bb);
                    sum += d * d;
                } else {
                    double dr = ra - rb, dg = ga - gb, db = ba - bb;
                    sum += dr * dr + dg * dg + db * db;
                }
            }
        }
        double mse = sum / ((double)hc * wc * (y_channel ? 1 : 3));
        scores[i] = 10.0 * log10(1.0 / (mse + 1e-8));
    }
    return D3SR_OK;
}

/* ---- luma -------------------------------------------------------------- */

d3sr_status d3sr_luma(const void *rgb, d3sr_pixels type, int n, int h, int w, int rounded, float *out)
{
    D3SR_CHECK(d3sr_check_images(rgb, rgb, type, n, h, w));
    const size_t count = (size_t)n * h * w;
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (size_t p = 0; p < count; p++) {
        float y = d3sr_luma_of(d3sr_pixel_at(rgb, type, 3 * p), d3sr_pixel_at(rgb, type, 3 * p + 1),
                               d3sr_pixel_at(rgb, type, 3 * p + 2));
        out[p] = rounded ? rintf(y * 255.0f) : y;
    }
    return D3SR_OK;
}

/* ---- SSIM -------------------------------------------------------------- */

/* One channel of one pair, in 0..255 (rounded, maybe downsampled), float64. */
typedef struct {
    const double *a, *b; /* borrowed: [h, w] */
    int h, w;
} ssim_plane;

/* fspecial('gaussian', 11, 1.5) is the outer product of this, normalised. */
static void gaussian_taps(double taps[SSIM_WINDOW])
{
    double sum = 0.0;
    for (int i = 0; i < SSIM_WINDOW; i++) {
        double d = i - (SSIM_WINDOW - 1) / 2.0;
        taps[i] = exp(-d * d / (2.0 * SSIM_SIGMA * SSIM_SIGMA));
        sum += taps[i];
    }
    for (int i = 0; i < SSIM_WINDOW; i++) taps[i] /= sum;
}

/* Sum of the SSIM map over output rows [r0, r1) of a plane; buf holds
 * (r1 - r0 + 10) rows of the five horizontally filtered maps. */
static double ssim_strip(const ssim_plane *pl, const double taps[SSIM_WINDOW], int r0, int r1, double *buf)
{
    const double C1 = (0.01 * 255) * (0.01 * 255), C2 = (0.03 * 255) * (0.03 * 255);
    const int wv = pl->w - (SSIM_WINDOW - 1), rows = r1 - r0 + SSIM_WINDOW - 1;
    /* buf: [rows][5][wv]: x, y, x*x, y*y, x*y filtered along each row */
    for (int r = 0; r < rows; r++) {
        const double *xa = pl->a + (size_t)(r0 + r) * pl->w, *xb = pl->b + (size_t)(r0 + r) * pl->w;
        double *m = buf + (size_t)r * 5 * wv;
        for (int x = 0; x < wv; x++) {
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0;
            for (int k = 0; k < SSIM_WINDOW; k++) {
                double u = xa[x + k], v = xb[x + k], t = taps[k];
                s0 += t * u;
                s1 += t * v;
                s2 += t * u * u;
                s3 += t * v * v;
                s4 += t * u * v;
            }
            m[x] = s0;
            m[wv + x] = s1;
            m[2 * wv + x] = s2;
            m[3 * wv + x] = s3;
            m[4 * wv + x] = s4;
        }
    }
    double total = 0.0;
    for (int r = 0; r < r1 - r0; r++) {
        for (int x = 0; x < wv; x++) {
            double mu1 = 0, mu2 = 0, e11 = 0, e22 = 0, e12 = 0;
            for (int k = 0; k < SSIM_WINDOW; k++) {
                const double *m = buf + (size_t)(r + k) * 5 * wv + x;
                double t = taps[k];
                mu1 += t * m[0];
                mu2 += t * m[wv];
                e11 += t * m[2 * wv];
                e22 += t * m[3 * wv];
                e12 += t * m[4 * wv];
            }
            double mu11 = mu1 * mu1, mu22 = mu2 * mu2, mu12 = mu1 * mu2;
            double cs = (2 * (e12 - mu12) + C2) / ((e11 - mu11) + (e22 - mu22) + C2);
            cs = cs > 0 ? cs : 0; /* pyiqa's F.relu: a non-negative response */
            total += (2 * mu12 + C1) / (mu11 + mu22 + C1) * cs;
        }
    }
    return total;
}

/* Strips of SSIM_STRIP output rows over the h - 10 valid rows of an h-row plane. */
static int ssim_strip_count(int h)
{
    return (h - (SSIM_WINDOW - 1) + SSIM_STRIP - 1) / SSIM_STRIP;
}

/* The strips' sums are added in strip order after the parallel loop: a
 * reduction over dynamically scheduled strips added them in whatever order the
 * threads took them, and the same images scored differently in the last bits
 * from one call to the next (seen under a loaded machine). strip_sums holds
 * one double per strip. */
static double ssim_plane_sum(const ssim_plane *pl, const double taps[SSIM_WINDOW], double *bufs, size_t buf_doubles,
                             double *strip_sums)
{
    const int hv = pl->h - (SSIM_WINDOW - 1), strips = ssim_strip_count(pl->h);
#pragma omp parallel for num_threads(d3sr_threads()) schedule(dynamic)
    for (int s = 0; s < strips; s++) {
#ifdef _OPENMP
        double *buf = bufs + (size_t)omp_get_thread_num() * buf_doubles;
#else
        double *buf = bufs;
#endif
        int r0 = s * SSIM_STRIP, r1 = r0 + SSIM_STRIP < hv ? r0 + SSIM_STRIP : hv;
        strip_sums[s] = ssim_strip(pl, taps, r0, r1, buf);
    }
    double sum = 0.0;
    for (int s = 0; s < strips; s++) sum += strip_sums[s];
    return sum;
}

/* Channel ch (-1: luma) of image i, cropped, rounded to 0..255 and averaged
 * over f x f blocks, into dst [hd, wd]. */
static void load_plane(const void *img, d3sr_pixels type, int i, int h, int w, int cb, int ch, int f, int hd,
                       int wd, double *dst)
{
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (int y = 0; y < hd; y++) {
        for (int x = 0; x < wd; x++) {
            double acc = 0.0;
            for (int dy = 0; dy < f; dy++)
                for (int dx = 0; dx < f; dx++) {
                    size_t p = (((size_t)i * h + cb + (size_t)y * f + dy) * w + cb + (size_t)x * f + dx) * 3;
                    float v = ch < 0 ? d3sr_luma_of(d3sr_pixel_at(img, type, p), d3sr_pixel_at(img, type, p + 1),
                                                    d3sr_pixel_at(img, type, p + 2))
                                     : d3sr_pixel_at(img, type, p + (size_t)ch);
                    acc += rintf(v * 255.0f); /* pyiqa's x.round() on float32, half to even */
                }
            dst[(size_t)y * wd + x] = f == 1 ? acc : acc / ((double)f * f);
        }
    }
}

d3sr_status d3sr_ssim(const void *a, const void *b, d3sr_pixels type, int n, int h, int w,
                      const d3sr_pixel_metric_options *o, double *scores)
{
    D3SR_CHECK(d3sr_check_images(a, b, type, n, h, w));
    D3SR_CHECK(check_options(o, h, w, "ssim"));
    const int cb = o->crop_border, hc = h - 2 * cb, wc = w - 2 * cb;
    int f = 1;
    if (o->downsample) {
        double r = nearbyint((hc < wc ? hc : wc) / 256.0); /* Python's round(): half to even */
        f = r > 1 ? (int)r : 1;
    }
    const int hd = hc / f, wd = wc / f;
    if (hd < SSIM_WINDOW || wd < SSIM_WINDOW)
        return d3sr_fail(D3SR_ERR_VALUE,
                         "ssim: the images are %d x %d after cropping %d pixels%s; the %dx%d window needs at least %d x %d",
                         hd, wd, cb, f > 1 ? " and downsampling" : "", SSIM_WINDOW, SSIM_WINDOW, SSIM_WINDOW, SSIM_WINDOW);
    const int threads = d3sr_threads(), channels = o->y_channel ? 1 : 3;
    const size_t plane = (size_t)hd * wd, wv = (size_t)wd - (SSIM_WINDOW - 1);
    const size_t buf_doubles = (size_t)(SSIM_STRIP + SSIM_WINDOW - 1) * 5 * wv;
    const size_t strips = (size_t)ssim_strip_count(hd);
    double *planes = malloc(2 * plane * sizeof *planes);
    double *bufs = malloc((size_t)threads * buf_doubles * sizeof *bufs);
    double *strip_sums = malloc(strips * sizeof *strip_sums);
    if (!planes || !bufs || !strip_sums) {
        free(planes);
        free(bufs);
        free(strip_sums);
        return d3sr_fail(D3SR_ERR_MEMORY, "ssim: out of host memory for a %d x %d image", hd, wd);
    }
    double taps[SSIM_WINDOW];
    gaussian_taps(taps);
    for (int i = 0; i < n; i++) {
        double total = 0.0;
        for (int c = 0; c < channels; c++) {
            int ch = o->y_channel ? -1 : c;
            load_plane(a, type, i, h, w, cb, ch, f, hd, wd, planes);
            load_plane(b, type, i, h, w, cb, ch, f, hd, wd, planes + plane);
            ssim_plane pl = {planes, planes + plane, hd, wd};
            total += ssim_plane_sum(&pl, taps, bufs, buf_doubles, strip_sums);
        }
        scores[i] = total / ((double)channels * (hd - (SSIM_WINDOW - 1)) * wv);
    }
    free(planes);
    free(bufs);
    free(strip_sums);
    return D3SR_OK;
}
