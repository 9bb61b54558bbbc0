/* model.h: what every model shares: its device context, weight table and
 * the one-call-at-a-time guard. Each model kind (vae.c, ...) embeds its
 * layers in impl and registers their weights in params when it is created.
 */
#ifndef D3SR_MODELS_MODEL_H
#define D3SR_MODELS_MODEL_H

#include <stdatomic.h>

#include "../core/params.h"
#include "../core/status.h"
#include "../ops/ops.h"

typedef enum {
    D3SR_MODEL_VAE,
    D3SR_MODEL_UNET,
    D3SR_MODEL_HEAD,
    D3SR_MODEL_PERCEPTUAL,
} d3sr_model_kind;

struct d3sr_model {
    d3sr_model_kind kind;
    d3sr_ctx ctx;
    d3sr_params params;
    atomic_flag busy;
    void *impl;                   /* owned: the kind's layers */
    void (*free_impl)(void *impl);
};

/* Allocates a model with a zeroed impl of impl_bytes on device. */
d3sr_status d3sr_model_new(d3sr_model_kind kind, const char *device, d3sr_dtype dtype,
                           size_t impl_bytes, void (*free_impl)(void *), d3sr_model **out);

/* Starts a forward call: checks the kind, that every weight is loaded and
 * that no other call is running. Pair with d3sr_model_leave. */
d3sr_status d3sr_model_enter(d3sr_model *m, d3sr_model_kind kind, const char *what);
void d3sr_model_leave(d3sr_model *m);

/* Host input scan: fails naming `what` if any value is NaN or Inf. */
d3sr_status d3sr_check_finite(const float *x, size_t count, const char *what);

/* Host output scan after a forward: NaN or Inf from finite inputs is a
 * failure naming `what`, never an answer (upscale would turn it into black
 * pixels, a metric into a score). */
d3sr_status d3sr_check_output(const float *out, size_t count, const char *what);

#endif /* D3SR_MODELS_MODEL_H */
