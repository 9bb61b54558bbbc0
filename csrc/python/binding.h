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

#include "../d3sr.h"

/* Raises the exception matching status with the core's message; returns NULL. */
PyObject *raise_status(d3sr_status status);

/* Borrows obj as a C-contiguous float32 array of ndim dimensions (ndim < 0: any).
 * Other dtypes are a TypeError naming arg: converting silently would hide a
 * caller's mistake. Returns a new reference, or NULL with an exception set. */
PyArrayObject *float32_array(PyObject *obj, const char *arg, int ndim);

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
