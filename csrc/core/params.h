/* params.h: a model's table of expected weights, looked up by state_dict name.
 *
 * A model registers each weight it needs while it is built from its config:
 * the PyTorch name, the PyTorch shape and where the loaded tensor goes.
 * Loading is then a lookup by name with a shape check; an error names the
 * full key with its expected and actual shape.
 */
#ifndef D3SR_CORE_PARAMS_H
#define D3SR_CORE_PARAMS_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include "tensor.h"

/* How the backend lays a weight out (see ops/backend.h). */
typedef enum {
    D3SR_WEIGHT_VECTOR, /* [c] (or [1, c, 1, 1]): biases, norm scales, per-channel weights */
    D3SR_WEIGHT_LINEAR, /* [out, in] */
    D3SR_WEIGHT_CONV,   /* [out, in, kh, kw] */
} d3sr_weight_kind;

#define D3SR_NAME_BYTES 192

typedef struct {
    char name[D3SR_NAME_BYTES];
    int ndim;
    int64_t shape[4];
    d3sr_weight_kind kind;
    d3sr_tensor *dst; /* borrowed from the model's layer structs, which outlive the table */
    int is_set;
} d3sr_param;

typedef struct {
    d3sr_param *items; /* owned */
    int count, capacity;
} d3sr_params;

/* Registers name = printf(fmt, ...) with its PyTorch shape (ndim <= 4). */
d3sr_status d3sr_params_add(d3sr_params *params, d3sr_tensor *dst, d3sr_weight_kind kind,
                            int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

d3sr_param *d3sr_params_find(d3sr_params *params, const char *name);

/* Formats a shape as "[a, b, c]" into buf. */
const char *d3sr_shape_str(char *buf, size_t size, int ndim, const int64_t *shape);

void d3sr_params_clear(d3sr_params *params);

/* Formats the name a *_register function was given as fmt and its variadic
 * arguments into the char array buf (a macro: va_start must run in the
 * function that takes the arguments). */
#define D3SR_FORMAT_NAME(buf, fmt)                     \
    do {                                               \
        va_list format_args_;                          \
        va_start(format_args_, fmt);                   \
        vsnprintf(buf, sizeof buf, fmt, format_args_); \
        va_end(format_args_);                          \
    } while (0)

#endif /* D3SR_CORE_PARAMS_H */
