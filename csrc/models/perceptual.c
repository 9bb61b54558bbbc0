/* perceptual.c: the networks of LPIPS (AlexNet or VGG16 features, v0.1 "lin"
 * layers) and DISTS (VGG16 features with L2 pooling), over ops.
 *
 * Layer indices and names are torchvision's `features.<i>`, so torchvision's
 * state_dict loads by name (under an "alexnet." or "vgg16." prefix in d3sr's
 * metric weight file). Both images of a pair run as one batch [2k, h, w, 3]:
 * the first k samples are the a images, the last k the b images, and each
 * stage's output is compared half against half as soon as it exists:
 *
 *   AlexNet: conv0 (11x11 s4 p2) relu | maxpool 3/2, conv3 (5x5 p2) relu |
 *            maxpool 3/2, conv6 relu | conv8 relu | conv10 relu          (3x3 p1)
 *   VGG16:   conv0 relu conv2 relu | pool, conv5 .. conv7 | pool, conv10 .. conv14 |
 *            pool, conv17 .. conv21 | pool, conv24 .. conv28            (3x3 p1)
 *   ("|" ends a stage; LPIPS' pool is MaxPool2d(2, 2), DISTS' the L2 pooling)
 *
 * Input normalisation (LPIPS' scaling layer, DISTS' ImageNet mean and std)
 * and EA-DISTS' Sobel map are computed on the host in float32 with
 * PyTorch's operation order, then uploaded. The per-stage results (LPIPS
 * distances, DISTS moments) come back to the host, where the final
 * weighting runs in float64.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/threads.h"
#include "../metrics/images.h"
#include "model.h"

#define MAX_CONVS 13
#define STAGES 5
#define DISTS_CHANNELS 1475 /* 3 + 64 + 128 + 256 + 512 + 512 */
/* Pairs per chunk: 2k h w <= 2^19 pixels (one pair of 512 x 512 images), so a
 * VGG16 stage holds about 128 MiB per activation. */
#define CHUNK_PIXELS (1 << 19)
#define CHUNK_MAX_PAIRS 64

typedef struct {
    int index, cin, cout, kernel, stride, pad;
} conv_spec;

static const conv_spec ALEXNET[] = {
    {0, 3, 64, 11, 4, 2}, {3, 64, 192, 5, 1, 2}, {6, 192, 384, 3, 1, 1}, {8, 384, 256, 3, 1, 1}, {10, 256, 256, 3, 1, 1},
};
static const int ALEXNET_STAGE_END[STAGES] = {1, 2, 3, 4, 5}; /* convs before each stage's end */
static const int ALEXNET_CHANNELS[STAGES] = {64, 192, 384, 256, 256};

static const conv_spec VGG16[] = {
    {0, 3, 64, 3, 1, 1},     {2, 64, 64, 3, 1, 1},    {5, 64, 128, 3, 1, 1},   {7, 128, 128, 3, 1, 1},
    {10, 128, 256, 3, 1, 1}, {12, 256, 256, 3, 1, 1}, {14, 256, 256, 3, 1, 1}, {17, 256, 512, 3, 1, 1},
    {19, 512, 512, 3, 1, 1}, {21, 512, 512, 3, 1, 1}, {24, 512, 512, 3, 1, 1}, {26, 512, 512, 3, 1, 1},
    {28, 512, 512, 3, 1, 1},
};
static const int VGG16_STAGE_END[STAGES] = {2, 4, 7, 10, 13};
static const int VGG16_CHANNELS[STAGES] = {64, 128, 256, 512, 512};

/* lpips' ScalingLayer and DISTS' normalisation, per RGB channel. */
static const float LPIPS_SHIFT[3] = {-0.030f, -0.088f, -0.188f}, LPIPS_SCALE[3] = {0.458f, 0.448f, 0.450f};
static const float IMAGENET_MEAN[3] = {0.485f, 0.456f, 0.406f}, IMAGENET_STD[3] = {0.229f, 0.224f, 0.225f};

