/* arena.c: first-fit allocation over offsets; see arena.h for the contract. */
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

#define ARENA_ALIGN 256

/* Stand-in base address of planning passes: nonzero, so no block is NULL. */
#define PLANNING_BASE ((uintptr_t)ARENA_ALIGN)

static uintptr_t base_address(const d3sr_arena *arena)
{
    return arena->planning ? PLANNING_BASE : (uintptr_t)arena->base;
}

void d3sr_arena_begin(d3sr_arena *arena, d3sr_arena_pass pass)
{
    if (arena->pass == D3SR_PASS_RECORD && pass != D3SR_PASS_RECORD) arena->recorded = arena->next_id;
    arena->n_live = 0;
    arena->peak = 0;
    arena->pass = pass;
    arena->planning = pass != D3SR_PASS_RUN;
    arena->next_id = 0;
    arena->step = 0;
}

/* The live block holding address p, or -1. */
static int find_block(const d3sr_arena *arena, const void *p)
{
    uintptr_t at = (uintptr_t)p, base = base_address(arena);
    if (!p || at < base) return -1;
    size_t offset = (size_t)(at - base);
    for (int i = 0; i < arena->n_live; i++)
        if (offset >= arena->live[i].offset && offset < arena->live[i].offset + arena->live[i].bytes) return i;
    return -1;
}

static void remove_slot(d3sr_arena *arena, int i)
{
    memmove(arena->live + i, arena->live + i + 1, (size_t)(arena->n_live - i - 1) * sizeof *arena->live);
    arena->n_live--;
}

void d3sr_arena_use(d3sr_arena *arena, const void *p)
{
    if (arena->pass != D3SR_PASS_RECORD) return; /* later passes only replay what was recorded */
    int i = find_block(arena, p);
    if (i >= 0) arena->last_use[arena->live[i].id] = arena->step;
}

void d3sr_arena_step_end(d3sr_arena *arena)
{
    if (arena->pass != D3SR_PASS_RECORD)
        for (int i = arena->n_live - 1; i >= 0; i--) {
            int id = arena->live[i].id;
            /* blocks beyond the recording (a pass that allocated more) are kept */
            if (id < arena->recorded && arena->last_use[id] == arena->step) remove_slot(arena, i);
        }
    arena->step++;
}

static d3sr_status reserve_slot(d3sr_arena *arena)
{
    if (arena->n_live < arena->cap_live) return D3SR_OK;
    int cap = arena->cap_live ? 2 * arena->cap_live : 64;
    d3sr_arena_block *live = realloc(arena->live, (size_t)cap * sizeof *live);
    if (!live) return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory for the arena's bookkeeping");
    arena->live = live;
    arena->cap_live = cap;
    return D3SR_OK;
}

/* Room to note the last use of block id while recording. */
static d3sr_status reserve_lifetime(d3sr_arena *arena, int id)
{
    if (arena->pass != D3SR_PASS_RECORD || id < arena->cap_last_use) return D3SR_OK;
    int cap = arena->cap_last_use ? 2 * arena->cap_last_use : 256;
    int *last_use = realloc(arena->last_use, (size_t)cap * sizeof *last_use);
    if (!last_use) return d3sr_fail(D3SR_ERR_MEMORY, "out of host memory for the arena's bookkeeping");
    arena->last_use = last_use;
    arena->cap_last_use = cap;
    return D3SR_OK;
}

d3sr_status d3sr_arena_alloc(d3sr_arena *arena, size_t bytes, void **out)
{
    D3SR_CHECK(reserve_slot(arena));
    D3SR_CHECK(reserve_lifetime(arena, arena->next_id));
    size_t need = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (need == 0) need = ARENA_ALIGN;

    /* First gap between live blocks (sorted by offset) that fits. */
    size_t offset = 0;
    int slot = 0;
    for (; slot < arena->n_live; slot++) {
        if (arena->live[slot].offset - offset >= need) break;
        offset = arena->live[slot].offset + arena->live[slot].bytes;
    }
    if (!arena->planning && offset + need > arena->capacity)
        return d3sr_fail(D3SR_ERR_RUNTIME,
                         "internal error: the activation plan (%zu bytes) was exceeded; "
                         "the forward pass allocated differently from its planning pass",
                         arena->capacity);

    memmove(arena->live + slot + 1, arena->live + slot,
            (size_t)(arena->n_live - slot) * sizeof *arena->live);
    arena->live[slot].offset = offset;
    arena->live[slot].bytes = need;
    arena->live[slot].id = arena->next_id;
    if (arena->pass == D3SR_PASS_RECORD) arena->last_use[arena->next_id] = arena->step; /* unread: freed at once */
    arena->next_id++;
    arena->n_live++;
    if (offset + need > arena->peak) arena->peak = offset + need;

    *out = (void *)(base_address(arena) + offset);
    return D3SR_OK;
}

void d3sr_arena_clear(d3sr_arena *arena)
{
    free(arena->live);
    free(arena->last_use);
    arena->live = NULL;
    arena->last_use = NULL;
    arena->n_live = arena->cap_live = arena->cap_last_use = 0;
}
