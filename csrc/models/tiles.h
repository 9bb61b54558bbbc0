/* tiles.h: one forward pass over the tiles of an image, layer-synchronously,
 * so every GroupNorm layer normalises with the exact statistics of the whole
 * image.
 *
 * Each tile runs the unchanged forward (vae.c's) on its window, in its own
 * host thread used as a coroutine: one tile computes at a time. At each
 * GroupNorm layer a tile adds its core's statistics and parks: its live
 * activations (the model arena's live blocks) are copied to host memory, in
 * float32 or float16, and the next tile resumes. When the last tile arrives,
 * the layer's statistics are pooled over the tiles (Chan's formula) and all
 * tiles normalise with them. All tiles have the same window size, so they
 * share one arena plan and one arena; memory is one tile's working set plus
 * the parked activations of all tiles (about the image's live set at one
 * layer). Compute is that of one untiled pass over the windows.
 *
 * With statistics given (job->statistics), there is nothing to wait for: the
 * tiles run one after another with them, and memory is one tile's.
 */
#ifndef D3SR_MODELS_TILES_H
#define D3SR_MODELS_TILES_H

#include "../ops/ops.h"

typedef struct {
    d3sr_status (*forward)(d3sr_ctx *ctx, void *arg);
    void **args;                 /* borrowed: forward's argument per tile */
    const int (*cores)[4];       /* borrowed: [count] y0, y1, x0, x1 of each core in its window */
    int count;                   /* tiles */
    int n;                       /* samples per call */
    int layers, groups;          /* GroupNorm layers of one forward and their groups */
    int window_h, window_w;      /* the input size of every tile */
    int park_half;               /* park activations as float16 (else float32) */
    /* [n, layers, groups, 2] statistics to normalise every layer with; NULL:
     * pool the tiles' own, layer by layer. Given, each tile runs its whole
     * forward in turn and nothing is parked. */
    const double *statistics;
    double *pooled;              /* may be NULL: receives the statistics used, [n, layers, groups, 2] */
    /* Called once per tile, in tile order of finishing, after its forward ended well. */
    d3sr_status (*finish)(int tile, void *user);
    void *user;
} d3sr_tiles_job;

/* Statistics of the run, for the report. */
typedef struct {
    size_t parked_peak_bytes;    /* most host bytes parked at once */
} d3sr_tiles_report;

d3sr_status d3sr_tiles_run(d3sr_ctx *ctx, const d3sr_tiles_job *job, d3sr_tiles_report *report);

/* The memory d3sr_tiles_run would hold for job, found by planning tile 0's
 * forward (no op runs, no activation memory is touched). */
typedef struct {
    size_t window_bytes;         /* the model's arena: one tile's working set (device memory) */
    size_t parked_bytes;         /* the most host bytes parked at once: every tile's live set at the
                                  * GroupNorm layer where it is largest; 0 with statistics given */
} d3sr_tiles_memory;

d3sr_status d3sr_tiles_plan(d3sr_ctx *ctx, const d3sr_tiles_job *job, d3sr_tiles_memory *memory);

#endif /* D3SR_MODELS_TILES_H */
