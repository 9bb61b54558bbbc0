/* core_smoke.c: the C core used from C alone, without Python or NumPy.
 *
 * Builds a tiny VAE through the public API (d3sr.h), fills its weights with a
 * fixed pattern, encodes and decodes, and checks the failures a C caller sees:
 * a status and a message, never an abort. Prints "core smoke: ok" on success.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/d3sr.h"

#define EXPECT(cond, ...)                        \
    do {                                         \
        if (!(cond)) {                           \
            fprintf(stderr, "FAILED: " __VA_ARGS__); \
            fprintf(stderr, "\n");               \
            return 1;                            \
        }                                        \
    } while (0)

int main(void)
{
    d3sr_vae_config cfg = {.in_channels = 3, .out_channels = 3, .latent_channels = 4, .num_levels = 2,
                           .block_out_channels = {8, 16}, .layers_per_block = 1, .norm_num_groups = 4,
                           .use_quant_conv = 1, .use_post_quant_conv = 1, .mid_block_add_attention = 1};
    d3sr_model *vae = NULL;
    EXPECT(d3sr_vae_create(&cfg, D3SR_VAE_ENCODER | D3SR_VAE_DECODER, "cpu", D3SR_F32, &vae) == D3SR_OK, "create: %s",
           d3sr_last_error());

    float x[1 * 3 * 8 * 8], mean[1 * 4 * 4 * 4], image[1 * 3 * 8 * 8];
    for (int i = 0; i < 3 * 64; i++) x[i] = sinf(0.1f * (float)i);
    EXPECT(d3sr_vae_encode(vae, x, 1, 8, 8, mean) == D3SR_ERR_VALUE, "encode before the weights must fail");
    EXPECT(strstr(d3sr_last_error(), "missing") != NULL, "message names the missing weights: %s", d3sr_last_error());

    for (int i = 0; i < d3sr_model_num_weights(vae); i++) {
        const char *name;
        int ndim, is_set;
        int64_t shape[4];
        EXPECT(d3sr_model_weight_info(vae, i, &name, &ndim, shape, &is_set) == D3SR_OK, "weight info");
        size_t count = 1;
        for (int d = 0; d < ndim; d++) count *= (size_t)shape[d];
        float *w = malloc(count * sizeof *w);
        EXPECT(w != NULL, "malloc");
        for (size_t j = 0; j < count; j++) /* small values; norm scales near 1 */
            w[j] = ndim == 1 && strstr(name, "weight") ? 1.0f : 0.05f * cosf((float)(j + (size_t)i));
        EXPECT(d3sr_model_set_weight(vae, name, D3SR_F32, ndim, shape, w) == D3SR_OK, "set %s: %s", name,
               d3sr_last_error());
        free(w);
    }
    EXPECT(d3sr_model_check_complete(vae) == D3SR_OK, "complete: %s", d3sr_last_error());

    int64_t bad_shape[1] = {7};
    float dummy[7] = {0};
    EXPECT(d3sr_model_set_weight(vae, "encoder.conv_in.bias", D3SR_F32, 1, bad_shape, dummy) == D3SR_ERR_VALUE,
           "a wrong shape must fail");
    EXPECT(strstr(d3sr_last_error(), "expected [8]") != NULL, "message gives the expected shape: %s",
           d3sr_last_error());

    EXPECT(d3sr_vae_encode(vae, x, 1, 8, 8, mean) == D3SR_OK, "encode: %s", d3sr_last_error());
    EXPECT(d3sr_vae_decode(vae, mean, 1, 4, 4, image) == D3SR_OK, "decode: %s", d3sr_last_error());
    for (int i = 0; i < 3 * 64; i++) EXPECT(isfinite(image[i]), "finite output");
    EXPECT(d3sr_vae_encode(vae, x, 1, 8, 7, mean) == D3SR_ERR_VALUE, "width 7 must fail");
    x[5] = NAN;
    EXPECT(d3sr_vae_encode(vae, x, 1, 8, 8, mean) == D3SR_ERR_VALUE && strstr(d3sr_last_error(), "NaN"),
           "NaN input must fail: %s", d3sr_last_error());
    d3sr_model_free(vae);

    d3sr_model *none = NULL;
    EXPECT(d3sr_vae_create(&cfg, D3SR_VAE_ENCODER, "tpu", D3SR_F32, &none) == D3SR_ERR_VALUE && none == NULL,
           "an unknown device must fail");
    printf("core smoke: ok\n");
    return 0;
}