typedef struct {
    d3sr_perceptual_kind kind;
    const int *stage_end, *channels;
    int n_convs;
    d3sr_conv convs[MAX_CONVS];
    d3sr_conv lins[STAGES];        /* LPIPS: lin<k>.model.1, [1, c, 1, 1], no bias */
    d3sr_tensor alpha, beta;       /* DISTS: [1, 1475, 1, 1] */
    float *host;                   /* owned: the call's host buffers, grown on demand */
    size_t host_floats;
} perceptual;

/* What one forward pass reads and writes on the host. */
typedef struct {
    const perceptual *p;
    int k, h, w;          /* k pairs of h x w images */
    const float *input;   /* [2k, h, w, 3]: normalised a images, then b images */
    const float *raw;     /* DISTS: [2k, h, w, 3], the images the network's input came from */
    float *results;       /* LPIPS: [STAGES][k] distances; DISTS: [6][k][5][c_stage] moments */
    float *weights;       /* DISTS: alpha then beta, [2][1475] */
} perceptual_call;

static void perceptual_free_impl(void *impl)
{
    perceptual *p = impl;
    free(p->host);
}

static const char *kind_name(d3sr_perceptual_kind kind)
{
    return kind == D3SR_LPIPS_ALEX ? "LPIPS (alex)" : kind == D3SR_LPIPS_VGG ? "LPIPS (vgg)" : "DISTS";
}

d3sr_status d3sr_perceptual_create(d3sr_perceptual_kind kind, const char *device, d3sr_dtype dtype,
                                   d3sr_model **out)
{
    *out = NULL;
    if (kind != D3SR_LPIPS_ALEX && kind != D3SR_LPIPS_VGG && kind != D3SR_DISTS)
        return d3sr_fail(D3SR_ERR_VALUE, "unknown perceptual metric %d", (int)kind);
    d3sr_model *m;
    D3SR_CHECK(d3sr_model_new(D3SR_MODEL_PERCEPTUAL, device, dtype, sizeof(perceptual), perceptual_free_impl, &m));
    static const char *const lpips_kernels[] = {"max_pool", "lpips_distance", NULL};
    static const char *const dists_kernels[] = {"l2_pool", "pair_moments", NULL};
    d3sr_status status = d3sr_ctx_require(&m->ctx, kind_name(kind), kind == D3SR_DISTS ? dists_kernels : lpips_kernels);
    if (status != D3SR_OK) {
        d3sr_model_free(m);
        return status;
    }
    perceptual *p = m->impl;
    p->kind = kind;
    const int alex = kind == D3SR_LPIPS_ALEX;
    const conv_spec *specs = alex ? ALEXNET : VGG16;
    const char *net = alex ? "alexnet" : "vgg16";
    p->n_convs = alex ? 5 : 13;
    p->stage_end = alex ? ALEXNET_STAGE_END : VGG16_STAGE_END;
    p->channels = alex ? ALEXNET_CHANNELS : VGG16_CHANNELS;
    for (int i = 0; i < p->n_convs && status == D3SR_OK; i++) {
        const conv_spec *s = &specs[i];
        status = d3sr_conv_register(&m->params, &p->convs[i], s->cin, s->cout, s->kernel, s->stride, s->pad, 1,
                                    "%s.features.%d", net, s->index);
    }
    if (kind == D3SR_DISTS) {
        int64_t shape[4] = {1, DISTS_CHANNELS, 1, 1};
        if (status == D3SR_OK) status = d3sr_params_add(&m->params, &p->alpha, D3SR_WEIGHT_VECTOR, 4, shape, "dists.alpha");
        if (status == D3SR_OK) status = d3sr_params_add(&m->params, &p->beta, D3SR_WEIGHT_VECTOR, 4, shape, "dists.beta");
    } else {
        for (int k = 0; k < STAGES && status == D3SR_OK; k++)
            status = d3sr_conv_register(&m->params, &p->lins[k], p->channels[k], 1, 1, 1, 0, 0,
                                        "lpips.%s.lin%d.model.1",
                                        alex ? "alex" : "vgg", k);
    }
    if (status != D3SR_OK) {
        d3sr_model_free(m);
        return status;
    }
    *out = m;
    return D3SR_OK;
}

