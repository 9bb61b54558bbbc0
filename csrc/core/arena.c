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

void d3sr_arena_begin(d3sr_arena *arena, int planning)
{
    arena->n_live = 0;
    arena->peak = 0;
    arena->planning = planning;
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

d3sr_status d3sr_arena_alloc(d3sr_arena *arena, size_t bytes, void **out)
{
    D3SR_CHECK(reserve_slot(arena));
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
    arena->n_live++;
    if (offset + need > arena->peak) arena->peak = offset + need;

    *out = (void *)(base_address(arena) + offset);
    return D3SR_OK;
}

void d3sr_arena_release(d3sr_arena *arena, void *p)
{
    size_t offset = (size_t)((uintptr_t)p - base_address(arena));
    for (int i = 0; i < arena->n_live; i++) {
        if (arena->live[i].offset == offset) {
            memmove(arena->live + i, arena->live + i + 1,
                    (size_t)(arena->n_live - i - 1) * sizeof *arena->live);
            arena->n_live--;
            return;
        }
    }
}

void d3sr_arena_clear(d3sr_arena *arena)
{
    free(arena->live);
    arena->live = NULL;
    arena->n_live = arena->cap_live = 0;
}
