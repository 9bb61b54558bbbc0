/* arena.h: the planned activation allocator of one model.
 *
 * A forward pass runs twice: once planning (no memory, ops skip their work)
 * and once for real. Allocation is first-fit over offsets with explicit frees,
 * so the same sequence of calls yields the same offsets both times: the
 * planning pass measures the peak, the model reserves that much once, and the
 * real pass never allocates. Capacity only grows, so after the first call at a
 * given shape no forward pass allocates device or host memory. While planning,
 * pointers are stand-ins (distinct, never dereferenced: ops skip their work).
 */
#ifndef D3SR_CORE_ARENA_H
#define D3SR_CORE_ARENA_H

#include <stddef.h>

#include "../d3sr.h"

typedef struct {
    size_t offset, bytes;
} d3sr_arena_block;

typedef struct {
    char *base;                /* owned by the model (backend memory) */
    size_t capacity;           /* bytes at base */
    size_t peak;               /* high-water mark of the current pass */
    d3sr_arena_block *live;    /* owned; sorted by offset */
    int n_live, cap_live;
    int planning;
} d3sr_arena;

/* Starts a pass; a real pass needs base to hold at least the planned peak. */
void d3sr_arena_begin(d3sr_arena *arena, int planning);

/* Reserves bytes (rounded up to 256 for vector and GPU alignment). */
d3sr_status d3sr_arena_alloc(d3sr_arena *arena, size_t bytes, void **out);

/* Releases a block returned by d3sr_arena_alloc in the same pass. */
void d3sr_arena_release(d3sr_arena *arena, void *p);

/* Forgets the bookkeeping (the memory at base belongs to the caller). */
void d3sr_arena_clear(d3sr_arena *arena);

#endif /* D3SR_CORE_ARENA_H */