/* The smallest image side the network runs on: AlexNet's two 3/2 max pools
 * after its stride-4 conv need 31 pixels, VGG16's four 2/2 pools 16; L2
 * pooling pads, so DISTS runs on any size. */
static int min_side(d3sr_perceptual_kind kind)
{
    return kind == D3SR_LPIPS_ALEX ? 31 : kind == D3SR_LPIPS_VGG ? 16 : 1;
}

/* ---- forward ----------------------------------------------------------- */

static d3sr_status replace(d3sr_ctx *ctx, d3sr_tensor *x, d3sr_tensor *y)
{
    *x = *y;
    return D3SR_OK;
}

/* Compares the a half of x with its b half: LPIPS distances or DISTS moments
 * into the call's results slot. */
static d3sr_status compare_halves(d3sr_ctx *ctx, const perceptual_call *call, const d3sr_tensor *x, int slot,
                                  size_t offset)
{
    d3sr_tensor a, b, r;
    D3SR_CHECK(d3sr_batch_slice(x, 0, call->k, &a));
    D3SR_CHECK(d3sr_batch_slice(x, call->k, 2 * call->k, &b));
    if (call->p->kind == D3SR_DISTS) {
        D3SR_CHECK(d3sr_pair_moments(ctx, &a, &b, &r));                              // [k, 1, 5, c]
        D3SR_CHECK(d3sr_download(ctx, &r, call->results + offset));
    } else {
        D3SR_CHECK(d3sr_lpips_distance(ctx, &a, &b, &call->p->lins[slot].weight, &r)); // [k, 1, 1, 1]
        D3SR_CHECK(d3sr_download(ctx, &r, call->results + (size_t)slot * call->k));
    }
    return D3SR_OK;
}

static d3sr_status perceptual_forward(d3sr_ctx *ctx, void *arg)
{
    const perceptual_call *call = arg;
    const perceptual *p = call->p;
    const int dists = p->kind == D3SR_DISTS, k2 = 2 * call->k;
    size_t offset = 0; /* DISTS: where the next moments go in results */
    d3sr_tensor x, y;
    if (dists) {
        D3SR_CHECK(d3sr_download(ctx, &p->alpha, call->weights));
        D3SR_CHECK(d3sr_download(ctx, &p->beta, call->weights + DISTS_CHANNELS));
        D3SR_CHECK(d3sr_upload(ctx, call->raw, k2, call->h, call->w, 3, &x));       // [2k, h, w, 3]
        D3SR_CHECK(compare_halves(ctx, call, &x, 0, offset));
        offset += (size_t)call->k * 5 * 3;
    }
    D3SR_CHECK(d3sr_upload(ctx, call->input, k2, call->h, call->w, 3, &x));          // [2k, h, w, 3]
    int conv = 0;
    for (int s = 0; s < STAGES; s++) {
        int pooled = p->kind == D3SR_LPIPS_ALEX ? s == 1 || s == 2 : s > 0; /* AlexNet: before stages 2, 3 */
        if (pooled) {                                                                 // [2k, ~h/2, ~w/2, c]
            if (dists) D3SR_CHECK(d3sr_l2_pool(ctx, &x, &y));
            else D3SR_CHECK(d3sr_max_pool(ctx, &x, p->kind == D3SR_LPIPS_ALEX ? 3 : 2, 2, &y));
            D3SR_CHECK(replace(ctx, &x, &y));
        }
        for (; conv < p->stage_end[s]; conv++) {
            D3SR_CHECK(d3sr_conv2d(ctx, &x, &p->convs[conv], NULL, &y));             // [2k, h', w', cout]
            D3SR_CHECK(replace(ctx, &x, &y));
            D3SR_CHECK(d3sr_activation_inplace(ctx, &x, D3SR_ACT_RELU, 0.0f));
        }
        D3SR_CHECK(d3sr_capture_tensor(ctx, &x, "stage%d", s + 1));
        D3SR_CHECK(compare_halves(ctx, call, &x, s, offset));
        offset += (size_t)call->k * 5 * p->channels[s];
    }
    return D3SR_OK;
}

