/* tiles.c: layer-synchronous tiles with pooled GroupNorm statistics; see tiles.h.
 *
 * The baton: `turn` names the one tile that may compute. Tiles run in order
 * 0, 1, ..., count - 1 from one GroupNorm layer to the next; the last to
 * reach a layer pools its statistics and hands the baton back to tile 0. A
 * tile that finishes its forward hands it on without waiting. A tile that
 * fails records its message and wakes the others, which unwind with an error.
 */
#include "tiles.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/half.h"
#include "../core/status.h"
#include "../ops/backend.h"

typedef struct tiles_shared tiles_shared;

typedef struct {
    tiles_shared *shared;        /* borrowed */
    int index;
    pthread_t thread;
    int started;
    d3sr_norm_pool pool;
    d3sr_norm_pooling pooling;   /* the ctx's pooling state of this tile while parked */
    double *collect;             /* owned: [n, layers, groups, 3] */
    float *mean_rstd;            /* owned: [n, groups, 2] */
    double *stats;               /* owned: [n, groups, 3] */
    d3sr_arena_block *live;      /* owned: the arena's live blocks at the park */
    int n_live, cap_live;
    size_t peak;
    int next_id, step;           /* the arena's allocation and op counts at the park (lifetimes) */
    void *parked;                /* owned: host copy of the live blocks */
    size_t parked_bytes, parked_cap;
    d3sr_status status;
    char message[1024];          /* the failure message, copied from the thread's own */
} tile_thread;

struct tiles_shared {
    d3sr_ctx *ctx;               /* borrowed: the model's context, used by one tile at a time */
    const d3sr_tiles_job *job;
    tile_thread *tiles;          /* owned: [count] */
    double *pooled;              /* owned: [n, layers, groups, 2], filled layer by layer */
    float *staging;              /* owned: float32 staging of one block (float16 parking) */
    size_t staging_cap;
    size_t parked_now, parked_peak;
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    int turn, failed;
};

/* ---- parking ------------------------------------------------------------ */

static d3sr_status grow(void **p, size_t *cap, size_t bytes)
{
    if (bytes <= *cap) return D3SR_OK;
    void *q = realloc(*p, bytes);
    if (!q) return d3sr_fail(D3SR_ERR_MEMORY, "tiles: out of host memory parking %zu bytes", bytes);
    *p = q;
    *cap = bytes;
    return D3SR_OK;
}

/* A block of the arena as a float tensor the backend can copy to or from the host. */
static d3sr_tensor block_tensor(const d3sr_ctx *ctx, const d3sr_arena_block *b)
{
    d3sr_tensor t = {0};
    t.data = ctx->arena.base + b->offset;
    t.dtype = ctx->dtype;
    t.n = t.h = t.w = 1;
    t.c = (int)(b->bytes / d3sr_dtype_size(ctx->dtype));
    return t;
}

/* Host bytes that arena_bytes of activations take parked. */
static size_t parked_size(const d3sr_ctx *ctx, size_t arena_bytes, int half)
{
    return arena_bytes / d3sr_dtype_size(ctx->dtype) * (half ? 2 : 4);
}

/* Copies the arena's live blocks and bookkeeping, and the pooling state, into t. */
static d3sr_status park(d3sr_ctx *ctx, tile_thread *t)
{
    tiles_shared *s = t->shared;
    const d3sr_arena *arena = &ctx->arena;
    size_t cap = (size_t)t->cap_live;
    D3SR_CHECK(grow((void **)&t->live, &cap, (size_t)arena->n_live * sizeof *t->live));
    t->cap_live = (int)cap;
    memcpy(t->live, arena->live, (size_t)arena->n_live * sizeof *t->live);
    t->n_live = arena->n_live;
    t->peak = arena->peak;
    t->next_id = arena->next_id;
    t->step = arena->step;
    t->pooling = ctx->pooling;

    const int half = s->job->park_half;
    size_t total = 0;
    for (int i = 0; i < t->n_live; i++) total += parked_size(ctx, t->live[i].bytes, half);
    D3SR_CHECK(grow(&t->parked, &t->parked_cap, total));
    char *dst = t->parked;
    for (int i = 0; i < t->n_live; i++) {
        d3sr_tensor b = block_tensor(ctx, &t->live[i]);
        size_t count = d3sr_tensor_numel(&b);
        if (half) {
            D3SR_CHECK(grow((void **)&s->staging, &s->staging_cap, count * sizeof(float)));
            D3SR_CHECK(ctx->backend->download(ctx, &b, s->staging));
            d3sr_float_to_half((uint16_t *)dst, s->staging, count);
            dst += count * 2;
        } else {
            D3SR_CHECK(ctx->backend->download(ctx, &b, (float *)dst));
            dst += count * 4;
        }
    }
    t->parked_bytes = total;
    s->parked_now += total;
    if (s->parked_now > s->parked_peak) s->parked_peak = s->parked_now;
    return D3SR_OK;
}

