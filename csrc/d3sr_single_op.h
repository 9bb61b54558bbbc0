/* d3sr_single_op.h: one op of the core on host arrays, for testing and timing
 * every backend's kernels against NumPy. Test-facing, beside d3sr.h.
 *
 *     const d3sr_single_info *info = d3sr_single_find("group_norm");
 *     d3sr_single_params p = {.kind = info->kind, .device = "cpu", .dtype = D3SR_F32};
 *     p.arrays[0] = (d3sr_single_array){x, {n, h, w, c}};  // in info->arrays order
 *     p.values[0] = groups; p.values[1] = eps;        // info->scalars' values, in order
 *     d3sr_single_output_shape(&p, &ndim, shape);         // checks every argument
 *     d3sr_single_run(&p, out);
 *
 * Arrays are float32 and channels-last ([n, h, w, c]; tokens [n, L, c];
 * rows [rows, c]); weights keep PyTorch's layout. Each run builds a context
 * on the device, runs the op through ops.h exactly as a model would, and
 * frees it. The table (d3sr_single_table) names every op, its arrays and its
 * scalars, so a binding can parse arguments for any op from it alone.
 */
#ifndef D3SR_SINGLE_OP_H
#define D3SR_SINGLE_OP_H

#include "d3sr.h"

typedef enum {
    D3SR_SINGLE_CONV2D,             /* x, weight [cout, cin, k, k], bias?, residual?; stride, padding (t, b, l, r) */
    D3SR_SINGLE_LINEAR,             /* x [rows, in], weight [out, in], bias? */
    D3SR_SINGLE_GROUP_NORM,         /* x, gamma [c], beta [c]; groups, eps, silu */
    D3SR_SINGLE_LAYER_NORM,         /* x [rows, c], gamma, beta; eps */
    D3SR_SINGLE_ATTENTION,          /* q [n, Lq, c], k, v [n, Lk, c]; heads */
    D3SR_SINGLE_SILU,               /* silu(a) */
    D3SR_SINGLE_RELU,               /* relu(a) */
    D3SR_SINGLE_LEAKY_RELU,         /* leaky_relu(a), negative slope 0.2 */
    D3SR_SINGLE_GELU,               /* gelu(a), exact */
    D3SR_SINGLE_GEGLU,              /* a = [value | gate] -> value * gelu(gate) */
    D3SR_SINGLE_ADD,                /* a + b */
    D3SR_SINGLE_ADD_CHANNEL_OFFSET, /* a + b, b [n, 1, 1, c] */
    D3SR_SINGLE_CONCAT,             /* [a | b] along channels */
    D3SR_SINGLE_UPSAMPLE_NEAREST,   /* a resized to size (h, w) */
    D3SR_SINGLE_MAX_POOL,           /* max pooling; size (kernel, stride) */
    D3SR_SINGLE_L2_POOL,            /* DISTS' L2 pooling */
    D3SR_SINGLE_PAIR_MOMENTS,       /* per-channel moments of (a, b): [n, 1, 5, c] */
    D3SR_SINGLE_LPIPS_DISTANCE,     /* one LPIPS layer: a, b [n, h, w, c], weight [c] -> [n] */
    D3SR_SINGLE_COUNT
} d3sr_single_kind;

#define D3SR_SINGLE_ARRAY_SLOTS 4
#define D3SR_SINGLE_SCALAR_SLOTS 3  /* named scalar arguments of one op */
#define D3SR_SINGLE_VALUE_SLOTS 6   /* their values, all counts added */

typedef enum { D3SR_SCALAR_INT, D3SR_SCALAR_FLOAT, D3SR_SCALAR_BOOL } d3sr_scalar_type;

typedef struct {
    const char *name;      /* NULL ends the list */
    d3sr_scalar_type type;
    int count;             /* values: 1, or a tuple such as padding's 4 */
    int required;          /* else every value defaults to fallback */
    double fallback;
} d3sr_single_scalar;

typedef struct {
    d3sr_single_kind kind;
    const char *name;                            /* "conv2d" */
    const char *arrays[D3SR_SINGLE_ARRAY_SLOTS]; /* argument names in order; NULL ends */
    int ndim[D3SR_SINGLE_ARRAY_SLOTS];           /* each array's dimensions */
    unsigned optional;                           /* bit i set: arrays[i] may be left out */
    d3sr_single_scalar scalars[D3SR_SINGLE_SCALAR_SLOTS];
    const char *doc;                             /* one line: shapes and meaning */
} d3sr_single_info;

typedef struct {
    const float *data; /* borrowed for the call; NULL: an optional array left out */
    int shape[4];      /* the first info->ndim[i] entries are used */
} d3sr_single_array;

typedef struct {
    d3sr_single_kind kind;
    const char *device;                          /* "cpu" or "cuda" */
    d3sr_dtype dtype;                            /* what the device stores; inputs and output stay float32 */
    d3sr_single_array arrays[D3SR_SINGLE_ARRAY_SLOTS];
    double values[D3SR_SINGLE_VALUE_SLOTS];      /* the scalars' values, in table order */
} d3sr_single_params;

/* Every op, indexed by kind; *count gets D3SR_SINGLE_COUNT. */
D3SR_API const d3sr_single_info *d3sr_single_table(int *count);

/* The op named name, or NULL. */
D3SR_API const d3sr_single_info *d3sr_single_find(const char *name);

/* Checks every array and scalar of p against the op and gives the output's
 * shape; D3SR_ERR_VALUE naming the argument when something disagrees. */
D3SR_API d3sr_status d3sr_single_output_shape(const d3sr_single_params *p, int *ndim, int shape[4]);

/* Runs the op into out (float32, the output shape). Checks as above first. */
D3SR_API d3sr_status d3sr_single_run(const d3sr_single_params *p, float *out);

/* A group_norm op (p->kind D3SR_SINGLE_GROUP_NORM) on one tile under a
 * one-layer statistics pool (d3sr_norm_pool of d3sr.h; its core in x's pixels):
 * the tile's core statistics go to pool->collect and, when pool->apply is set,
 * the tile is normalised with those instead of its own. */
D3SR_API d3sr_status d3sr_single_group_norm_pooled(const d3sr_single_params *p, const d3sr_norm_pool *pool,
                                                   float *out);

#endif /* D3SR_SINGLE_OP_H */
