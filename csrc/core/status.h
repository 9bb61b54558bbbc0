/* status.h: failures as status codes with a thread-local message.
 *
 * Every function that can fail returns d3sr_status. d3sr_fail() records a
 * printf-style message for d3sr_last_error() and returns the status, so a
 * failure reads `return d3sr_fail(D3SR_ERR_VALUE, "...", ...);`. D3SR_CHECK
 * propagates a failure from a callee unchanged; it is the only control-flow
 * macro in the core.
 */
#ifndef D3SR_CORE_STATUS_H
#define D3SR_CORE_STATUS_H

#include "../d3sr.h"

#if defined(__GNUC__)
#define D3SR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define D3SR_PRINTF(a, b)
#endif

d3sr_status d3sr_fail(d3sr_status status, const char *fmt, ...) D3SR_PRINTF(2, 3);

/* Prefixes the current message with context, e.g. the layer being run. */
d3sr_status d3sr_fail_context(d3sr_status status, const char *fmt, ...) D3SR_PRINTF(2, 3);

void d3sr_clear_error(void);

#define D3SR_CHECK(expr)                    \
    do {                                    \
        d3sr_status check_ = (expr);        \
        if (check_ != D3SR_OK) return check_; \
    } while (0)

#endif /* D3SR_CORE_STATUS_H */
