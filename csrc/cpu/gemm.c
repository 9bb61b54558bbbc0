/* gemm.c: matrix products on OpenBLAS (scipy-openblas32), split over our
 * threads, and the layer that is one: linear (beside cuda/gemm.cu's).
 *
 * OpenBLAS is kept single-threaded and each of our threads multiplies a slab:
 * rows of C when M is large (each slab repacks B, which costs little when the
 * slab is tall), else 128-column slabs. One pool of threads runs at a time.
 */
#include <pthread.h>
#include <string.h>

#include "../core/threads.h"
#include "cpu.h"

#include <cblas.h> /* scipy_openblas32's header: every symbol carries a scipy_ prefix */
#define SGEMM scipy_cblas_sgemm
#define SET_BLAS_THREADS scipy_openblas_set_num_threads

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_single_threaded(void) { SET_BLAS_THREADS(1); }

void cpu_gemm_serial(int b_trans, int M, int N, int K, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc)
{
    pthread_once(&blas_once, blas_single_threaded);
    if (M <= 0 || N <= 0) return;
    SGEMM(CblasRowMajor, CblasNoTrans, b_trans ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda, B,
          ldb, beta, C, ldc);
}

/* Rows per thread below which splitting over columns keeps threads busier. */
#define MIN_ROWS_PER_THREAD 64
/* Column slabs when splitting over columns: measured on 2 threads, 128-column
 * slabs scheduled dynamically run at full speed where halves ran at half
 * (OpenBLAS blocks a 640-wide slab badly, e.g. the text context's k/v). */
#define COLUMN_SLAB 128

void cpu_gemm(int b_trans, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc)
{
    pthread_once(&blas_once, blas_single_threaded);
    int threads = d3sr_threads();
    if (threads <= 1 || (long)M * N * K < 1L << 18) {
        cpu_gemm_serial(b_trans, M, N, K, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (M >= MIN_ROWS_PER_THREAD * threads) {
#pragma omp parallel num_threads(threads)
        {
#ifdef _OPENMP
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
            int t = 0, nt = 1;
#endif
            /* Slab edges on multiples of 16 rows keep OpenBLAS's micro-tiles whole. */
            int step = (M + nt - 1) / nt;
            step = (step + 15) / 16 * 16;
            int m0 = t * step, m1 = m0 + step < M ? m0 + step : M;
            if (m0 < m1)
                cpu_gemm_serial(b_trans, m1 - m0, N, K, A + (size_t)m0 * lda, lda, B, ldb, beta,
                                C + (size_t)m0 * ldc, ldc);
        }
        return;
    }
    const int slabs = (N + COLUMN_SLAB - 1) / COLUMN_SLAB;
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (int slab = 0; slab < slabs; slab++) {
        int n0 = slab * COLUMN_SLAB, n1 = n0 + COLUMN_SLAB < N ? n0 + COLUMN_SLAB : N;
        const float *Bt = b_trans ? B + (size_t)n0 * ldb : B + n0;
        cpu_gemm_serial(b_trans, M, n1 - n0, K, A, lda, Bt, ldb, beta, C + n0, ldc);
    }
}

/* Rows [row0, row1) of a product's output set to bias + residual (either may
 * be NULL), so the product accumulates onto them: this fuses the bias and the
 * ResNet skip-add into convolutions and linear layers. */
void cpu_init_rows(float *out, const float *bias, const float *residual, size_t row0, size_t row1,
                   int cols)
{
    for (size_t r = row0; r < row1; r++) {
        float *dst = out + r * (size_t)cols;
        const float *res = residual ? residual + r * (size_t)cols : NULL;
        if (bias && res)
            for (int c = 0; c < cols; c++) dst[c] = bias[c] + res[c];
        else if (bias)
            memcpy(dst, bias, (size_t)cols * sizeof *dst);
        else if (res)
            memcpy(dst, res, (size_t)cols * sizeof *dst);
        else
            memset(dst, 0, (size_t)cols * sizeof *dst);
    }
}

d3sr_status cpu_linear(d3sr_ctx *ctx, const d3sr_tensor *x, const d3sr_linear *lin,
                       const d3sr_tensor *residual, d3sr_tensor *out)
{
    (void)ctx;
    const size_t rows = d3sr_tensor_numel(x) / (size_t)lin->in;
    const float *bias = lin->bias.data;
    const float *res = residual ? residual->data : NULL;
    const int accumulate = bias || res;
    if (accumulate) {
#pragma omp parallel num_threads(d3sr_threads())
        {
            size_t r0, r1;
            cpu_share(rows, &r0, &r1);
            cpu_init_rows(out->data, bias, res, r0, r1, lin->out);
        }
    }
    cpu_gemm(1, (int)rows, lin->out, lin->in, x->data, lin->in, lin->weight.data, lin->in,
             accumulate ? 1.0f : 0.0f, out->data, lin->out);
    return D3SR_OK;
}
