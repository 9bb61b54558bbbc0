/* model.c: the public model API shared by every kind (d3sr.h, "models: common"). */
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/threads.h"

static const char *kind_name(d3sr_model_kind kind)
{
    switch (kind) {
    case D3SR_MODEL_VAE: return "VAE";
    case D3SR_MODEL_UNET: return "UNet";
    case D3SR_MODEL_HEAD: return "patch head";
    case D3SR_MODEL_PERCEPTUAL: return "perceptual metric network";
    }
    return "model";
}

d3sr_status d3sr_model_new(d3sr_model_kind kind, const char *device, d3sr_dtype dtype,
                           size_t impl_bytes, void (*free_impl)(void *), d3sr_model **out)
{
    *out = NULL;
    d3sr_model *m = calloc(1, sizeof *m);
    void *impl = calloc(1, impl_bytes);
    if (!m || !impl) {
        free(m);
        free(impl);
        return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory creating a %s", kind_name(kind));
    }
    m->kind = kind;
    m->impl = impl;
    m->free_impl = free_impl;
    atomic_flag_clear(&m->busy);
    d3sr_status status = d3sr_ctx_init(&m->ctx, device, dtype);
    if (status != D3SR_OK) {
        d3sr_model_free(m);
        return status;
    }
    *out = m;
    return D3SR_OK;
}

void d3sr_model_free(d3sr_model *m)
{
    if (!m) return;
    if (m->ctx.backend)
        for (int i = 0; i < m->params.count; i++) d3sr_weight_free(&m->ctx, m->params.items[i].dst);
    if (m->free_impl && m->impl) m->free_impl(m->impl);
    free(m->impl);
    d3sr_params_clear(&m->params);
    d3sr_ctx_destroy(&m->ctx);
    free(m);
}

/* A linear weight may come as a 1x1 convolution [out, in, 1, 1], as older
 * diffusers VAE checkpoints store their attention projections. */
