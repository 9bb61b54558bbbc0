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

/* Fills p from the op's table entry: its arrays (borrowed into held, which
 * the caller releases) and scalars, positionally after the name (args) or by
 * keyword; skip names keywords another layer takes. 0, or -1 with an exception. */
static int parse_op(const d3sr_single_info *info, PyObject *args, PyObject *kwargs, int skipped,
                    d3sr_single_params *p, PyArrayObject **held)
{
    const char *name = info->name, *dtype_name = "fp32";
    int used = skipped, pos = 0;
    memset(p, 0, sizeof *p);
    p->kind = info->kind;
    p->device = "cpu";
    PyObject *device = argument(args, PY_SSIZE_T_MAX, kwargs, "device", &used);
    PyObject *dtype = argument(args, PY_SSIZE_T_MAX, kwargs, "dtype", &used);
    if ((device && !(p->device = PyUnicode_AsUTF8(device))) || (dtype && !(dtype_name = PyUnicode_AsUTF8(dtype))) ||
        parse_dtype(dtype_name, &p->dtype))
        return -1;
    /* arrays first, positionally or by name, then the scalars */
    for (int i = 0; i < D3SR_SINGLE_ARRAY_SLOTS && info->arrays[i]; i++, pos++) {
        PyObject *obj = argument(args, pos, kwargs, info->arrays[i], &used);
        if (PyErr_Occurred()) return -1;
        if (!obj || obj == Py_None) continue; /* the core says whether it was required */
        if (!(held[i] = float32_array(obj, info->arrays[i], info->ndim[i], NULL))) return -1;
        p->arrays[i].data = PyArray_DATA(held[i]);
        for (int d = 0; d < info->ndim[i]; d++) {
            npy_intp size = PyArray_DIM(held[i], d);
            if (size > INT32_MAX) {
                PyErr_Format(PyExc_ValueError, "%s: %s is too large", name, info->arrays[i]);
                return -1;
            }
            p->arrays[i].shape[d] = (int)size;
        }
    }
    double *values = p->values;
    for (int i = 0; i < D3SR_SINGLE_SCALAR_SLOTS && info->scalars[i].name; i++, pos++) {
        const d3sr_single_scalar *s = &info->scalars[i];
        PyObject *obj = argument(args, pos, kwargs, s->name, &used);
        if (PyErr_Occurred()) return -1;
        if (obj) {
            if (parse_scalar(name, s, obj, values) < 0) return -1;
        } else if (s->required) {
            PyErr_Format(PyExc_TypeError, "%s: %s is required", name, s->name);
            return -1;
        } else {
            for (int k = 0; k < s->count; k++) values[k] = s->fallback;
        }
        values += s->count;
    }
    if (PyTuple_GET_SIZE(args) > pos) {
        PyErr_Format(PyExc_TypeError, "%s takes %d positional arguments after the name, not %zd", name, pos,
                     PyTuple_GET_SIZE(args));
        return -1;
    }
    if (kwargs && PyDict_Size(kwargs) > used) {
        PyErr_Format(PyExc_TypeError, "%s: unknown keyword argument among %R (%s)", name, kwargs, info->doc);
        return -1;
    }
    return 0;
}

/* A new float32 array of p's output shape, or NULL with an exception. */
static PyObject *new_output(const d3sr_single_params *p)
{
    int ndim, shape[4];
    d3sr_status status = d3sr_single_output_shape(p, &ndim, shape);
    if (status != D3SR_OK) return raise_status(status);
    npy_intp dims[4] = {shape[0], shape[1], shape[2], shape[3]};
    return PyArray_SimpleNew(ndim, dims, NPY_FLOAT32);
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
    PyArrayObject *held[D3SR_SINGLE_ARRAY_SLOTS] = {NULL};
    PyObject *y = NULL;
    if (parse_op(info, rest, kwargs, 0, &p, held) == 0 && (y = new_output(&p))) {
        d3sr_status status;
        Py_BEGIN_ALLOW_THREADS
        status = d3sr_single_run(&p, PyArray_DATA((PyArrayObject *)y));
        Py_END_ALLOW_THREADS
        if (status != D3SR_OK) {
            Py_CLEAR(y);
            raise_status(status);
        }
    }
    for (int i = 0; i < D3SR_SINGLE_ARRAY_SLOTS; i++) Py_XDECREF(held[i]);
    Py_DECREF(rest);
    return y;
}