/* ---- host side: inputs and scores --------------------------------------- */

/* EA-DISTS' edge map of image i: gray = channel mean, Sobel with zero
 * padding 1, sqrt(gx^2 + gy^2 + 1e-6), repeated to three channels in dst
 * [h, w, 3]; gray [h, w] is scratch. */
static void sobel_map(const void *img, d3sr_pixels type, int i, int h, int w, float *gray, float *dst)
{
    const size_t base = (size_t)i * h * w * 3;
#pragma omp parallel num_threads(d3sr_threads())
    {
#pragma omp for schedule(static)
        for (size_t p = 0; p < (size_t)h * w; p++) {
            size_t q = base + 3 * p;
            float sum = d3sr_pixel_at(img, type, q) + d3sr_pixel_at(img, type, q + 1);
            gray[p] = (sum + d3sr_pixel_at(img, type, q + 2)) / 3.0f;
        }
#pragma omp for schedule(static)
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                float v[3][3];
                for (int dy = 0; dy < 3; dy++)
                    for (int dx = 0; dx < 3; dx++) {
                        int yy = y + dy - 1, xx = x + dx - 1;
                        v[dy][dx] = yy < 0 || yy >= h || xx < 0 || xx >= w ? 0.0f : gray[(size_t)yy * w + xx];
                    }
                /* Gx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], Gy its transpose (cross-correlation, as conv2d) */
                float gx = (v[0][2] - v[0][0]) + 2.0f * (v[1][2] - v[1][0]) + (v[2][2] - v[2][0]);
                float gy = (v[2][0] - v[0][0]) + 2.0f * (v[2][1] - v[0][1]) + (v[2][2] - v[0][2]);
                float e = sqrtf(gx * gx + gy * gy + 1e-6f);
                float *o = dst + ((size_t)y * w + x) * 3;
                o[0] = o[1] = o[2] = e;
            }
        }
    }
}

/* raw [h, w, 3] of image i (its pixels, or its edge map) and the network's
 * input from it. */