static d3sr_status unpark(d3sr_ctx *ctx, tile_thread *t)
{
    tiles_shared *s = t->shared;
    d3sr_arena *arena = &ctx->arena;
    while (arena->cap_live < t->n_live) {
        size_t cap = (size_t)arena->cap_live * sizeof *arena->live;
        D3SR_CHECK(grow((void **)&arena->live, &cap, (size_t)t->n_live * sizeof *arena->live));
        arena->cap_live = t->n_live;
    }
    memcpy(arena->live, t->live, (size_t)t->n_live * sizeof *t->live);
    arena->n_live = t->n_live;
    arena->peak = t->peak;
    /* A tile parks only in its real pass. The recorded lifetimes are shared:
     * every tile has the same window, so the same ops read the same blocks. */
    arena->planning = 0;
    arena->pass = D3SR_PASS_RUN;
    arena->next_id = t->next_id;
    arena->step = t->step;
    ctx->pooling = t->pooling;

    const int half = s->job->park_half;
    const char *src = t->parked;
    for (int i = 0; i < t->n_live; i++) {
        d3sr_tensor b = block_tensor(ctx, &t->live[i]);
        size_t count = d3sr_tensor_numel(&b);
        if (half) {
            D3SR_CHECK(grow((void **)&s->staging, &s->staging_cap, count * sizeof(float)));
            d3sr_half_to_float(s->staging, (const uint16_t *)src, count);
            D3SR_CHECK(ctx->backend->upload(ctx, s->staging, &b));
            src += count * 2;
        } else {
            D3SR_CHECK(ctx->backend->upload(ctx, (const float *)src, &b));
            src += count * 4;
        }
    }
    s->parked_now -= t->parked_bytes;
    t->parked_bytes = 0;
    return D3SR_OK;
}

/* ---- the baton -------------------------------------------------------------- */

/* Pools layer `layer` over all tiles' cores into shared->pooled (mean, variance). */
static void pool_layer(tiles_shared *s, int layer)
{
    const d3sr_tiles_job *job = s->job;
    const size_t per_sample = (size_t)job->layers * job->groups;
    for (int n = 0; n < job->n; n++)
        for (int g = 0; g < job->groups; g++) {
            const size_t at = (size_t)n * per_sample + (size_t)layer * job->groups + g;
            double count = 0, sum = 0;
            for (int i = 0; i < job->count; i++) {
                const double *st = s->tiles[i].collect + at * 3;
                count += st[0];
                sum += st[0] * st[1];
            }
            const double mean = sum / count;
            double m2 = 0;
            for (int i = 0; i < job->count; i++) {
                const double *st = s->tiles[i].collect + at * 3;
                m2 += st[2] + st[0] * (st[1] - mean) * (st[1] - mean);
            }
            s->pooled[at * 2] = mean;
            s->pooled[at * 2 + 1] = m2 / count;
        }
}

/* Passes the baton on (pooling first when the last tile of a layer arrives)
 * and, unless done, waits for it to come back. Called with the mutex held. */
static int hand_on_and_wait(tiles_shared *s, tile_thread *t, int layer, int done)
{
    const int last = t->index == s->job->count - 1;
    if (last && !done) pool_layer(s, layer);
    s->turn = last ? (done ? -1 : 0) : t->index + 1;
    pthread_cond_broadcast(&s->changed);
    if (done) return 0;
    while (s->turn != t->index && !s->failed) pthread_cond_wait(&s->changed, &s->mutex);
    return s->failed;
}

