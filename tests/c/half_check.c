/* half_check.c: csrc/core/half.c against the C cast to _Float16, bit for bit.
 *
 * Every float16 bit pattern to float32; and to float16 every value a float16
 * holds, every midpoint between two neighbours (the ties, which go to the even
 * one), values just off each midpoint, and values past the range (infinity) and
 * below it (zero and the subnormals). Lengths that are not a multiple of eight
 * reach the scalar tail of the vector path. Prints "half check: ok" on success.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/core/half.h"

static uint16_t cast_to_half(float f)
{
    _Float16 h = (_Float16)f;
    uint16_t bits;
    memcpy(&bits, &h, sizeof bits);
    return bits;
}

static float cast_from_half(uint16_t bits)
{
    _Float16 h;
    memcpy(&h, &bits, sizeof h);
    return (float)h;
}

static int same_half(uint16_t a, uint16_t b)
{
    /* NaNs may differ in payload or quietness; both must be NaN */
    const int nan_a = (a & 0x7c00) == 0x7c00 && (a & 0x03ff), nan_b = (b & 0x7c00) == 0x7c00 && (b & 0x03ff);
    return nan_a || nan_b ? nan_a && nan_b : a == b;
}

int main(void)
{
    enum { HALVES = 65536 };
    const size_t cap = 5 * (size_t)HALVES;
    uint16_t *bits = malloc(HALVES * sizeof *bits), *got_bits = malloc(cap * sizeof *got_bits);
    float *values = malloc(cap * sizeof *values), *got = malloc(HALVES * sizeof *got);
    if (!bits || !got_bits || !values || !got) return 2;

    for (int i = 0; i < HALVES; i++) bits[i] = (uint16_t)i;
    d3sr_half_to_float(got, bits, HALVES - 3);
    d3sr_half_to_float(got + HALVES - 3, bits + HALVES - 3, 3);
    for (int i = 0; i < HALVES; i++) {
        const float want = cast_from_half(bits[i]);
        if (isnan(want) ? !isnan(got[i]) : memcmp(&want, &got[i], sizeof want)) {
            fprintf(stderr, "FAILED: half 0x%04x gives %a, the cast %a\n", i, (double)got[i], (double)want);
            return 1;
        }
    }

    size_t n = 0;
    for (int i = 0; i < HALVES; i++) {
        const float v = cast_from_half((uint16_t)i), next = cast_from_half((uint16_t)(i + 1));
        values[n++] = v;
        if (isfinite(v) && isfinite(next) && (i & 0x7fff) != 0x7fff && ((i + 1) & 0x7fff)) {
            const float mid = v + (next - v) / 2; /* exact in float32 */
            values[n++] = mid;
            values[n++] = nextafterf(mid, INFINITY);
            values[n++] = nextafterf(mid, -INFINITY);
        }
    }
    const float extremes[] = {65504.0f, 65519.99f, 65520.0f, 1e6f, -1e6f, INFINITY, -INFINITY, 1e-8f, -1e-8f, 3e-8f,
                              5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, 0.0f, -0.0f, NAN, FLT_MAX, FLT_MIN};
    for (size_t i = 0; i < sizeof extremes / sizeof *extremes; i++) values[n++] = extremes[i];
    d3sr_float_to_half(got_bits, values, n - 5);
    d3sr_float_to_half(got_bits + n - 5, values + n - 5, 5);
    for (size_t i = 0; i < n; i++)
        if (!same_half(got_bits[i], cast_to_half(values[i]))) {
            fprintf(stderr, "FAILED: %a gives half 0x%04x, the cast 0x%04x\n", (double)values[i], got_bits[i],
                    cast_to_half(values[i]));
            return 1;
        }
    printf("half check: ok (%d halves, %zu floats)\n", HALVES, n);
    free(bits);
    free(got_bits);
    free(values);
    free(got);
    return 0;
}
