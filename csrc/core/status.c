/* status.c: the thread-local error message behind d3sr_last_error(). */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define D3SR_MESSAGE_BYTES 1024

static _Thread_local char last_message[D3SR_MESSAGE_BYTES];

const char *d3sr_last_error(void) { return last_message; }

void d3sr_clear_error(void) { last_message[0] = '\0'; }

d3sr_status d3sr_fail(d3sr_status status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, args);
    va_end(args);
    return status;
}

d3sr_status d3sr_fail_context(d3sr_status status, const char *fmt, ...)
{
    char prefix[256];
    char joined[D3SR_MESSAGE_BYTES];
    va_list args;
    va_start(args, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, args);
    va_end(args);
    snprintf(joined, sizeof joined, "%s: %s", prefix, last_message);
    memcpy(last_message, joined, sizeof last_message);
    return status;
}