/* A tiled call's statistics pool from core = (y0, y1, x0, x1) and apply (None or
 * float64 [n, layers, groups, 2]); *collected gets a new float64 [n, layers, groups, 3].
 * Returns 0, or -1 with an exception set. */
static int pool_args(PyObject *core, PyObject *apply_obj, int n, int layers, int groups, d3sr_norm_pool *pool,
                     PyArrayObject **apply, PyArrayObject **collected)
{
    memset(pool, 0, sizeof *pool);
    *apply = *collected = NULL;
    if (!PyArg_ParseTuple(core, "iiii;core must be a tuple (y0, y1, x0, x1) of integers", &pool->y0, &pool->y1,
                          &pool->x0, &pool->x1))
        return -1;
    pool->layers = layers;
    pool->groups = groups;
    if (apply_obj != Py_None) {
        *apply = (PyArrayObject *)PyArray_FROM_OTF(apply_obj, NPY_FLOAT64, NPY_ARRAY_IN_ARRAY);
        if (!*apply) return -1;
        if (PyArray_NDIM(*apply) != 4 || PyArray_DIM(*apply, 0) != n || PyArray_DIM(*apply, 1) != layers ||
            PyArray_DIM(*apply, 2) != groups || PyArray_DIM(*apply, 3) != 2) {
            PyErr_Format(PyExc_ValueError, "apply must have shape [%d, %d, %d, 2] (mean, variance)", n, layers, groups);
            Py_CLEAR(*apply);
            return -1;
        }
        pool->apply = PyArray_DATA(*apply);
    }
    npy_intp dims[4] = {n, layers, groups, 3};
    *collected = (PyArrayObject *)PyArray_ZEROS(4, dims, NPY_FLOAT64, 0);
    if (!*collected) {
        Py_CLEAR(*apply);
        return -1;
    }
    pool->collect = PyArray_DATA(*collected);
    return 0;
}

/* group_norm_pooled(x, gamma, beta, groups=, eps=, silu=False, core=(y0, y1, x0, x1),
 * apply=None, device=, dtype=) -> (y, collected): group_norm's arguments, one tile
 * under a one-layer statistics pool. Its own entry: two outputs, one float64. */
static PyObject *py_group_norm_pooled(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    PyObject *core = kwargs ? PyDict_GetItemString(kwargs, "core") : NULL;
    PyObject *apply_obj = kwargs ? PyDict_GetItemString(kwargs, "apply") : NULL;
    if (!core) return PyErr_Format(PyExc_TypeError, "group_norm_pooled: core=(y0, y1, x0, x1) is required");
    d3sr_single_params p;
    PyArrayObject *held[D3SR_SINGLE_ARRAY_SLOTS] = {NULL}, *apply = NULL, *collected = NULL;
    PyObject *y = NULL, *result = NULL;
    d3sr_norm_pool pool;
    if (parse_op(d3sr_single_find("group_norm"), args, kwargs, 1 + (apply_obj != NULL), &p, held) == 0 &&
        pool_args(core, apply_obj ? apply_obj : Py_None, p.arrays[0].shape[0], 1, (int)p.values[0], &pool, &apply,
                  &collected) == 0 &&
        (y = new_output(&p))) {
        d3sr_status status;
        Py_BEGIN_ALLOW_THREADS
        status = d3sr_single_group_norm_pooled(&p, &pool, PyArray_DATA((PyArrayObject *)y));
        Py_END_ALLOW_THREADS
        if (status != D3SR_OK) raise_status(status);
        else result = Py_BuildValue("(OO)", y, (PyObject *)collected);
    }
    for (int i = 0; i < D3SR_SINGLE_ARRAY_SLOTS; i++) Py_XDECREF(held[i]);
    Py_XDECREF(apply);
    Py_XDECREF(collected);
    Py_XDECREF(y);
    return result;
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
    {"group_norm_pooled", (PyCFunction)(void (*)(void))py_group_norm_pooled, METH_VARARGS | METH_KEYWORDS,
     "group_norm_pooled(x, gamma, beta, groups=, eps=, silu=False, core=(y0, y1, x0, x1), apply=None) -> (y, collected)"},
    {"ops", py_ops, METH_NOARGS, "ops() -> [(name, [(array, ndim, optional)], [(scalar, count)], doc)]"},
    {NULL, NULL, 0, NULL},
};
