/* images.c: argument and range checks of the metric inputs; see images.h. */
#include "images.h"

#include <math.h>

#include "../core/status.h"
#include "../core/threads.h"

static d3sr_status check_range(const float *x, size_t count, const char *name)
{
    float lo = 0.0f, hi = 1.0f;
    int bad = 0;
#pragma omp parallel for num_threads(d3sr_threads()) reduction(min : lo) reduction(max : hi) reduction(| : bad) schedule(static)
    for (size_t i = 0; i < count; i++) {
        float v = x[i];
        bad |= !isfinite(v);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if (bad) return d3sr_fail(D3SR_ERR_VALUE, "%s contains NaN or Inf", name);
    if (lo < 0.0f || hi > 1.0f)
        return d3sr_fail(D3SR_ERR_VALUE,
                         "%s has values in [%g, %g]; float images must lie in [0, 1] "
                         "(clip them, or pass uint8 for 0..255)", name, lo, hi);
    return D3SR_OK;
}

d3sr_status d3sr_check_images(const void *a, const void *b, d3sr_pixels type, int n, int h, int w)
{
    if (type != D3SR_PIXELS_U8 && type != D3SR_PIXELS_F32)
        return d3sr_fail(D3SR_ERR_TYPE, "images must be uint8 or float32");
    if (n < 1 || h < 1 || w < 1)
        return d3sr_fail(D3SR_ERR_VALUE, "the images are empty: [%d, %d, %d, 3]", n, h, w);
    if ((int64_t)n * h * w > ((int64_t)1 << 40) / 3)
        return d3sr_fail(D3SR_ERR_VALUE, "the images are too large: [%d, %d, %d, 3]", n, h, w);
    if (type == D3SR_PIXELS_U8) return D3SR_OK;
    size_t count = (size_t)n * h * w * 3;
    D3SR_CHECK(check_range(a, count, "a"));
    return check_range(b, count, "b");
}
