/* single_op.c: d3sr._core.op(name, *arrays, device=, dtype=, **scalars),
 * one op of the core on NumPy arrays, for the op tests and benchmarks.
 *
 * One entry point for every op: the core's table (d3sr_single_op.h) says
 * which arrays and scalars an op takes, so this file only converts them
 * (float32 arrays borrowed for the call, Python numbers and tuples) into
 * the params struct. Shapes and values are checked by the core, whose
 * message becomes the exception. d3sr._core.ops() lists the table.
 */
#include "binding.h"

#include <string.h>

#include "../d3sr_single_op.h"

/* Sets value[0 .. s->count) from obj: a number, or a tuple of count numbers. */
static int parse_scalar(const char *op, const d3sr_single_scalar *s, PyObject *obj, double *values)
{
    PyObject *items = s->count == 1 ? PyTuple_Pack(1, obj) : PySequence_Tuple(obj);
    if (!items || PyTuple_GET_SIZE(items) != s->count) {
        Py_XDECREF(items);
        PyErr_Format(PyExc_TypeError, "%s: %s must be %s%d number%s", op, s->name, s->count == 1 ? "" : "a tuple of ",
                     s->count, s->count == 1 ? "" : "s");
        return -1;
    }
    for (int i = 0; i < s->count; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        if (s->type == D3SR_SCALAR_FLOAT) {
            values[i] = PyFloat_AsDouble(item);
        } else if (s->type == D3SR_SCALAR_BOOL) {
            int truth = PyObject_IsTrue(item);
            values[i] = truth;
            if (truth < 0) values[i] = -1.0;
        } else {
            long v = PyLong_AsLong(item);
            /* the core takes int; a wider value is refused rather than truncated */
            if (!(v == -1 && PyErr_Occurred()) && (v > INT32_MAX || v < INT32_MIN))
                PyErr_Format(PyExc_ValueError, "%s: %s is out of range: %ld", op, s->name, v);
            values[i] = (double)v;
        }
        if (PyErr_Occurred()) {
            Py_DECREF(items);
            return -1;
        }
    }
    Py_DECREF(items);
    return 0;
}

/* The argument called name: positional index pos if there is one, else the keyword. */
static PyObject *argument(PyObject *args, Py_ssize_t pos, PyObject *kwargs, const char *name, int *used)
{
    PyObject *by_name = kwargs ? PyDict_GetItemString(kwargs, name) : NULL;
    if (by_name) ++*used;
    if (pos < PyTuple_GET_SIZE(args)) {
        if (by_name) {
            PyErr_Format(PyExc_TypeError, "%s was given twice", name);
            return NULL;
        }
        return PyTuple_GET_ITEM(args, pos);
    }
    return by_name;
}

