/* arena.h: the planned activation allocator of one model.
 *
 * A forward pass runs three times: twice planning (no memory, ops skip their
 * work: a recording pass and a plan pass, below) and once for real.
 * Allocation is first-fit over offsets, so the same sequence of calls yields
 * the same offsets in the plan and real passes: the plan pass measures the
 * peak, the model reserves that much once, and the real pass never allocates. Capacity only grows, so after the first call at a
 * given shape no forward pass allocates device or host memory. While planning,
 * pointers are stand-ins (distinct, never dereferenced: ops skip their work).
 *
 * Lifetimes: every block is numbered in allocation order, the same in every
 * pass. A recording pass notes, for each block, the last step (op) that
 * reads it (d3sr_arena_use); later passes release each block right after
 * that step (d3sr_arena_step_end), so forwards need not free anything by
 * hand, and nothing can be freed twice or early.
 */
#ifndef D3SR_CORE_ARENA_H
#define D3SR_CORE_ARENA_H

#include <stddef.h>

#include "../d3sr.h"

typedef struct {
    size_t offset, bytes;
    int id;                    /* allocation number in this pass */
} d3sr_arena_block;

typedef enum {
    D3SR_PASS_RECORD, /* planning, noting when each block is last read; nothing is released */
    D3SR_PASS_PLAN,   /* planning with the recorded lifetimes: measures the peak */
    D3SR_PASS_RUN,    /* the real pass, same allocations at the same offsets */
} d3sr_arena_pass;

typedef struct {
    char *base;                /* owned by the model (backend memory) */
    size_t capacity;           /* bytes at base */
    size_t peak;               /* high-water mark of the current pass */
    d3sr_arena_block *live;    /* owned; sorted by offset */
    int n_live, cap_live;
    int planning;              /* 1 in the record and plan passes */
    d3sr_arena_pass pass;
    int next_id;               /* the next block's number */
    int step;                  /* ops finished in this pass */
    int *last_use;             /* owned: [id] the last step reading the block, from the recording pass */
    int cap_last_use;
    int recorded;              /* blocks the recording pass numbered */
} d3sr_arena;

/* Starts a pass; a real pass needs base to hold at least the planned peak. */
void d3sr_arena_begin(d3sr_arena *arena, d3sr_arena_pass pass);

/* Notes that the current step reads the block holding p (NULL: nothing). */
void d3sr_arena_use(d3sr_arena *arena, const void *p);

/* Ends a step; outside the recording pass, releases the blocks it read last. */
void d3sr_arena_step_end(d3sr_arena *arena);

/* Reserves bytes (rounded up to 256 for vector and GPU alignment). */
d3sr_status d3sr_arena_alloc(d3sr_arena *arena, size_t bytes, void **out);


/* Forgets the bookkeeping (the memory at base belongs to the caller). */
void d3sr_arena_clear(d3sr_arena *arena);

#endif /* D3SR_CORE_ARENA_H */
