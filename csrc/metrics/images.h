/* images.h: reading the metric inputs, [n, h, w, 3] uint8 or float32 RGB.
 *
 * Shared by the pixel metrics (pixel.c) and the perceptual networks'
 * preprocessing (models/perceptual.c). Arithmetic is float32 in the order
 * pyiqa and torchvision use, so derived values (uint8 / 255, the BT.601
 * luma) are bit for bit what those produce; the compile runs in ISO C mode,
 * where GCC does not contract a * b + c into a fused multiply-add.
 */
#ifndef D3SR_METRICS_IMAGES_H
#define D3SR_METRICS_IMAGES_H

#include <stddef.h>
#include <stdint.h>

#include "../d3sr.h"

/* Element i of an image array as float32 in [0, 1] (ToTensor's v / 255 for uint8). */
static inline float d3sr_pixel_at(const void *data, d3sr_pixels type, size_t i)
{
    if (type == D3SR_PIXELS_U8) return (float)((const uint8_t *)data)[i] / 255.0f;
    return ((const float *)data)[i];
}

/* pyiqa's rgb2ycbcr Y channel in [16/255, 235/255] (its float32 matmul,
 * then + 16 and / 255). */
static inline float d3sr_luma_of(float r, float g, float b)
{
    float s = r * 65.481f + g * 128.553f;
    s = s + b * 24.966f;
    return (s + 16.0f) / 255.0f;
}

/* Checks the arguments every metric shares and that float values lie in
 * [0, 1] (no NaN or Inf); the message names the image ("a" or "b"). */
d3sr_status d3sr_check_images(const void *a, const void *b, d3sr_pixels type, int n, int h, int w);

#endif /* D3SR_METRICS_IMAGES_H */