static d3sr_status tile_barrier(d3sr_ctx *ctx, void *user)
{
    tile_thread *t = user;
    tiles_shared *s = t->shared;
    /* A lone tile keeps the baton: its activations stay where they are. */
    const int alone = s->job->count == 1;
    if (!alone) D3SR_CHECK(park(ctx, t));
    const int layer = ctx->pooling.next - 1;
    pthread_mutex_lock(&s->mutex);
    int failed = hand_on_and_wait(s, t, layer, 0);
    pthread_mutex_unlock(&s->mutex);
    if (failed) return d3sr_fail(D3SR_ERR_RUNTIME, "tiles: another tile failed");
    return alone ? D3SR_OK : unpark(ctx, t);
}

/* Points ctx's GroupNorm layers at pool, for a forward over one of job's windows. */
static void begin_pooling(d3sr_ctx *ctx, const d3sr_tiles_job *job, const d3sr_norm_pool *pool)
{
    memset(&ctx->pooling, 0, sizeof ctx->pooling);
    ctx->pooling.pool = pool;
    ctx->pooling.in_h = job->window_h;
    ctx->pooling.in_w = job->window_w;
}

static d3sr_status check_layer_count(const d3sr_ctx *ctx, const d3sr_tiles_job *job)
{
    if (ctx->pooling.next == job->layers) return D3SR_OK;
    return d3sr_fail(D3SR_ERR_RUNTIME, "tiles: a tile ran %d GroupNorm layers of %d", ctx->pooling.next, job->layers);
}

static void *tile_main(void *arg)
{
    tile_thread *t = arg;
    tiles_shared *s = t->shared;
    const d3sr_tiles_job *job = s->job;
    pthread_mutex_lock(&s->mutex);
    while (s->turn != t->index && !s->failed) pthread_cond_wait(&s->changed, &s->mutex);
    int failed = s->failed;
    pthread_mutex_unlock(&s->mutex);
    if (failed) {
        t->status = D3SR_ERR_RUNTIME;
        return NULL;
    }
    d3sr_ctx *ctx = s->ctx;
    begin_pooling(ctx, job, &t->pool);
    ctx->pooling.mean_rstd = t->mean_rstd;
    ctx->pooling.stats = t->stats;
    ctx->pooling.barrier = job->statistics ? NULL : tile_barrier; /* given statistics: nothing to wait for */
    ctx->pooling.barrier_user = t;
    d3sr_status status = d3sr_ctx_run(ctx, job->forward, job->args[t->index]);
    if (status == D3SR_OK) status = check_layer_count(ctx, job);
    if (status == D3SR_OK && job->finish) status = job->finish(t->index, job->user);
    if (status == D3SR_OK) memset(&ctx->pooling, 0, sizeof ctx->pooling); /* only the baton's holder touches ctx */
    pthread_mutex_lock(&s->mutex);
    if (status != D3SR_OK && !s->failed) {
        snprintf(t->message, sizeof t->message, "%s", d3sr_last_error());
        s->failed = 1;
        pthread_cond_broadcast(&s->changed);
    } else if (status == D3SR_OK) {
        hand_on_and_wait(s, t, job->layers - 1, 1);
    }
    pthread_mutex_unlock(&s->mutex);
    t->status = status;
    return NULL;
}

