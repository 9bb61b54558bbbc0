/* params.c: the expected-weight table; see params.h. */
#include "params.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

d3sr_status d3sr_params_add(d3sr_params *params, d3sr_tensor *dst, d3sr_weight_kind kind,
                            int ndim, const int64_t *shape, const char *fmt, ...)
{
    if (params->count == params->capacity) {
        int capacity = params->capacity ? 2 * params->capacity : 256;
        d3sr_param *items = realloc(params->items, (size_t)capacity * sizeof *items);
        if (!items) return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory for the weight table");
        params->items = items;
        params->capacity = capacity;
    }
    d3sr_param *p = &params->items[params->count];
    memset(p, 0, sizeof *p);
    va_list args;
    va_start(args, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, args);
    va_end(args);
    p->ndim = ndim;
    for (int i = 0; i < ndim; i++) p->shape[i] = shape[i];
    p->kind = kind;
    p->dst = dst;
    params->count++;
    return D3SR_OK;
}

d3sr_param *d3sr_params_find(d3sr_params *params, const char *name)
{
    for (int i = 0; i < params->count; i++)
        if (strcmp(params->items[i].name, name) == 0) return &params->items[i];
    return NULL;
}

const char *d3sr_shape_str(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
    return buf;
}

void d3sr_params_clear(d3sr_params *params)
{
    free(params->items);
    params->items = NULL;
    params->count = params->capacity = 0;
}
