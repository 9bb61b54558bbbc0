/* binding.h: what the files of d3sr._core share: the NumPy C API set-up,
 * argument helpers and each file's method table.
 *
 * module.c defines the module, the Model type and the helpers below; other
 * files add functions through a PyMethodDef table listed in module.c's
 * binding_extensions. Only files in this folder include Python.h.
 */
#ifndef D3SR_PYTHON_BINDING_H
#define D3SR_PYTHON_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_20_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL d3sr_ARRAY_API
#ifndef D3SR_BINDING_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>
#include <pythread.h>

#include <limits.h>

#include "../d3sr.h"

/* Raises the exception matching status with the core's message; returns NULL. */
PyObject *raise_status(d3sr_status status);

/* Borrows obj as a C-contiguous float32 array of ndim dimensions; layout
 * ("[N, C, h, w]", or NULL) names them in errors. Other dtypes are a TypeError
 * naming arg: converting silently would hide a caller's mistake. This is the
 * one check of the arrays the models take (the Python layer does not repeat
 * it). Returns a new reference, or NULL with an exception set. */
PyArrayObject *float32_array(PyObject *obj, const char *arg, int ndim, const char *layout);

/* obj as an int in [lo, hi]; -1 with an exception naming what otherwise: a
 * TypeError if obj is not an integer, a ValueError if it is out of range.
 * Never truncated: 2**32 + 40 is refused, not read as 40. */
static inline int int_in_range(PyObject *obj, const char *what, long long lo, long long hi, int *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an integer, not %s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < lo || v > hi || v < INT_MIN || v > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s = %S is outside [%lld, %lld]", what, obj, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* "fp32", "fp16", "bf16" -> dtype; -1 with ValueError otherwise. */
int parse_dtype(const char *name, d3sr_dtype *out);

/* A new d3sr._core.Model owning model (freed if this fails; NULL then). */
PyObject *wrap_model(d3sr_model *model);

/* The core model of a d3sr._core.Model and the lock its calls hold with the
 * GIL released; -1 with a TypeError naming arg if obj is not one. */
int unwrap_model(PyObject *obj, const char *arg, d3sr_model **model, PyThread_type_lock *lock);

/* ---- method tables of the other binding files ------------------------- */

extern PyMethodDef metrics_methods[];   /* metrics.c: PSNR, SSIM, LPIPS, DISTS */
extern PyMethodDef single_op_methods[]; /* single_op.c: op() and ops(), one op for the op tests */

#endif /* D3SR_PYTHON_BINDING_H */