static void prepare_image(const perceptual *p, const void *img, d3sr_pixels type, int i, int h, int w, int edges,
                          float *gray, float *raw, float *input)
{
    const size_t count = (size_t)h * w * 3;
    if (edges) {
        sobel_map(img, type, i, h, w, gray, raw);
    } else {
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
        for (size_t q = 0; q < count; q++) raw[q] = d3sr_pixel_at(img, type, (size_t)i * count + q);
    }
    const int dists = p->kind == D3SR_DISTS;
#pragma omp parallel for num_threads(d3sr_threads()) schedule(static)
    for (size_t q = 0; q < count; q++) {
        int c = (int)(q % 3);
        if (dists) {
            input[q] = (raw[q] - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        } else {
            float v = 2.0f * raw[q] - 1.0f; /* [0, 1] -> [-1, 1], as lpips' normalize=True */
            input[q] = (v - LPIPS_SHIFT[c]) / LPIPS_SCALE[c];
        }
    }
}

/* DISTS of pair j from the moments of the six feature sets. */
static double dists_score(const perceptual_call *call, int j)
{
    static const int chns[6] = {3, 64, 128, 256, 512, 512};
    const float *alpha = call->weights, *beta = call->weights + DISTS_CHANNELS;
    double w_sum = 0.0;
    for (int c = 0; c < DISTS_CHANNELS; c++) w_sum += (double)alpha[c] + beta[c];
    const double c1 = 1e-6, c2 = 1e-6;
    double dist1 = 0.0, dist2 = 0.0;
    size_t offset = 0;
    int base = 0;
    for (int t = 0; t < 6; t++) {
        const int c = chns[t];
        const float *m = call->results + offset + (size_t)j * 5 * c;
        for (int ch = 0; ch < c; ch++) {
            double ma = m[ch], mb = m[c + ch], va = m[2 * c + ch], vb = m[3 * c + ch], cov = m[4 * c + ch];
            dist1 += alpha[base + ch] / w_sum * ((2 * ma * mb + c1) / (ma * ma + mb * mb + c1));
            dist2 += beta[base + ch] / w_sum * ((2 * cov + c2) / (va + vb + c2));
        }
        offset += (size_t)call->k * 5 * c;
        base += c;
    }
    return 1.0 - (dist1 + dist2);
}

d3sr_status d3sr_perceptual_score(d3sr_model *m, const void *a, const void *b, d3sr_pixels type, int n, int h,
                                  int w, int edge_aware, double *scores)
{
    if (m->kind != D3SR_MODEL_PERCEPTUAL)
        return d3sr_fail(D3SR_ERR_TYPE, "perceptual_score needs a perceptual metric network");
    perceptual *p = m->impl;
    D3SR_CHECK(d3sr_check_images(a, b, type, n, h, w));
    if (edge_aware && p->kind != D3SR_DISTS)
        return d3sr_fail(D3SR_ERR_VALUE, "edge_aware (EA-DISTS) needs a DISTS network, not %s", kind_name(p->kind));
    int least = min_side(p->kind);
    if (h < least || w < least)
        return d3sr_fail(D3SR_ERR_VALUE, "%s needs images of at least %d x %d pixels, got %d x %d", kind_name(p->kind),
                         least, least, h, w);
    D3SR_CHECK(d3sr_model_enter(m, D3SR_MODEL_PERCEPTUAL, kind_name(p->kind)));

    const int dists = p->kind == D3SR_DISTS;
    const size_t image = (size_t)h * w * 3;
    /* Pairs per chunk: bounded by pixels and by count, since each pair also
     * holds its per-stage results (20 000 pairs of 1 x 1 images took 1 GB). */
    int k = (int)(CHUNK_PIXELS / (2 * (size_t)h * w));
    k = k < 1 ? 1 : k > CHUNK_MAX_PAIRS ? CHUNK_MAX_PAIRS : k;
    k = k > n ? n : k;
    /* host: input [2k][image], raw [2k][image], gray [h w], results, weights */
    const size_t results = dists ? (size_t)k * 5 * DISTS_CHANNELS : (size_t)STAGES * k;
    const size_t need = 4 * (size_t)k * image + (size_t)h * w + results + 2 * DISTS_CHANNELS;
    d3sr_status status = D3SR_OK;
    if (need > p->host_floats) {
        free(p->host);
        p->host = malloc(need * sizeof *p->host);
        p->host_floats = p->host ? need : 0;
        if (!p->host) status = d3sr_fail(D3SR_ERR_MEMORY, "out of host memory for %d pairs of %d x %d images", k, h, w);
    }
    float *input = p->host, *raw = input + 2 * (size_t)k * image, *gray = raw + 2 * (size_t)k * image;
    perceptual_call call = {p, 0, h, w, input, raw, gray + (size_t)h * w, gray + (size_t)h * w + results};
    for (int i0 = 0; i0 < n && status == D3SR_OK; i0 += k) {
        call.k = i0 + k <= n ? k : n - i0;
        for (int edges = 0; edges <= (edge_aware ? 1 : 0) && status == D3SR_OK; edges++) {
            for (int j = 0; j < call.k; j++) {
                prepare_image(p, a, type, i0 + j, h, w, edges, gray, raw + j * image, input + j * image);
                prepare_image(p, b, type, i0 + j, h, w, edges, gray, raw + (call.k + j) * image,
                              input + (call.k + j) * image);
            }
            status = d3sr_ctx_run(&m->ctx, perceptual_forward, &call);
            for (int j = 0; j < call.k && status == D3SR_OK; j++) {
                double score = 0.0;
                if (dists) {
                    score = dists_score(&call, j);
                } else {
                    for (int s = 0; s < STAGES; s++) score += call.results[(size_t)s * call.k + j];
                }
                scores[i0 + j] = edges ? scores[i0 + j] + score : score;
                if (!isfinite(scores[i0 + j]))
                    status = d3sr_fail(D3SR_ERR_VALUE, "%s of pair %d is NaN or Inf although the images were finite: "
                                       "the metric weights make the network overflow", kind_name(p->kind), i0 + j);
            }
        }
    }
    d3sr_model_leave(m);
    return status;
}
