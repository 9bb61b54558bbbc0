/* device.c: the backend registry; the CUDA backend is loaded with dlopen. */
#define _GNU_SOURCE
#include "device.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "../core/status.h"
#include "../core/threads.h"

#define CUDA_LIBRARY "libd3sr_cuda.so"

static const d3sr_core_services core_services = {
    .abi = D3SR_BACKEND_ABI,
    .fail = d3sr_fail,
    .workspace = d3sr_workspace,
    .threads = d3sr_threads,
};

static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static const d3sr_backend *cuda_backend;
static char cuda_why[512];

static void load_cuda(void)
{
    Dl_info self;
    char path[4096];
    if (!dladdr((void *)&d3sr_device_backend, &self) || !self.dli_fname) {
        snprintf(cuda_why, sizeof cuda_why, "cannot locate the d3sr core library to find %s", CUDA_LIBRARY);
        return;
    }
    snprintf(path, sizeof path, "%s", self.dli_fname);
    char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path + 1) : 0;
    snprintf(path + dir_len, sizeof path - dir_len, "%s", CUDA_LIBRARY);

    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *err = dlerror();
        if (strstr(err ? err : "", "No such file"))
            snprintf(cuda_why, sizeof cuda_why,
                     "d3sr was built without its CUDA backend (%s is missing); "
                     "reinstall with nvcc and cuDNN present or D3SR_CUDA=1", path);
        else
            snprintf(cuda_why, sizeof cuda_why, "the CUDA backend failed to load: %s", err ? err : "unknown error");
        return;
    }
    d3sr_backend_entry entry = (d3sr_backend_entry)dlsym(lib, "d3sr_cuda_backend");
    if (!entry) {
        snprintf(cuda_why, sizeof cuda_why, "%s lacks d3sr_cuda_backend; rebuild d3sr", path);
        return;
    }
    cuda_backend = entry(&core_services, cuda_why, sizeof cuda_why);
}

int d3sr_cuda_available(const char **why)
{
    pthread_once(&cuda_once, load_cuda);
    if (why) *why = cuda_backend ? "" : cuda_why;
    return cuda_backend != NULL;
}

static const char *dtype_name(d3sr_dtype dtype)
{
    return dtype == D3SR_F32 ? "fp32" : dtype == D3SR_F16 ? "fp16" : "bf16";
}

d3sr_status d3sr_device_backend(const char *device, d3sr_dtype dtype, const d3sr_backend **out)
{
    if (!device || strcmp(device, "cpu") == 0) {
        if (dtype != D3SR_F32)
            return d3sr_fail(D3SR_ERR_VALUE, "dtype '%s' is not available on device 'cpu', which computes in fp32",
                             dtype_name(dtype));
        *out = &d3sr_cpu_backend;
        return D3SR_OK;
    }
    if (strcmp(device, "cuda") == 0) {
        const char *why;
        if (!d3sr_cuda_available(&why))
            return d3sr_fail(D3SR_ERR_UNAVAILABLE, "device 'cuda' is unavailable: %s", why);
        *out = cuda_backend;
        return D3SR_OK;
    }
    return d3sr_fail(D3SR_ERR_VALUE, "device must be 'cpu' or 'cuda', not '%s'", device);
}
