/* half.h: float32 <-> IEEE float16 conversion of host buffers.
 *
 * Both round as a C cast to _Float16 does (to nearest, ties to even; out of
 * range to infinity), so results do not depend on the path taken. On x86-64
 * CPUs with F16C (every AVX2 CPU) eight values convert per instruction; the
 * scalar cast elsewhere goes through a library call per value, which made
 * float16 parking (models/tiles.c) slower than float32 parking.
 */
#ifndef D3SR_CORE_HALF_H
#define D3SR_CORE_HALF_H

#include <stddef.h>
#include <stdint.h>

/* dst[i] = the float16 bits of src[i], i < count. */
void d3sr_float_to_half(uint16_t *dst, const float *src, size_t count);

/* dst[i] = the value of the float16 bits src[i], i < count (exact). */
void d3sr_half_to_float(float *dst, const uint16_t *src, size_t count);

#endif /* D3SR_CORE_HALF_H */