static PyObject *py_op(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    if (PyTuple_GET_SIZE(args) < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(args, 0)))
        return PyErr_Format(PyExc_TypeError, "op(name, *arrays, device='cpu', dtype='fp32', **scalars): name first");
    const char *name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(args, 0));
    if (!name) return NULL;
    const d3sr_single_info *info = d3sr_single_find(name);
    if (!info) return PyErr_Format(PyExc_ValueError, "no op named '%s' (d3sr._core.ops() lists them)", name);
    PyObject *rest = PyTuple_GetSlice(args, 1, PyTuple_GET_SIZE(args));
    if (!rest) return NULL;

    d3sr_single_params p;
    memset(&p, 0, sizeof p);
    p.kind = info->kind;
    p.device = "cpu";
    PyArrayObject *held[D3SR_SINGLE_ARRAY_SLOTS] = {NULL};
    PyObject *y = NULL;
    int used = 0, pos = 0, ok = 0;
    const char *dtype_name = "fp32";

    PyObject *device = argument(rest, PY_SSIZE_T_MAX, kwargs, "device", &used);
    PyObject *dtype = argument(rest, PY_SSIZE_T_MAX, kwargs, "dtype", &used);
    if ((device && !(p.device = PyUnicode_AsUTF8(device))) || (dtype && !(dtype_name = PyUnicode_AsUTF8(dtype))) ||
        parse_dtype(dtype_name, &p.dtype))
        goto done;
    /* arrays first, positionally or by name, then the scalars */
    for (int i = 0; i < D3SR_SINGLE_ARRAY_SLOTS && info->arrays[i]; i++, pos++) {
        PyObject *obj = argument(rest, pos, kwargs, info->arrays[i], &used);
        if (PyErr_Occurred()) goto done;
        if (!obj || obj == Py_None) continue; /* the core says whether it was required */
        if (!(held[i] = float32_array(obj, info->arrays[i], info->ndim[i], NULL))) goto done;
        p.arrays[i].data = PyArray_DATA(held[i]);
        for (int d = 0; d < info->ndim[i]; d++) {
            npy_intp size = PyArray_DIM(held[i], d);
            if (size > INT32_MAX) {
                PyErr_Format(PyExc_ValueError, "%s: %s is too large", name, info->arrays[i]);
                goto done;
            }
            p.arrays[i].shape[d] = (int)size;
        }
    }
    double *values = p.values;
    for (int i = 0; i < D3SR_SINGLE_SCALAR_SLOTS && info->scalars[i].name; i++, pos++) {
        const d3sr_single_scalar *s = &info->scalars[i];
        PyObject *obj = argument(rest, pos, kwargs, s->name, &used);
        if (PyErr_Occurred()) goto done;
        if (obj) {
            if (parse_scalar(name, s, obj, values) < 0) goto done;
        } else if (s->required) {
            PyErr_Format(PyExc_TypeError, "%s: %s is required", name, s->name);
            goto done;
        } else {
            for (int k = 0; k < s->count; k++) values[k] = s->fallback;
        }
        values += s->count;
    }
    if (PyTuple_GET_SIZE(rest) > pos) {
        PyErr_Format(PyExc_TypeError, "%s takes %d positional arguments after the name, not %zd", name, pos,
                     PyTuple_GET_SIZE(rest));
        goto done;
    }
    if (kwargs && PyDict_Size(kwargs) > used) {
        PyErr_Format(PyExc_TypeError, "%s: unknown keyword argument among %R (%s)", name, kwargs, info->doc);
        goto done;
    }
    int ndim, shape[4];
    d3sr_status status = d3sr_single_output_shape(&p, &ndim, shape);
    if (status != D3SR_OK) {
        raise_status(status);
        goto done;
    }
    npy_intp dims[4] = {shape[0], shape[1], shape[2], shape[3]};
    if (!(y = PyArray_SimpleNew(ndim, dims, NPY_FLOAT32))) goto done;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_single_run(&p, PyArray_DATA((PyArrayObject *)y));
    Py_END_ALLOW_THREADS
    if (status != D3SR_OK) {
        raise_status(status);
        goto done;
    }
    ok = 1;
done:
    for (int i = 0; i < D3SR_SINGLE_ARRAY_SLOTS; i++) Py_XDECREF(held[i]);
    Py_DECREF(rest);
    if (!ok) Py_CLEAR(y);
    return y;
}

/* [(name, arrays, scalars, doc)]: what op() takes, from the core's table. */
static PyObject *py_ops(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    int count;
    const d3sr_single_info *table = d3sr_single_table(&count);
    PyObject *list = PyList_New(count);
    for (int i = 0; list && i < count; i++) {
        const d3sr_single_info *info = &table[i];
        PyObject *arrays = PyList_New(0), *scalars = PyList_New(0), *entry = NULL;
        for (int a = 0; arrays && a < D3SR_SINGLE_ARRAY_SLOTS && info->arrays[a]; a++) {
            PyObject *item = Py_BuildValue("(siO)", info->arrays[a], info->ndim[a],
                                           info->optional & (1u << a) ? Py_True : Py_False);
            if (!item || PyList_Append(arrays, item) < 0) Py_CLEAR(arrays);
            Py_XDECREF(item);
        }
        for (int s = 0; scalars && s < D3SR_SINGLE_SCALAR_SLOTS && info->scalars[s].name; s++) {
            PyObject *item = Py_BuildValue("(si)", info->scalars[s].name, info->scalars[s].count);
            if (!item || PyList_Append(scalars, item) < 0) Py_CLEAR(scalars);
            Py_XDECREF(item);
        }
        if (arrays && scalars) entry = Py_BuildValue("(sOOs)", info->name, arrays, scalars, info->doc);
        Py_XDECREF(arrays);
        Py_XDECREF(scalars);
        if (!entry) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, entry);
    }
    return list;
}

PyMethodDef single_op_methods[] = {
    {"op", (PyCFunction)(void (*)(void))py_op, METH_VARARGS | METH_KEYWORDS,
     "op(name, *arrays, device='cpu', dtype='fp32', **scalars) -> float32 array: one op of the core"},
    {"ops", py_ops, METH_NOARGS, "ops() -> [(name, [(array, ndim, optional)], [(scalar, count)], doc)]"},
    {NULL, NULL, 0, NULL},
};