static int shape_matches(const d3sr_param *p, int ndim, const int64_t *shape)
{
    if (p->kind == D3SR_WEIGHT_LINEAR && ndim == 4 && shape[2] == 1 && shape[3] == 1)
        return shape[0] == p->shape[0] && shape[1] == p->shape[1];
    if (ndim != p->ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (shape[i] != p->shape[i]) return 0;
    return 1;
}

d3sr_status d3sr_model_set_weight(d3sr_model *m, const char *name, d3sr_dtype dtype, int ndim,
                                  const int64_t *shape, const void *data)
{
    d3sr_param *p = d3sr_params_find(&m->params, name);
    if (!p) return d3sr_fail(D3SR_ERR_VALUE, "unexpected weight '%s': the %s built from this config has no such parameter",
                             name, kind_name(m->kind));
    if (dtype != D3SR_F32 && dtype != D3SR_F16 && dtype != D3SR_BF16)
        return d3sr_fail(D3SR_ERR_TYPE, "weight '%s' has an unsupported dtype; expected float32, float16 or bfloat16", name);
    if (ndim < 0 || ndim > 4 || !shape_matches(p, ndim, shape)) {
        char want[96], got[96];
        return d3sr_fail(D3SR_ERR_VALUE, "weight '%s' has shape %s, expected %s", name,
                         d3sr_shape_str(got, sizeof got, ndim < 0 || ndim > 4 ? 0 : ndim, shape),
                         d3sr_shape_str(want, sizeof want, p->ndim, p->shape));
    }
    if (atomic_flag_test_and_set(&m->busy))
        return d3sr_fail(D3SR_ERR_BUSY, "the %s is running a forward pass on another thread", kind_name(m->kind));
    d3sr_weight_free(&m->ctx, p->dst);
    p->is_set = 0;
    d3sr_status status = d3sr_weight_upload(&m->ctx, p, dtype, data, p->dst);
    if (status == D3SR_OK) p->is_set = 1;
    atomic_flag_clear(&m->busy);
    return status;
}

int d3sr_model_num_weights(const d3sr_model *m) { return m->params.count; }

d3sr_status d3sr_model_weight_info(const d3sr_model *m, int i, const char **name, int *ndim,
                                   int64_t shape[4], int *is_set)
{
    if (i < 0 || i >= m->params.count)
        return d3sr_fail(D3SR_ERR_VALUE, "weight index %d is outside [0, %d)", i, m->params.count);
    const d3sr_param *p = &m->params.items[i];
    *name = p->name;
    *ndim = p->ndim;
    for (int d = 0; d < 4; d++) shape[d] = d < p->ndim ? p->shape[d] : 0;
    *is_set = p->is_set;
    return D3SR_OK;
}

d3sr_status d3sr_model_check_complete(const d3sr_model *m)
{
    int missing = 0;
    const char *first = NULL;
    for (int i = 0; i < m->params.count; i++) {
        if (!m->params.items[i].is_set) {
            if (!first) first = m->params.items[i].name;
            missing++;
        }
    }
    if (!missing) return D3SR_OK;
    return d3sr_fail(D3SR_ERR_VALUE, "%d of the %s's %d weights are missing, the first is '%s'", missing,
                     kind_name(m->kind), m->params.count, first);
}

void d3sr_model_set_capture(d3sr_model *m, int enabled)
{
    d3sr_capture_clear(&m->ctx.capture);
    m->ctx.capture.enabled = enabled != 0;
}

int d3sr_model_num_captured(const d3sr_model *m) { return m->ctx.capture.count; }

d3sr_status d3sr_model_captured(const d3sr_model *m, int i, const char **name, int64_t shape[4],
                                const float **data)
{
    if (i < 0 || i >= m->ctx.capture.count)
        return d3sr_fail(D3SR_ERR_VALUE, "captured index %d is outside [0, %d)", i, m->ctx.capture.count);
    const d3sr_captured *item = &m->ctx.capture.items[i];
    *name = item->name;
    for (int d = 0; d < 4; d++) shape[d] = item->shape[d];
    *data = item->data;
    return D3SR_OK;
}

void d3sr_model_set_profiling(d3sr_model *m, int enabled)
{
    memset(&m->ctx.profile, 0, sizeof m->ctx.profile);
    m->ctx.profile.enabled = enabled != 0;
}

int d3sr_model_num_ops(void) { return D3SR_OP_COUNT; }

void d3sr_model_op_profile(const d3sr_model *m, int i, const char **name, long *calls, double *seconds)
{
    int ok = i >= 0 && i < D3SR_OP_COUNT;
    *name = ok ? d3sr_op_names[i] : "";
    *calls = ok ? m->ctx.profile.calls[i] : 0;
    *seconds = ok ? m->ctx.profile.seconds[i] : 0.0;
}

size_t d3sr_model_weight_bytes(const d3sr_model *m)
{
    size_t bytes = 0;
    for (int i = 0; i < m->params.count; i++)
        if (m->params.items[i].is_set) bytes += d3sr_tensor_bytes(m->params.items[i].dst);
    return bytes;
}

size_t d3sr_model_arena_bytes(const d3sr_model *m) { return m->ctx.arena.capacity + m->ctx.workspace_bytes; }

d3sr_status d3sr_model_enter(d3sr_model *m, d3sr_model_kind kind, const char *what)
{
    if (m->kind != kind)
        return d3sr_fail(D3SR_ERR_TYPE, "%s needs a %s, this model is a %s", what, kind_name(kind), kind_name(m->kind));
    D3SR_CHECK(d3sr_model_check_complete(m));
    if (atomic_flag_test_and_set(&m->busy))
        return d3sr_fail(D3SR_ERR_BUSY, "the %s is already running a call on another thread", kind_name(m->kind));
    d3sr_clear_error();
    return D3SR_OK;
}

void d3sr_model_leave(d3sr_model *m) { atomic_flag_clear(&m->busy); }

d3sr_status d3sr_check_output(const float *out, size_t count, const char *what)
{
    if (d3sr_check_finite(out, count, what) == D3SR_OK) return D3SR_OK;
    return d3sr_fail(D3SR_ERR_VALUE,
                     "%s contains NaN or Inf although the inputs were finite: a weight or config value makes the "
                     "network overflow float32 (check the weight files and config the model was loaded from)", what);
}

d3sr_status d3sr_check_finite(const float *x, size_t count, const char *what)
{
    int bad = 0;
#pragma omp parallel for num_threads(d3sr_threads()) reduction(| : bad) schedule(static)
    for (size_t i = 0; i < count; i++) bad |= !isfinite(x[i]);
    if (bad) return d3sr_fail(D3SR_ERR_VALUE, "%s contains NaN or Inf", what);
    return D3SR_OK;
}
