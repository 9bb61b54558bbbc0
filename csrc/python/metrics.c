/* metrics.c: the image-quality metrics of d3sr._core (d3sr.metrics wraps them).
 *
 * Images arrive as NumPy arrays [n, h, w, 3] of uint8 or float32 and are
 * borrowed for the call; the scores come back as float64 [n]. The GIL is
 * released around every computation; a perceptual network additionally
 * holds its Model's lock, so concurrent calls on one network take turns.
 */
#include "binding.h"

#include <string.h>


/* a and b as C-contiguous [n, h, w, 3] arrays of one dtype (uint8 or float32). */
static int image_pair(PyObject *ao, PyObject *bo, PyArrayObject **a, PyArrayObject **b, d3sr_pixels *type)
{
    *a = *b = NULL;
    PyObject *objs[2] = {ao, bo};
    const char *names[2] = {"a", "b"};
    for (int i = 0; i < 2; i++) {
        if (!PyArray_Check(objs[i])) {
            PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of shape [N, H, W, 3], not %s", names[i],
                         Py_TYPE(objs[i])->tp_name);
            return -1;
        }
        PyArrayObject *x = (PyArrayObject *)objs[i];
        int t = PyArray_TYPE(x);
        if (t != NPY_UINT8 && t != NPY_FLOAT32) {
            PyObject *name = PyObject_Str((PyObject *)PyArray_DESCR(x));
            PyErr_Format(PyExc_TypeError, "%s must have dtype uint8 or float32, not %S", names[i], name);
            Py_XDECREF(name);
            return -1;
        }
        if (PyArray_NDIM(x) != 4 || PyArray_DIM(x, 3) != 3) {
            PyErr_Format(PyExc_ValueError, "%s must have shape [N, H, W, 3]", names[i]);
            return -1;
        }
    }
    PyArrayObject *xa = (PyArrayObject *)ao, *xb = (PyArrayObject *)bo;
    if (PyArray_TYPE(xa) != PyArray_TYPE(xb)) {
        PyErr_SetString(PyExc_TypeError, "a and b must have the same dtype");
        return -1;
    }
    for (int d = 0; d < 4; d++)
        if (PyArray_DIM(xa, d) != PyArray_DIM(xb, d)) {
            PyErr_Format(PyExc_ValueError, "a and b differ in shape: [%zd, %zd, %zd, 3] and [%zd, %zd, %zd, 3]",
                         (Py_ssize_t)PyArray_DIM(xa, 0), (Py_ssize_t)PyArray_DIM(xa, 1), (Py_ssize_t)PyArray_DIM(xa, 2),
                         (Py_ssize_t)PyArray_DIM(xb, 0), (Py_ssize_t)PyArray_DIM(xb, 1), (Py_ssize_t)PyArray_DIM(xb, 2));
            return -1;
        }
    for (int d = 0; d < 3; d++)
        if (PyArray_DIM(xa, d) > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "the images are too large");
            return -1;
        }
    int t = PyArray_TYPE(xa);
    *type = t == NPY_UINT8 ? D3SR_PIXELS_U8 : D3SR_PIXELS_F32;
    *a = (PyArrayObject *)PyArray_FROM_OTF(ao, t, NPY_ARRAY_IN_ARRAY);
    *b = *a ? (PyArrayObject *)PyArray_FROM_OTF(bo, t, NPY_ARRAY_IN_ARRAY) : NULL;
    if (!*b) {
        Py_CLEAR(*a);
        return -1;
    }
    return 0;
}

typedef d3sr_status (*pixel_metric)(const void *, const void *, d3sr_pixels, int, int, int,
                                    const d3sr_pixel_metric_options *, double *);

static PyObject *run_pixel_metric(pixel_metric fn, PyObject *ao, PyObject *bo, const d3sr_pixel_metric_options *options)
{
    PyArrayObject *a, *b;
    d3sr_pixels type;
    if (image_pair(ao, bo, &a, &b, &type) < 0) return NULL;
    npy_intp n = PyArray_DIM(a, 0);
    PyObject *scores = PyArray_SimpleNew(1, &n, NPY_FLOAT64);
    if (scores) {
        d3sr_status status;
        Py_BEGIN_ALLOW_THREADS
        status = fn(PyArray_DATA(a), PyArray_DATA(b), type, (int)n, (int)PyArray_DIM(a, 1), (int)PyArray_DIM(a, 2),
                    options, PyArray_DATA((PyArrayObject *)scores));
        Py_END_ALLOW_THREADS
        if (status != D3SR_OK) {
            Py_CLEAR(scores);
            raise_status(status);
        }
    }
    Py_DECREF(a);
    Py_DECREF(b);
    return scores;
}

static PyObject *py_psnr(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"a", "b", "crop_border", "y_channel", NULL};
    PyObject *ao, *bo;
    d3sr_pixel_metric_options o = {0, 1, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|ip", keywords, &ao, &bo, &o.crop_border, &o.y_channel))
        return NULL;
    return run_pixel_metric(d3sr_psnr, ao, bo, &o);
}

