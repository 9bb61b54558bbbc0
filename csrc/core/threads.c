/* threads.c: the thread count behind d3sr_set_num_threads(). */
#include "threads.h"

#include <stdatomic.h>

#include "../d3sr.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static atomic_int configured_threads; /* 0: all cores */

static int all_cores(void)
{
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

int d3sr_max_threads(void)
{
    int cores = all_cores();
    return cores > 16 ? 4 * cores : 64;
}

void d3sr_set_num_threads(int n)
{
    int most = d3sr_max_threads();
    atomic_store(&configured_threads, n <= 0 ? 0 : n > most ? most : n);
}

int d3sr_get_num_threads(void) { return d3sr_threads(); }

int d3sr_threads(void)
{
    int n = atomic_load(&configured_threads);
    return n > 0 ? n : all_cores();
}
