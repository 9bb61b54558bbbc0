/* device.h: choosing a backend by device name.
 *
 * "cpu" is built in. "cuda" lives in libd3sr_cuda.so beside the core and is
 * loaded on first use, so a machine without CUDA never touches CUDA
 * libraries; when it cannot load, the error says why.
 */
#ifndef D3SR_OPS_DEVICE_H
#define D3SR_OPS_DEVICE_H

#include "backend.h"

d3sr_status d3sr_device_backend(const char *device, d3sr_dtype dtype, const d3sr_backend **out);

#endif /* D3SR_OPS_DEVICE_H */