static PyObject *py_ssim(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"a", "b", "crop_border", "y_channel", "downsample", NULL};
    PyObject *ao, *bo;
    d3sr_pixel_metric_options o = {0, 1, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|ipp", keywords, &ao, &bo, &o.crop_border, &o.y_channel,
                                     &o.downsample))
        return NULL;
    return run_pixel_metric(d3sr_ssim, ao, bo, &o);
}

static PyObject *py_luma(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"rgb", "rounded", NULL};
    PyObject *xo;
    int rounded = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p", keywords, &xo, &rounded)) return NULL;
    PyArrayObject *a, *b;
    d3sr_pixels type;
    if (image_pair(xo, xo, &a, &b, &type) < 0) return NULL;
    Py_DECREF(b);
    npy_intp dims[3] = {PyArray_DIM(a, 0), PyArray_DIM(a, 1), PyArray_DIM(a, 2)};
    PyObject *y = PyArray_SimpleNew(3, dims, NPY_FLOAT32);
    if (y) {
        d3sr_status status;
        Py_BEGIN_ALLOW_THREADS
        status = d3sr_luma(PyArray_DATA(a), type, (int)dims[0], (int)dims[1], (int)dims[2], rounded,
                           PyArray_DATA((PyArrayObject *)y));
        Py_END_ALLOW_THREADS
        if (status != D3SR_OK) {
            Py_CLEAR(y);
            raise_status(status);
        }
    }
    Py_DECREF(a);
    return y;
}

static PyObject *py_perceptual_create(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"kind", "device", "dtype", NULL};
    const char *kind_name, *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|ss", keywords, &kind_name, &device, &dtype_name)) return NULL;
    d3sr_perceptual_kind kind;
    if (strcmp(kind_name, "lpips_alex") == 0) kind = D3SR_LPIPS_ALEX;
    else if (strcmp(kind_name, "lpips_vgg") == 0) kind = D3SR_LPIPS_VGG;
    else if (strcmp(kind_name, "dists") == 0) kind = D3SR_DISTS;
    else return PyErr_Format(PyExc_ValueError, "kind must be 'lpips_alex', 'lpips_vgg' or 'dists', not '%s'", kind_name);
    d3sr_dtype dtype;
    if (parse_dtype(dtype_name, &dtype)) return NULL;
    d3sr_model *model;
    d3sr_status status;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_perceptual_create(kind, device, dtype, &model);
    Py_END_ALLOW_THREADS
    if (status != D3SR_OK) return raise_status(status);
    return wrap_model(model);
}

static PyObject *py_perceptual_score(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"model", "a", "b", "edge_aware", NULL};
    PyObject *mo, *ao, *bo;
    int edge_aware = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|p", keywords, &mo, &ao, &bo, &edge_aware)) return NULL;
    d3sr_model *model;
    PyThread_type_lock lock;
    if (unwrap_model(mo, "model", &model, &lock) < 0) return NULL;
    PyArrayObject *a, *b;
    d3sr_pixels type;
    if (image_pair(ao, bo, &a, &b, &type) < 0) return NULL;
    npy_intp n = PyArray_DIM(a, 0);
    PyObject *scores = PyArray_SimpleNew(1, &n, NPY_FLOAT64);
    if (scores) {
        d3sr_status status;
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(lock, WAIT_LOCK);
        status = d3sr_perceptual_score(model, PyArray_DATA(a), PyArray_DATA(b), type, (int)n, (int)PyArray_DIM(a, 1),
                                       (int)PyArray_DIM(a, 2), edge_aware, PyArray_DATA((PyArrayObject *)scores));
        PyThread_release_lock(lock);
        Py_END_ALLOW_THREADS
        if (status != D3SR_OK) {
            Py_CLEAR(scores);
            raise_status(status);
        }
    }
    Py_DECREF(a);
    Py_DECREF(b);
    return scores;
}

PyMethodDef metrics_methods[] = {
    {"psnr", (PyCFunction)(void (*)(void))py_psnr, METH_VARARGS | METH_KEYWORDS,
     "psnr(a, b [N, H, W, 3] uint8 or float32, crop_border=0, y_channel=True) -> float64 [N]"},
    {"ssim", (PyCFunction)(void (*)(void))py_ssim, METH_VARARGS | METH_KEYWORDS,
     "ssim(a, b [N, H, W, 3] uint8 or float32, crop_border=0, y_channel=True, downsample=False) -> float64 [N]"},
    {"luma", (PyCFunction)(void (*)(void))py_luma, METH_VARARGS | METH_KEYWORDS,
     "luma(rgb [N, H, W, 3], rounded=False) -> float32 [N, H, W]: BT.601 Y as pyiqa computes it"},
    {"perceptual_create", (PyCFunction)(void (*)(void))py_perceptual_create, METH_VARARGS | METH_KEYWORDS,
     "perceptual_create(kind: 'lpips_alex' | 'lpips_vgg' | 'dists', device='cpu', dtype='fp32') -> Model"},
    {"perceptual_score", (PyCFunction)(void (*)(void))py_perceptual_score, METH_VARARGS | METH_KEYWORDS,
     "perceptual_score(model, a, b [N, H, W, 3], edge_aware=False) -> float64 [N]"},
    {NULL, NULL, 0, NULL},
};
