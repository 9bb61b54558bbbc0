/* tensor.h: the activation and weight descriptor every op takes.
 *
 * Activations are channels-last: [n, h, w, c], c innermost. A sequence of
 * tokens is the same with h = 1 and w = the token count, so one descriptor
 * serves convolutions and transformers. A tensor never owns its memory: data
 * is borrowed from a model's activation arena or its weight storage, and lives
 * on the model's device.
 */
#ifndef D3SR_CORE_TENSOR_H
#define D3SR_CORE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "../d3sr.h"

typedef struct {
    void *data;        /* borrowed from an arena or a model's weights; NULL while planning */
    d3sr_dtype dtype;
    int n, h, w, c;    /* [n, h, w, c] */
} d3sr_tensor;

static inline size_t d3sr_dtype_size(d3sr_dtype dtype) { return dtype == D3SR_F32 ? 4 : 2; }

static inline size_t d3sr_tensor_numel(const d3sr_tensor *t)
{
    return (size_t)t->n * (size_t)t->h * (size_t)t->w * (size_t)t->c;
}

static inline size_t d3sr_tensor_bytes(const d3sr_tensor *t)
{
    return d3sr_tensor_numel(t) * d3sr_dtype_size(t->dtype);
}

/* Pixels (or tokens) per sample. */
static inline size_t d3sr_tensor_pixels(const d3sr_tensor *t) { return (size_t)t->h * (size_t)t->w; }

#endif /* D3SR_CORE_TENSOR_H */
