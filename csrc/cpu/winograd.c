/* winograd.c: 3x3 stride-1 convolution by Winograd's F(2x2, 3x3).
 *
 * Each 2x2 block of output pixels is computed from a 4x4 block of input in
 * the transformed domain: Y = A^T [(G g G^T) . (B^T d B)] A. Summing the
 * elementwise products over input channels is 16 matrix products
 * [tiles, cin] x [cin, cout], one per transformed position, with 16
 * multiplications per 2x2 outputs instead of 36: 2.25x less arithmetic than
 * im2col for the convolutions that make up most of the VAE and UNet. The
 * transforms use only additions and halves, so results stay within float32
 * rounding of a direct convolution (Lavin & Gray, 2016).
 *
 * Weights are transformed at each call (U = G g G^T, [16][cout][cin], into the
 * workspace): storing them would take 16/9 of the memory, and the transform
 * costs about what one or two tiles save. Output blocks are processed in
 * chunks of tiles per thread: gather and
 * transform the inputs into V [16][tiles][cin], multiply into
 * M [16][tiles][cout], transform back and add bias and residual.
 */
#include <string.h>

#include "../core/threads.h"
#include "cpu.h"

/* U = G g G^T for output channel o: g is [3][3][cin] (the stored layout),
 * U [16][cout][cin]; G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
 * Vectorised over input channels. */
CPU_VECTOR_CLONES
static void weight_transform(const float *g, int cin, float *u, size_t xi_stride)
{
    const float *g00 = g, *g01 = g + cin, *g02 = g + 2 * cin;
    const float *g10 = g + 3 * cin, *g11 = g + 4 * cin, *g12 = g + 5 * cin;
    const float *g20 = g + 6 * cin, *g21 = g + 7 * cin, *g22 = g + 8 * cin;
#pragma omp simd
    for (int i = 0; i < cin; i++) {
        /* rows of G g: g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2 */
        float r[4][3];
        float a0 = g00[i], a1 = g01[i], a2 = g02[i];
        float b0 = g10[i], b1 = g11[i], b2 = g12[i];
        float c0 = g20[i], c1 = g21[i], c2 = g22[i];
        r[0][0] = a0; r[0][1] = a1; r[0][2] = a2;
        r[1][0] = 0.5f * (a0 + b0 + c0); r[1][1] = 0.5f * (a1 + b1 + c1); r[1][2] = 0.5f * (a2 + b2 + c2);
        r[2][0] = 0.5f * (a0 - b0 + c0); r[2][1] = 0.5f * (a1 - b1 + c1); r[2][2] = 0.5f * (a2 - b2 + c2);
        r[3][0] = c0; r[3][1] = c1; r[3][2] = c2;
        for (int k = 0; k < 4; k++) { /* times G^T: the same combination along each row */
            u[(size_t)(4 * k + 0) * xi_stride + i] = r[k][0];
            u[(size_t)(4 * k + 1) * xi_stride + i] = 0.5f * (r[k][0] + r[k][1] + r[k][2]);
            u[(size_t)(4 * k + 2) * xi_stride + i] = 0.5f * (r[k][0] - r[k][1] + r[k][2]);
            u[(size_t)(4 * k + 3) * xi_stride + i] = r[k][2];
        }
    }
}

/* V = B^T d B for one tile, every channel: d[k] points at the cin values of
 * input position k (row-major 4x4; a zero row where the tile leaves the input).
 * The 16 rows are named one by one so the channel loop vectorises. */
