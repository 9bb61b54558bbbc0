/* threads.h: the process-wide thread count of the CPU kernels.
 *
 * CPU kernels parallelise with OpenMP over exactly d3sr_threads() threads and
 * call OpenBLAS single-threaded from inside their parallel regions, so one
 * thread pool runs at a time and two never fight over the cores.
 */
#ifndef D3SR_CORE_THREADS_H
#define D3SR_CORE_THREADS_H

int d3sr_threads(void);

#endif /* D3SR_CORE_THREADS_H */