d3sr_status d3sr_tiles_run(d3sr_ctx *ctx, const d3sr_tiles_job *job, d3sr_tiles_report *report)
{
    if (job->count < 1 || job->layers < 1 || job->groups < 1 || job->n < 1)
        return d3sr_fail(D3SR_ERR_VALUE, "tiles: nothing to run");
    tiles_shared s = {0};
    s.ctx = ctx;
    s.job = job;
    s.tiles = calloc((size_t)job->count, sizeof *s.tiles);
    const size_t entries = (size_t)job->n * job->layers * job->groups;
    s.pooled = calloc(entries * 2, sizeof *s.pooled);
    d3sr_status status = D3SR_OK;
    if (!s.tiles || !s.pooled) status = d3sr_fail(D3SR_ERR_MEMORY, "tiles: out of host memory");
    for (int i = 0; status == D3SR_OK && i < job->count; i++) {
        tile_thread *t = &s.tiles[i];
        t->shared = &s;
        t->index = i;
        t->collect = calloc(entries * 3, sizeof *t->collect);
        t->mean_rstd = malloc((size_t)job->n * job->groups * 2 * sizeof *t->mean_rstd);
        t->stats = malloc((size_t)job->n * job->groups * 3 * sizeof *t->stats);
        if (!t->collect || !t->mean_rstd || !t->stats) status = d3sr_fail(D3SR_ERR_MEMORY, "tiles: out of host memory");
        t->pool = (d3sr_norm_pool){job->cores[i][0], job->cores[i][1], job->cores[i][2], job->cores[i][3],
                                   job->layers, job->groups, s.pooled, job->statistics ? NULL : t->collect};
    }
    if (status == D3SR_OK && job->statistics) memcpy(s.pooled, job->statistics, entries * 2 * sizeof *s.pooled);
    if (status == D3SR_OK) {
        pthread_mutex_init(&s.mutex, NULL);
        pthread_cond_init(&s.changed, NULL);
        s.turn = 0;
        for (int i = 0; i < job->count; i++) {
            if (pthread_create(&s.tiles[i].thread, NULL, tile_main, &s.tiles[i]) != 0) {
                pthread_mutex_lock(&s.mutex);
                s.failed = 1;
                pthread_cond_broadcast(&s.changed);
                pthread_mutex_unlock(&s.mutex);
                status = d3sr_fail(D3SR_ERR_RUNTIME, "tiles: cannot start a thread for tile %d", i);
                break;
            }
            s.tiles[i].started = 1;
        }
        for (int i = 0; i < job->count; i++)
            if (s.tiles[i].started) pthread_join(s.tiles[i].thread, NULL);
        pthread_cond_destroy(&s.changed);
        pthread_mutex_destroy(&s.mutex);
        for (int i = 0; status == D3SR_OK && i < job->count; i++)
            if (s.tiles[i].message[0]) status = d3sr_fail(s.tiles[i].status, "%s", s.tiles[i].message);
        for (int i = 0; status == D3SR_OK && i < job->count; i++)
            if (s.tiles[i].status != D3SR_OK) status = d3sr_fail(s.tiles[i].status, "tiles: tile %d failed", i);
    }
    if (report) report->parked_peak_bytes = s.parked_peak;
    if (status == D3SR_OK && job->pooled) memcpy(job->pooled, s.pooled, entries * 2 * sizeof *s.pooled);
    for (int i = 0; s.tiles && i < job->count; i++) {
        free(s.tiles[i].collect);
        free(s.tiles[i].mean_rstd);
        free(s.tiles[i].stats);
        free(s.tiles[i].live);
        free(s.tiles[i].parked);
    }
    free(s.tiles);
    free(s.pooled);
    free(s.staging);
    /* The arena's bookkeeping holds the last tile's blocks; the next call begins afresh. */
    ctx->arena.n_live = 0;
    memset(&ctx->pooling, 0, sizeof ctx->pooling);
    return status;
}

d3sr_status d3sr_tiles_plan(d3sr_ctx *ctx, const d3sr_tiles_job *job, d3sr_tiles_memory *memory)
{
    memory->window_bytes = memory->parked_bytes = 0;
    if (job->count < 1 || job->layers < 1 || job->groups < 1 || job->n < 1)
        return d3sr_fail(D3SR_ERR_VALUE, "tiles: nothing to plan");
    /* Planning checks each layer against the pool and reads nothing else of it. */
    const d3sr_norm_pool pool = {job->cores[0][0], job->cores[0][1], job->cores[0][2], job->cores[0][3],
                                 job->layers, job->groups, NULL, NULL};
    begin_pooling(ctx, job, &pool);
    d3sr_status status = d3sr_ctx_plan(ctx, job->forward, job->args[0]);
    if (status == D3SR_OK) status = check_layer_count(ctx, job);
    if (status == D3SR_OK) {
        /* every tile parks at every layer (a lone tile and given statistics never park), all
         * of them at once when the last one arrives, each at park()'s parked precision */
        const size_t per_tile = parked_size(ctx, ctx->pooling.planned_barrier_bytes, job->park_half);
        memory->window_bytes = ctx->arena.peak;
        memory->parked_bytes = job->statistics || job->count == 1 ? 0 : per_tile * (size_t)job->count;
    }
    ctx->arena.n_live = 0;
    memset(&ctx->pooling, 0, sizeof ctx->pooling);
    return status;
}