CPU_VECTOR_CLONES
static void input_transform(const float *const d[16], int cin, float *v, size_t xs)
{
    const float *d00 = d[0], *d01 = d[1], *d02 = d[2], *d03 = d[3];
    const float *d10 = d[4], *d11 = d[5], *d12 = d[6], *d13 = d[7];
    const float *d20 = d[8], *d21 = d[9], *d22 = d[10], *d23 = d[11];
    const float *d30 = d[12], *d31 = d[13], *d32 = d[14], *d33 = d[15];
    /* simd: the compiler cannot prove the rows read never alias v. */
#pragma omp simd
    for (int c = 0; c < cin; c++) {
        /* t = B^T d: rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3), per column */
        float t00 = d00[c] - d20[c], t01 = d01[c] - d21[c], t02 = d02[c] - d22[c], t03 = d03[c] - d23[c];
        float t10 = d10[c] + d20[c], t11 = d11[c] + d21[c], t12 = d12[c] + d22[c], t13 = d13[c] + d23[c];
        float t20 = d20[c] - d10[c], t21 = d21[c] - d11[c], t22 = d22[c] - d12[c], t23 = d23[c] - d13[c];
        float t30 = d10[c] - d30[c], t31 = d11[c] - d31[c], t32 = d12[c] - d32[c], t33 = d13[c] - d33[c];
        /* V = t B: the same combination along each row */
        v[0 * xs + c] = t00 - t02;
        v[1 * xs + c] = t01 + t02;
        v[2 * xs + c] = t02 - t01;
        v[3 * xs + c] = t01 - t03;
        v[4 * xs + c] = t10 - t12;
        v[5 * xs + c] = t11 + t12;
        v[6 * xs + c] = t12 - t11;
        v[7 * xs + c] = t11 - t13;
        v[8 * xs + c] = t20 - t22;
        v[9 * xs + c] = t21 + t22;
        v[10 * xs + c] = t22 - t21;
        v[11 * xs + c] = t21 - t23;
        v[12 * xs + c] = t30 - t32;
        v[13 * xs + c] = t31 + t32;
        v[14 * xs + c] = t32 - t31;
        v[15 * xs + c] = t31 - t33;
    }
}

/* Y = A^T m A for one tile plus bias and residual: m at xi_stride apart;
 * y[k] and res[k] point at output pixel k of the 2x2 block (a scratch row
 * and a zero row where the block leaves the output). */
CPU_VECTOR_CLONES
static void output_transform(const float *m, size_t xi_stride, int cout, const float *bias,
                             float *const y[4], const float *const res[4])
{
#pragma omp simd
    for (int c = 0; c < cout; c++) {
        float u0[4], u1[4];
        for (int s = 0; s < 4; s++) {
            float m0 = m[(size_t)s * xi_stride + c], m1 = m[(size_t)(4 + s) * xi_stride + c];
            float m2 = m[(size_t)(8 + s) * xi_stride + c], m3 = m[(size_t)(12 + s) * xi_stride + c];
            u0[s] = m0 + m1 + m2;
            u1[s] = m1 - m2 - m3;
        }
        float b = bias ? bias[c] : 0.0f;
        y[0][c] = u0[0] + u0[1] + u0[2] + b + res[0][c];
        y[1][c] = u0[1] - u0[2] - u0[3] + b + res[1][c];
        y[2][c] = u1[0] + u1[1] + u1[2] + b + res[2][c];
        y[3][c] = u1[1] - u1[2] - u1[3] + b + res[3][c];
    }
}

typedef struct {
    const float *x, *u, *bias, *res;
    float *out;
    int h, w, cin, cout, ho, wo, pad_top, pad_left;
    size_t tiles_h, tiles_w;
} wino_problem;

/* Transforms, multiplies and writes back tiles [t0, t1). scratch: the
 * chunk's V and M, a zero row and a discard row. parallel_gemm: whether the
 * products may use all threads (when chunks are too few to share). */
