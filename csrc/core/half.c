/* half.c: float32 <-> float16 conversion; see half.h. */
#include "half.h"

#include <string.h>

static void float_to_half_scalar(uint16_t *dst, const float *src, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        _Float16 h = (_Float16)src[i];
        memcpy(&dst[i], &h, sizeof h);
    }
}

static void half_to_float_scalar(float *dst, const uint16_t *src, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        _Float16 h;
        memcpy(&h, &src[i], sizeof h);
        dst[i] = (float)h;
    }
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

/* Compiled for F16C whatever the build's target; called only where the CPU has it. */
__attribute__((target("avx,f16c"))) static void float_to_half_f16c(uint16_t *dst, const float *src, size_t count)
{
    size_t i = 0;
    for (; i + 8 <= count; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    float_to_half_scalar(dst + i, src + i, count - i);
}

__attribute__((target("avx,f16c"))) static void half_to_float_f16c(float *dst, const uint16_t *src, size_t count)
{
    size_t i = 0;
    for (; i + 8 <= count; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    half_to_float_scalar(dst + i, src + i, count - i);
}

static int has_f16c(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}

void d3sr_float_to_half(uint16_t *dst, const float *src, size_t count)
{
    if (has_f16c()) float_to_half_f16c(dst, src, count);
    else float_to_half_scalar(dst, src, count);
}

void d3sr_half_to_float(float *dst, const uint16_t *src, size_t count)
{
    if (has_f16c()) half_to_float_f16c(dst, src, count);
    else half_to_float_scalar(dst, src, count);
}
#else
void d3sr_float_to_half(uint16_t *dst, const float *src, size_t count) { float_to_half_scalar(dst, src, count); }

void d3sr_half_to_float(float *dst, const uint16_t *src, size_t count) { half_to_float_scalar(dst, src, count); }
#endif