static void run_chunk(const wino_problem *pb, size_t t0, size_t t1, size_t chunk, float *scratch,
                      int parallel_gemm)
{
    const int cin = pb->cin, cout = pb->cout;
    const int widest = cin > cout ? cin : cout;
    float *V = scratch;                            /* [16][chunk][cin] */
    float *M = V + 16 * chunk * (size_t)cin;       /* [16][chunk][cout] */
    float *zeros = M + 16 * chunk * (size_t)cout;  /* [widest], all zero */
    float *discard = zeros + widest;               /* [cout] */
    memset(zeros, 0, (size_t)widest * sizeof *zeros);
    const size_t per_sample = pb->tiles_h * pb->tiles_w;

    for (size_t t = t0; t < t1; t++) {
        size_t n = t / per_sample, rem = t % per_sample;
        int ty = (int)(rem / pb->tiles_w), tx = (int)(rem % pb->tiles_w);
        const float *d[16];
        for (int r = 0; r < 4; r++) {
            int iy = 2 * ty - pb->pad_top + r;
            for (int s = 0; s < 4; s++) {
                int ix = 2 * tx - pb->pad_left + s;
                d[4 * r + s] = (iy < 0 || iy >= pb->h || ix < 0 || ix >= pb->w)
                                   ? zeros
                                   : pb->x + (((size_t)n * pb->h + iy) * pb->w + ix) * cin;
            }
        }
        input_transform(d, cin, V + (t - t0) * cin, chunk * cin);
    }

    const int rows = (int)(t1 - t0);
    for (int xi = 0; xi < 16; xi++) {
        const float *a = V + (size_t)xi * chunk * cin, *b = pb->u + (size_t)xi * cout * cin;
        float *c = M + (size_t)xi * chunk * cout;
        if (parallel_gemm)
            cpu_gemm(1, rows, cout, cin, a, cin, b, cin, 0.0f, c, cout);
        else
            cpu_gemm_serial(1, rows, cout, cin, a, cin, b, cin, 0.0f, c, cout);
    }

    for (size_t t = t0; t < t1; t++) {
        size_t n = t / per_sample, rem = t % per_sample;
        int ty = (int)(rem / pb->tiles_w), tx = (int)(rem % pb->tiles_w);
        float *y[4];
        const float *res[4];
        for (int k = 0; k < 4; k++) {
            int oy = 2 * ty + k / 2, ox = 2 * tx + k % 2;
            int inside = oy < pb->ho && ox < pb->wo;
            size_t pixel = ((size_t)n * pb->ho + oy) * pb->wo + ox;
            y[k] = inside ? pb->out + pixel * cout : discard;
            res[k] = inside && pb->res ? pb->res + pixel * cout : zeros;
        }
        output_transform(M + (t - t0) * cout, chunk * cout, cout, pb->bias, y, res);
    }
}

/* Tiles per chunk: V and M of a chunk take about 4 MiB. */
static size_t chunk_tiles(int cin, int cout)
{
    size_t tiles = (4u << 20) / (16 * sizeof(float) * (size_t)(cin + cout));
    return tiles < 32 ? 32 : tiles > 512 ? 512 : tiles;
}

d3sr_status cpu_winograd_conv2d(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_conv *cv,
                                const d3sr_tensor *residual, d3sr_tensor *out)
{
    wino_problem pb = {
        .x = x->data, .bias = cv->bias.data, .res = residual ? residual->data : NULL,
        .out = out->data, .h = x->h, .w = x->w, .cin = cv->cin, .cout = cv->cout, .ho = out->h, .wo = out->w,
        .pad_top = cv->pad_top, .pad_left = cv->pad_left,
        .tiles_h = (size_t)(out->h + 1) / 2, .tiles_w = (size_t)(out->w + 1) / 2,
    };
    const size_t total = (size_t)out->n * pb.tiles_h * pb.tiles_w;
    const int threads = d3sr_threads();
    size_t chunk = chunk_tiles(pb.cin, pb.cout);
    if (chunk > total) chunk = total;
    const size_t chunks = (total + chunk - 1) / chunk;
    const int widest = pb.cin > pb.cout ? pb.cin : pb.cout;
    const size_t per_thread = 16 * chunk * (size_t)(pb.cin + pb.cout) + (size_t)widest + (size_t)pb.cout;
    const size_t weights = 16 * (size_t)pb.cout * pb.cin;
    const int sequential = chunks < (size_t)threads; /* then the products use all threads */

    float *u, *scratch;
    D3SR_CHECK(d3sr_workspace(ctx, (weights + (sequential ? 1 : (size_t)threads) * per_thread) * sizeof(float), (void **)&u));
    scratch = u + weights;
    const float *g = cv->weight.data; /* [cout][3][3][cin] */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int o = 0; o < pb.cout; o++)
        weight_transform(g + (size_t)o * 9 * pb.cin, pb.cin, u + (size_t)o * pb.cin, (size_t)pb.cout * pb.cin);
    pb.u = u;

    if (sequential) {
        for (size_t t0 = 0; t0 < total; t0 += chunk)
            run_chunk(&pb, t0, t0 + chunk < total ? t0 + chunk : total, chunk, scratch, 1);
        return D3SR_OK;
    }
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        float *mine = scratch + (size_t)omp_get_thread_num() * per_thread;
#else
        float *mine = scratch;
#endif
#pragma omp for schedule(dynamic)
        for (size_t k = 0; k < chunks; k++) {
            size_t t0 = k * chunk, t1 = t0 + chunk < total ? t0 + chunk : total;
            run_chunk(&pb, t0, t1, chunk, mine, 0);
        }
    }
    return D3SR_OK;
}
