/* module.c: d3sr._core, the binding between NumPy and the C core.
 *
 * The only file that includes Python.h and the NumPy C API. It checks and
 * names each argument, borrows input arrays for the length of a call
 * (PyArray_FROM_OTF with NPY_ARRAY_IN_ARRAY, never modified), allocates
 * outputs with the GIL held, releases the GIL around every call into the
 * core and turns a failed status into the matching exception with the
 * core's message. No arithmetic on data happens here.
 */
#define D3SR_BINDING_MAIN
#include "binding.h"

#include <pythread.h>

#include "../ops/device.h"
#include "../ops/single_op.h"

/* ---- errors ------------------------------------------------------------ */

PyObject *raise_status(d3sr_status status)
{
    PyObject *type;
    switch (status) {
    case D3SR_ERR_VALUE: type = PyExc_ValueError; break;
    case D3SR_ERR_TYPE: type = PyExc_TypeError; break;
    case D3SR_ERR_MEMORY: type = PyExc_MemoryError; break;
    default: type = PyExc_RuntimeError; break;
    }
    PyErr_SetString(type, d3sr_last_error());
    return NULL;
}

PyArrayObject *float32_array(PyObject *obj, const char *arg, int ndim)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray, not %s", arg, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        PyObject *name = PyObject_Str((PyObject *)PyArray_DESCR(a));
        PyErr_Format(PyExc_TypeError, "%s must have dtype float32, not %S", arg, name);
        Py_XDECREF(name);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, not %d", arg, ndim, PyArray_NDIM(a));
        return NULL;
    }
    return (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_FLOAT32, NPY_ARRAY_IN_ARRAY);
}

int parse_dtype(const char *name, d3sr_dtype *out)
{
    if (strcmp(name, "fp32") == 0) *out = D3SR_F32;
    else if (strcmp(name, "fp16") == 0) *out = D3SR_F16;
    else if (strcmp(name, "bf16") == 0) *out = D3SR_BF16;
    else {
        PyErr_Format(PyExc_ValueError, "dtype must be 'fp32', 'fp16' or 'bf16', not '%s'", name);
        return -1;
    }
    return 0;
}

/* ---- Model ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    d3sr_model *model;       /* owned */
    PyThread_type_lock lock; /* owned: a second thread waits here, GIL released */
} ModelObject;

static void model_dealloc(ModelObject *self)
{
    d3sr_model_free(self->model);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ModelType;

PyObject *wrap_model(d3sr_model *model)
{
    ModelObject *self = PyObject_New(ModelObject, &ModelType);
    if (!self) {
        d3sr_model_free(model);
        return NULL;
    }
    self->model = model;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

int unwrap_model(PyObject *obj, const char *arg, d3sr_model **model, PyThread_type_lock *lock)
{
    if (!PyObject_TypeCheck(obj, &ModelType)) {
        PyErr_Format(PyExc_TypeError, "%s must be a d3sr._core.Model, not %s", arg, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *model = ((ModelObject *)obj)->model;
    *lock = ((ModelObject *)obj)->lock;
    return 0;
}

#define RUN_LOCKED(self, call)                         \
    Py_BEGIN_ALLOW_THREADS                             \
    PyThread_acquire_lock((self)->lock, WAIT_LOCK);    \
    status = (call);                                   \
    PyThread_release_lock((self)->lock);               \
    Py_END_ALLOW_THREADS

static PyObject *model_set_weight(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "array", "bfloat16", NULL};
    const char *name;
    PyObject *obj;
    int bfloat16 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sO|p", keywords, &name, &obj, &bfloat16)) return NULL;
    if (!PyArray_Check(obj)) return PyErr_Format(PyExc_TypeError, "weight '%s' must be a numpy.ndarray", name);
    d3sr_dtype dtype;
    int type = PyArray_TYPE((PyArrayObject *)obj);
    if (type == NPY_FLOAT32 && !bfloat16) dtype = D3SR_F32;
    else if (type == NPY_FLOAT16 && !bfloat16) dtype = D3SR_F16;
    else if (type == NPY_UINT16 && bfloat16) dtype = D3SR_BF16;
    else return PyErr_Format(PyExc_TypeError, "weight '%s' must be float32, float16, or uint16 bits with bfloat16=True", name);
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_OTF(obj, type, NPY_ARRAY_IN_ARRAY);
    if (!a) return NULL;
    int ndim = PyArray_NDIM(a);
    if (ndim > 4) {
        Py_DECREF(a);
        return PyErr_Format(PyExc_ValueError, "weight '%s' has %d dimensions, at most 4 are expected", name, ndim);
    }
    int64_t shape[4];
    for (int i = 0; i < ndim; i++) shape[i] = PyArray_DIM(a, i);
    d3sr_status status;
    RUN_LOCKED(self, d3sr_model_set_weight(self->model, name, dtype, ndim, shape, PyArray_DATA(a)));
    Py_DECREF(a);
    if (status != D3SR_OK) return raise_status(status);
    Py_RETURN_NONE;
}

static PyObject *model_weights(ModelObject *self, PyObject *unused)
{
    (void)unused;
    int count = d3sr_model_num_weights(self->model);
    PyObject *list = PyList_New(count);
    if (!list) return NULL;
    for (int i = 0; i < count; i++) {
        const char *name;
        int ndim, is_set;
        int64_t shape[4];
        d3sr_model_weight_info(self->model, i, &name, &ndim, shape, &is_set);
        PyObject *dims = PyTuple_New(ndim);
        if (!dims) {
            Py_DECREF(list);
            return NULL;
        }
        for (int d = 0; d < ndim; d++) PyTuple_SET_ITEM(dims, d, PyLong_FromLongLong(shape[d]));
        PyObject *item = Py_BuildValue("(sNO)", name, dims, is_set ? Py_True : Py_False);
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *model_check_complete(ModelObject *self, PyObject *unused)
{
    (void)unused;
    d3sr_status status = d3sr_model_check_complete(self->model);
    if (status != D3SR_OK) return raise_status(status);
    Py_RETURN_NONE;
}

static PyObject *model_memory(ModelObject *self, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("{s:n,s:n}", "weights", (Py_ssize_t)d3sr_model_weight_bytes(self->model),
                         "activations", (Py_ssize_t)d3sr_model_arena_bytes(self->model));
}

/* encode or decode: the core checks x's shape and sizes the output. */
static PyObject *vae_call(ModelObject *self, PyObject *obj, int encode)
{
    PyArrayObject *x = float32_array(obj, encode ? "x" : "z", 4);
    if (!x) return NULL;
    int64_t in[4], out[4];
    for (int i = 0; i < 4; i++) in[i] = PyArray_DIM(x, i);
    d3sr_status status = d3sr_vae_output_shape(self->model, encode, in, out);
    if (status != D3SR_OK) {
        Py_DECREF(x);
        return raise_status(status);
    }
    npy_intp dims[4] = {(npy_intp)out[0], (npy_intp)out[1], (npy_intp)out[2], (npy_intp)out[3]};
    PyArrayObject *y = (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32);
    if (!y) {
        Py_DECREF(x);
        return NULL;
    }
    const float *xd = PyArray_DATA(x);
    float *yd = PyArray_DATA(y);
    int n = (int)in[0], h = (int)in[2], w = (int)in[3];
    if (encode) {
        RUN_LOCKED(self, d3sr_vae_encode(self->model, xd, n, h, w, yd));
    } else {
        RUN_LOCKED(self, d3sr_vae_decode(self->model, xd, n, h, w, yd));
    }
    Py_DECREF(x);
    if (status != D3SR_OK) {
        Py_DECREF(y);
        return raise_status(status);
    }
    return (PyObject *)y;
}

static PyObject *model_vae_encode(ModelObject *self, PyObject *x) { return vae_call(self, x, 1); }
static PyObject *model_vae_decode(ModelObject *self, PyObject *z) { return vae_call(self, z, 0); }

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

/* vae_run_tiled(x, tiles [count, 8] int, encode, park_half) -> (output, parked bytes). */
static PyObject *model_vae_run_tiled(ModelObject *self, PyObject *args)
{
    PyObject *obj, *tiles_obj;
    int encode, park_half;
    if (!PyArg_ParseTuple(args, "OOpp", &obj, &tiles_obj, &encode, &park_half)) return NULL;
    PyArrayObject *x = float32_array(obj, encode ? "x" : "z", 4);
    if (!x) return NULL;
    PyArrayObject *tiles = (PyArrayObject *)PyArray_FROM_OTF(tiles_obj, NPY_INT32, NPY_ARRAY_IN_ARRAY);
    if (!tiles) {
        Py_DECREF(x);
        return NULL;
    }
    PyArrayObject *y = NULL;
    if (PyArray_NDIM(tiles) != 2 || PyArray_DIM(tiles, 1) != 8 || PyArray_DIM(tiles, 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "tiles must have shape [count, 8]: window y0, y1, x0, x1, core y0, y1, x0, x1");
        goto done;
    }
    int64_t in[4], out[4];
    for (int i = 0; i < 4; i++) in[i] = PyArray_DIM(x, i);
    d3sr_status status = d3sr_vae_output_shape(self->model, encode, in, out);
    if (status != D3SR_OK) {
        raise_status(status);
        goto done;
    }
    npy_intp dims[4] = {(npy_intp)out[0], (npy_intp)out[1], (npy_intp)out[2], (npy_intp)out[3]};
    y = (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32);
    if (!y) goto done;
    size_t parked = 0;
    const float *xd = PyArray_DATA(x);
    const int (*td)[8] = (const int (*)[8])PyArray_DATA(tiles);
    int count = (int)PyArray_DIM(tiles, 0);
    float *yd = PyArray_DATA(y);
    RUN_LOCKED(self, d3sr_vae_run_tiled(self->model, encode, xd, (int)in[0], (int)in[2], (int)in[3], td, count, park_half,
                                        yd, &parked));
    if (status != D3SR_OK) {
        Py_CLEAR(y);
        raise_status(status);
        goto done;
    }
    Py_DECREF(x);
    Py_DECREF(tiles);
    return Py_BuildValue("(Nn)", (PyObject *)y, (Py_ssize_t)parked);
done:
    Py_DECREF(x);
    Py_DECREF(tiles);
    Py_XDECREF(y);
    return NULL;
}


static PyObject *model_unet_forward(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"sample", "timesteps", "encoder_hidden_states", "text_embeds", "time_ids", NULL};
    PyObject *so, *to, *co, *eo = Py_None, *io = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OO", keywords, &so, &to, &co, &eo, &io)) return NULL;
    PyArrayObject *s = float32_array(so, "sample", 4), *t = s ? float32_array(to, "timesteps", 1) : NULL;
    PyArrayObject *c = t ? float32_array(co, "encoder_hidden_states", 3) : NULL;
    PyArrayObject *e = c && eo != Py_None ? float32_array(eo, "text_embeds", 2) : NULL;
    PyArrayObject *ids = c && io != Py_None ? float32_array(io, "time_ids", 2) : NULL;
    PyArrayObject *y = NULL;
    if (!c || (eo != Py_None && !e) || (io != Py_None && !ids)) goto done;
    npy_intp n = PyArray_DIM(s, 0);
    if (PyArray_DIM(t, 0) != n || PyArray_DIM(c, 0) != n || (e && PyArray_DIM(e, 0) != n) ||
        (ids && PyArray_DIM(ids, 0) != n)) {
        PyErr_Format(PyExc_ValueError, "timesteps, encoder_hidden_states, text_embeds and time_ids need one row per sample (%zd)",
                     (Py_ssize_t)n);
        goto done;
    }
    int64_t in[4], out[4];
    for (int i = 0; i < 4; i++) in[i] = PyArray_DIM(s, i);
    d3sr_status status = d3sr_unet_output_shape(self->model, in, out);
    if (status != D3SR_OK) {
        raise_status(status);
        goto done;
    }
    npy_intp dims[4] = {(npy_intp)out[0], (npy_intp)out[1], (npy_intp)out[2], (npy_intp)out[3]};
    y = (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32);
    if (!y) goto done;
    const float *sd = PyArray_DATA(s), *td = PyArray_DATA(t), *cd = PyArray_DATA(c);
    const float *ed = e ? PyArray_DATA(e) : NULL, *idd = ids ? PyArray_DATA(ids) : NULL;
    int ctx_len = (int)PyArray_DIM(c, 1), ctx_dim = (int)PyArray_DIM(c, 2);
    int text_dim = e ? (int)PyArray_DIM(e, 1) : 0, n_ids = ids ? (int)PyArray_DIM(ids, 1) : 0;
    float *yd = PyArray_DATA(y);
    RUN_LOCKED(self, d3sr_unet_forward(self->model, sd, (int)in[0], (int)in[2], (int)in[3], td, cd, ctx_len, ctx_dim,
                                       ed, text_dim, idd, n_ids, yd));
    if (status != D3SR_OK) {
        Py_CLEAR(y);
        raise_status(status);
    }
done:
    Py_XDECREF(s);
    Py_XDECREF(t);
    Py_XDECREF(c);
    Py_XDECREF(e);
    Py_XDECREF(ids);
    return (PyObject *)y;
}

static PyObject *model_head_forward(ModelObject *self, PyObject *obj)
{
    PyArrayObject *x = float32_array(obj, "features", 4);
    if (!x) return NULL;
    npy_intp dims[4] = {PyArray_DIM(x, 0), 1, PyArray_DIM(x, 2), PyArray_DIM(x, 3)};
    PyArrayObject *y = (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32);
    if (!y) {
        Py_DECREF(x);
        return NULL;
    }
    const float *xd = PyArray_DATA(x);
    float *yd = PyArray_DATA(y);
    int n = (int)PyArray_DIM(x, 0), c = (int)PyArray_DIM(x, 1), h = (int)PyArray_DIM(x, 2), w = (int)PyArray_DIM(x, 3);
    d3sr_status status;
    RUN_LOCKED(self, d3sr_head_forward(self->model, xd, n, c, h, w, yd));
    Py_DECREF(x);
    if (status != D3SR_OK) {
        Py_DECREF(y);
        return raise_status(status);
    }
    return (PyObject *)y;
}

static PyObject *model_set_capture(ModelObject *self, PyObject *arg)
{
    int enabled = PyObject_IsTrue(arg);
    if (enabled < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    d3sr_model_set_capture(self->model, enabled);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* {name: ndarray} copies of what the last call captured, in the order captured. */
static PyObject *model_captured(ModelObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *dict = PyDict_New();
    if (!dict) return NULL;
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    int count = d3sr_model_num_captured(self->model);
    for (int i = 0; i < count; i++) {
        const char *name;
        int64_t shape[4];
        const float *data;
        d3sr_model_captured(self->model, i, &name, shape, &data);
        npy_intp dims[4] = {(npy_intp)shape[0], (npy_intp)shape[1], (npy_intp)shape[2], (npy_intp)shape[3]};
        PyObject *array = PyArray_SimpleNew(4, dims, NPY_FLOAT32);
        if (!array || PyDict_SetItemString(dict, name, array) < 0) {
            Py_XDECREF(array);
            Py_DECREF(dict);
            PyThread_release_lock(self->lock);
            return NULL;
        }
        memcpy(PyArray_DATA((PyArrayObject *)array), data, (size_t)PyArray_NBYTES((PyArrayObject *)array));
        Py_DECREF(array);
    }
    PyThread_release_lock(self->lock);
    return dict;
}

static PyObject *model_set_profiling(ModelObject *self, PyObject *arg)
{
    int enabled = PyObject_IsTrue(arg);
    if (enabled < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    d3sr_model_set_profiling(self->model, enabled);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* {op: (calls, seconds)} accumulated since profiling was turned on. */
static PyObject *model_profile(ModelObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *dict = PyDict_New();
    if (!dict) return NULL;
    for (int i = 0; i < d3sr_model_num_ops(); i++) {
        const char *name;
        long calls;
        double seconds;
        d3sr_model_op_profile(self->model, i, &name, &calls, &seconds);
        if (!calls) continue;
        PyObject *item = Py_BuildValue("(ld)", calls, seconds);
        if (!item || PyDict_SetItemString(dict, name, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(dict);
            return NULL;
        }
        Py_DECREF(item);
    }
    return dict;
}

static PyMethodDef model_methods[] = {
    {"set_profiling", (PyCFunction)model_set_profiling, METH_O, "set_profiling(on): time each op from now on."},
    {"profile", (PyCFunction)model_profile, METH_NOARGS, "{op: (calls, seconds)} since profiling was turned on."},
    {"set_capture", (PyCFunction)model_set_capture, METH_O, "set_capture(on): keep each block's output of later calls."},
    {"captured", (PyCFunction)model_captured, METH_NOARGS, "{name: array} of the last call's captured activations."},
    {"set_weight", (PyCFunction)(void (*)(void))model_set_weight, METH_VARARGS | METH_KEYWORDS,
     "set_weight(name, array, bfloat16=False): copy one weight in, by its state_dict name."},
    {"weights", (PyCFunction)model_weights, METH_NOARGS, "[(name, shape, is_set)] of every expected weight."},
    {"check_complete", (PyCFunction)model_check_complete, METH_NOARGS, "Raise ValueError naming the first missing weight."},
    {"memory", (PyCFunction)model_memory, METH_NOARGS, "Bytes held: {'weights': ..., 'activations': ...}."},
    {"vae_encode", (PyCFunction)model_vae_encode, METH_O, "vae_encode(x [N, C, H, W] float32) -> posterior mean."},
    {"vae_decode", (PyCFunction)model_vae_decode, METH_O, "vae_decode(z [N, C, h, w] float32) -> image."},
    {"vae_run_tiled", (PyCFunction)model_vae_run_tiled, METH_VARARGS,
     "vae_run_tiled(x, tiles [count, 8], encode, park_half) -> (output, most bytes parked): one pass, pooled GroupNorm."},
    {"head_forward", (PyCFunction)model_head_forward, METH_O, "head_forward(features [N, C, h, w]) -> logits [N, 1, h, w]"},
    {"unet_forward", (PyCFunction)(void (*)(void))model_unet_forward, METH_VARARGS | METH_KEYWORDS,
     "unet_forward(sample, timesteps [N], encoder_hidden_states [N, L, D], text_embeds=None, time_ids=None)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "d3sr._core.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_dealloc = (destructor)model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A model of the C core; create it with a *_create function.",
    .tp_methods = model_methods,
};

/* ---- configs ----------------------------------------------------------- */

static int dict_int(PyObject *dict, const char *key, int *out)
{
    PyObject *value = PyDict_GetItemString(dict, key);
    if (!value) {
        PyErr_Format(PyExc_KeyError, "config lacks '%s'", key);
        return -1;
    }
    long v = PyLong_AsLong(value);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "config field '%s' must be an integer", key);
        return -1;
    }
    if (v < INT32_MIN || v > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "config field '%s' = %ld is out of range", key, v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int dict_float(PyObject *dict, const char *key, float *out)
{
    PyObject *value = PyDict_GetItemString(dict, key);
    if (!value) {
        PyErr_Format(PyExc_KeyError, "config lacks '%s'", key);
        return -1;
    }
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "config field '%s' must be a number", key);
        return -1;
    }
    *out = (float)v;
    return 0;
}

static int dict_int_list(PyObject *dict, const char *key, int *out, int capacity, int *count)
{
    PyObject *value = PyDict_GetItemString(dict, key);
    if (!value || !PyList_Check(value)) {
        PyErr_Format(PyExc_TypeError, "config field '%s' must be a list of integers", key);
        return -1;
    }
    Py_ssize_t len = PyList_GET_SIZE(value);
    if (len > capacity) {
        PyErr_Format(PyExc_ValueError, "config field '%s' has %zd entries, at most %d are supported", key, len, capacity);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        long v = PyLong_AsLong(PyList_GET_ITEM(value, i));
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "config field '%s' must be a list of integers", key);
            return -1;
        }
        out[i] = (int)v;
    }
    *count = (int)len;
    return 0;
}

static PyObject *py_vae_create(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"config", "parts", "device", "dtype", NULL};
    PyObject *config;
    int parts;
    const char *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!i|ss", keywords, &PyDict_Type, &config, &parts, &device, &dtype_name))
        return NULL;
    d3sr_vae_config cfg;
    memset(&cfg, 0, sizeof cfg);
    d3sr_dtype dtype;
    if (parse_dtype(dtype_name, &dtype) || dict_int(config, "in_channels", &cfg.in_channels) ||
        dict_int(config, "out_channels", &cfg.out_channels) || dict_int(config, "latent_channels", &cfg.latent_channels) ||
        dict_int_list(config, "block_out_channels", cfg.block_out_channels, D3SR_MAX_LEVELS, &cfg.num_levels) ||
        dict_int(config, "layers_per_block", &cfg.layers_per_block) ||
        dict_int(config, "norm_num_groups", &cfg.norm_num_groups) ||
        dict_int(config, "use_quant_conv", &cfg.use_quant_conv) ||
        dict_int(config, "use_post_quant_conv", &cfg.use_post_quant_conv) ||
        dict_int(config, "mid_block_add_attention", &cfg.mid_block_add_attention))
        return NULL;
    d3sr_model *model;
    d3sr_status status;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_vae_create(&cfg, parts, device, dtype, &model);
    Py_END_ALLOW_THREADS
    if (status != D3SR_OK) return raise_status(status);
    return wrap_model(model);
}

/* Reads a per-level list that must have num_levels entries. */
static int dict_levels(PyObject *dict, const char *key, int *out, int num_levels)
{
    int count;
    if (dict_int_list(dict, key, out, D3SR_MAX_LEVELS, &count)) return -1;
    if (count != num_levels) {
        PyErr_Format(PyExc_ValueError, "config field '%s' has %d entries, block_out_channels has %d", key, count, num_levels);
        return -1;
    }
    return 0;
}

static PyObject *py_unet_create(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"config", "trunk_only", "device", "dtype", NULL};
    PyObject *config;
    int trunk_only = 0;
    const char *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!|pss", keywords, &PyDict_Type, &config, &trunk_only, &device,
                                     &dtype_name))
        return NULL;
    d3sr_unet_config c;
    memset(&c, 0, sizeof c);
    d3sr_dtype dtype;
    int levels;
    if (parse_dtype(dtype_name, &dtype) ||
        dict_int_list(config, "block_out_channels", c.block_out_channels, D3SR_MAX_LEVELS, &levels))
        return NULL;
    c.num_levels = levels;
    if (dict_int(config, "in_channels", &c.in_channels) || dict_int(config, "out_channels", &c.out_channels) ||
        dict_levels(config, "down_cross_attention", c.down_cross_attention, levels) ||
        dict_levels(config, "up_cross_attention", c.up_cross_attention, levels) ||
        dict_levels(config, "layers_per_block", c.layers_per_block, levels) ||
        dict_levels(config, "transformer_layers", c.transformer_layers, levels) ||
        dict_levels(config, "up_transformer_layers", c.up_transformer_layers, levels) ||
        dict_levels(config, "attention_heads", c.attention_heads, levels) ||
        dict_int(config, "cross_attention_dim", &c.cross_attention_dim) ||
        dict_int(config, "norm_num_groups", &c.norm_num_groups) || dict_float(config, "norm_eps", &c.norm_eps) ||
        dict_int(config, "use_linear_projection", &c.use_linear_projection) ||
        dict_int(config, "flip_sin_to_cos", &c.flip_sin_to_cos) || dict_float(config, "freq_shift", &c.freq_shift) ||
        dict_int(config, "time_embed_dim", &c.time_embed_dim) || dict_int(config, "text_time", &c.text_time) ||
        dict_int(config, "addition_time_embed_dim", &c.addition_time_embed_dim) ||
        dict_int(config, "addition_input_dim", &c.addition_input_dim) ||
        dict_int(config, "downsample_padding", &c.downsample_padding))
        return NULL;
    d3sr_model *model;
    d3sr_status status;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_unet_create(&c, trunk_only, device, dtype, &model);
    Py_END_ALLOW_THREADS
    if (status != D3SR_OK) return raise_status(status);
    return wrap_model(model);
}

static PyObject *py_head_create(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"in_channels", "hidden", "activation", "negative_slope", "device", "dtype", NULL};
    d3sr_head_config cfg = {0, 0, D3SR_HEAD_SILU, 0.2f};
    int activation = 0;
    const char *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iii|fss", keywords, &cfg.in_channels, &cfg.hidden, &activation,
                                     &cfg.negative_slope, &device, &dtype_name))
        return NULL;
    cfg.activation = (d3sr_head_activation)activation;
    d3sr_dtype dtype;
    if (parse_dtype(dtype_name, &dtype)) return NULL;
    d3sr_model *model;
    d3sr_status status = d3sr_head_create(&cfg, device, dtype, &model);
    if (status != D3SR_OK) return raise_status(status);
    return wrap_model(model);
}

/* ---- single ops (tests) ------------------------------------------------ */

/* Parses device and dtype keywords shared by the single-op functions. */
static int device_args(const char *device, const char *dtype_name, d3sr_dtype *dtype)
{
    (void)device;
    return parse_dtype(dtype_name, dtype);
}

static PyObject *new_float32(int ndim, const npy_intp *dims)
{
    return PyArray_SimpleNew(ndim, (npy_intp *)dims, NPY_FLOAT32);
}

static PyObject *py_conv2d(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"x", "weight", "bias", "stride", "padding", "residual", "device", "dtype", NULL};
    PyObject *xo, *wo, *bo = Py_None, *ro = Py_None;
    int stride = 1, pad[4] = {0, 0, 0, 0};
    const char *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|Oi(iiii)Oss", keywords, &xo, &wo, &bo, &stride, &pad[0], &pad[1],
                                     &pad[2], &pad[3], &ro, &device, &dtype_name))
        return NULL;
    d3sr_dtype dtype;
    if (device_args(device, dtype_name, &dtype)) return NULL;
    PyArrayObject *x = float32_array(xo, "x", 4), *w = x ? float32_array(wo, "weight", 4) : NULL;
    PyArrayObject *b = w && bo != Py_None ? float32_array(bo, "bias", 1) : NULL;
    PyArrayObject *r = w && ro != Py_None ? float32_array(ro, "residual", 4) : NULL;
    PyObject *y = NULL;
    if (!w || (bo != Py_None && !b) || (ro != Py_None && !r)) goto done;
    npy_intp n = PyArray_DIM(x, 0), h = PyArray_DIM(x, 1), wd = PyArray_DIM(x, 2), cin = PyArray_DIM(x, 3);
    npy_intp cout = PyArray_DIM(w, 0), k = PyArray_DIM(w, 2);
    if (PyArray_DIM(w, 1) != cin || PyArray_DIM(w, 3) != k || (b && PyArray_DIM(b, 0) != cout) || stride < 1) {
        PyErr_SetString(PyExc_ValueError, "conv2d: weight must be [cout, cin, k, k], bias [cout], stride >= 1");
        goto done;
    }
    npy_intp ho = (h + pad[0] + pad[1] - k) / stride + 1, wo_ = (wd + pad[2] + pad[3] - k) / stride + 1;
    if (h + pad[0] + pad[1] < k || wd + pad[2] + pad[3] < k) {
        PyErr_SetString(PyExc_ValueError, "conv2d: the padded input is smaller than the kernel");
        goto done;
    }
    npy_intp dims[4] = {n, ho, wo_, cout};
    if (r && (PyArray_DIM(r, 0) != n || PyArray_DIM(r, 1) != ho || PyArray_DIM(r, 2) != wo_ || PyArray_DIM(r, 3) != cout)) {
        PyErr_SetString(PyExc_ValueError, "conv2d: residual must have the output's shape");
        goto done;
    }
    y = new_float32(4, dims);
    if (!y) goto done;
    d3sr_status status;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_single_conv2d(device, dtype, PyArray_DATA(x), (int)n, (int)h, (int)wd, (int)cin, PyArray_DATA(w),
                                b ? PyArray_DATA(b) : NULL, (int)cout, (int)k, (int)k, stride, pad,
                                r ? PyArray_DATA(r) : NULL, PyArray_DATA((PyArrayObject *)y));
    Py_END_ALLOW_THREADS
    if (status != D3SR_OK) {
        Py_CLEAR(y);
        raise_status(status);
    }
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(b);
    Py_XDECREF(r);
    return y;
}

static PyObject *py_linear(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"x", "weight", "bias", "device", "dtype", NULL};
    PyObject *xo, *wo, *bo = Py_None;
    const char *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|Oss", keywords, &xo, &wo, &bo, &device, &dtype_name)) return NULL;
    d3sr_dtype dtype;
    if (device_args(device, dtype_name, &dtype)) return NULL;
    PyArrayObject *x = float32_array(xo, "x", 2), *w = x ? float32_array(wo, "weight", 2) : NULL;
    PyArrayObject *b = w && bo != Py_None ? float32_array(bo, "bias", 1) : NULL;
    PyObject *y = NULL;
    if (!w || (bo != Py_None && !b)) goto done;
    npy_intp rows = PyArray_DIM(x, 0), in = PyArray_DIM(x, 1), out = PyArray_DIM(w, 0);
    if (PyArray_DIM(w, 1) != in || (b && PyArray_DIM(b, 0) != out)) {
        PyErr_SetString(PyExc_ValueError, "linear: weight must be [out, in] and bias [out]");
        goto done;
    }
    npy_intp dims[2] = {rows, out};
    y = new_float32(2, dims);
    if (!y) goto done;
    d3sr_status status;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_single_linear(device, dtype, PyArray_DATA(x), (int)rows, (int)in, PyArray_DATA(w),
                                b ? PyArray_DATA(b) : NULL, (int)out, PyArray_DATA((PyArrayObject *)y));
    Py_END_ALLOW_THREADS
    if (status != D3SR_OK) {
        Py_CLEAR(y);
        raise_status(status);
    }
done:
    Py_XDECREF(x);
    Py_XDECREF(w);
    Py_XDECREF(b);
    return y;
}

static PyObject *py_group_norm(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"x", "groups", "gamma", "beta", "eps", "silu", "device", "dtype", "core", "apply", NULL};
    PyObject *xo, *go, *bo, *core = Py_None, *apply_obj = Py_None;
    int groups, silu = 0;
    float eps;
    const char *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OiOOf|pssOO", keywords, &xo, &groups, &go, &bo, &eps, &silu, &device,
                                     &dtype_name, &core, &apply_obj))
        return NULL;
    d3sr_dtype dtype;
    if (device_args(device, dtype_name, &dtype)) return NULL;
    PyArrayObject *x = float32_array(xo, "x", 4), *g = x ? float32_array(go, "gamma", 1) : NULL;
    PyArrayObject *b = g ? float32_array(bo, "beta", 1) : NULL;
    PyObject *y = NULL;
    d3sr_norm_pool pool, *pooled = NULL;
    PyArrayObject *apply = NULL, *collected = NULL;
    if (!b) goto done;
    npy_intp c = PyArray_DIM(x, 3);
    if (PyArray_DIM(g, 0) != c || PyArray_DIM(b, 0) != c) {
        PyErr_SetString(PyExc_ValueError, "group_norm: gamma and beta must have one value per channel");
        goto done;
    }
    /* With core: one tile under a one-layer statistics pool, returning (y, collected). */
    if (core != Py_None) {
        if (groups < 1 || c % groups) {
            PyErr_Format(PyExc_ValueError, "group_norm: %d channels do not split into %d groups", (int)c, groups);
            goto done;
        }
        if (pool_args(core, apply_obj, (int)PyArray_DIM(x, 0), 1, groups, &pool, &apply, &collected)) goto done;
        pooled = &pool;
    }
    y = new_float32(4, PyArray_DIMS(x));
    if (!y) goto done;
    d3sr_status status;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_single_group_norm_pooled(device, dtype, PyArray_DATA(x), (int)PyArray_DIM(x, 0), (int)PyArray_DIM(x, 1),
                                           (int)PyArray_DIM(x, 2), (int)c, groups, PyArray_DATA(g), PyArray_DATA(b), eps,
                                           silu, pooled, PyArray_DATA((PyArrayObject *)y));
    Py_END_ALLOW_THREADS
    if (status != D3SR_OK) {
        Py_CLEAR(y);
        raise_status(status);
    } else if (collected) {
        y = Py_BuildValue("(NO)", y, (PyObject *)collected);
    }
done:
    Py_XDECREF(apply);
    Py_XDECREF(collected);
    Py_XDECREF(x);
    Py_XDECREF(g);
    Py_XDECREF(b);
    return y;
}

static PyObject *py_attention(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"q", "k", "v", "heads", "device", "dtype", NULL};
    PyObject *qo, *ko, *vo;
    int heads;
    const char *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOi|ss", keywords, &qo, &ko, &vo, &heads, &device, &dtype_name))
        return NULL;
    d3sr_dtype dtype;
    if (device_args(device, dtype_name, &dtype)) return NULL;
    PyArrayObject *q = float32_array(qo, "q", 3), *k = q ? float32_array(ko, "k", 3) : NULL;
    PyArrayObject *v = k ? float32_array(vo, "v", 3) : NULL;
    PyObject *y = NULL;
    if (!v) goto done;
    y = new_float32(3, PyArray_DIMS(q));
    if (!y) goto done;
    if (PyArray_DIM(k, 0) != PyArray_DIM(q, 0) || PyArray_DIM(v, 0) != PyArray_DIM(q, 0) ||
        PyArray_DIM(k, 2) != PyArray_DIM(q, 2) || PyArray_DIM(v, 2) != PyArray_DIM(q, 2) ||
        PyArray_DIM(v, 1) != PyArray_DIM(k, 1)) {
        PyErr_SetString(PyExc_ValueError, "attention: q [n, Lq, c], k and v [n, Lk, c] must agree");
        Py_CLEAR(y);
        goto done;
    }
    d3sr_status status;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_single_attention(device, dtype, PyArray_DATA(q), PyArray_DATA(k), PyArray_DATA(v),
                                       (int)PyArray_DIM(q, 0), (int)PyArray_DIM(q, 1), (int)PyArray_DIM(k, 1),
                                       (int)PyArray_DIM(q, 2), heads, PyArray_DATA((PyArrayObject *)y));
    Py_END_ALLOW_THREADS
    if (status != D3SR_OK) {
        Py_CLEAR(y);
        raise_status(status);
    }
done:
    Py_XDECREF(q);
    Py_XDECREF(k);
    Py_XDECREF(v);
    return y;
}

static PyObject *py_layer_norm(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"x", "gamma", "beta", "eps", "device", "dtype", NULL};
    PyObject *xo, *go, *bo;
    float eps;
    const char *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOf|ss", keywords, &xo, &go, &bo, &eps, &device, &dtype_name))
        return NULL;
    d3sr_dtype dtype;
    if (device_args(device, dtype_name, &dtype)) return NULL;
    PyArrayObject *x = float32_array(xo, "x", 2), *g = x ? float32_array(go, "gamma", 1) : NULL;
    PyArrayObject *b = g ? float32_array(bo, "beta", 1) : NULL;
    PyObject *y = NULL;
    if (!b) goto done;
    npy_intp c = PyArray_DIM(x, 1);
    if (PyArray_DIM(g, 0) != c || PyArray_DIM(b, 0) != c) {
        PyErr_SetString(PyExc_ValueError, "layer_norm: gamma and beta must have one value per channel");
        goto done;
    }
    y = new_float32(2, PyArray_DIMS(x));
    if (!y) goto done;
    d3sr_status status;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_single_layer_norm(device, dtype, PyArray_DATA(x), (int)PyArray_DIM(x, 0), (int)c, PyArray_DATA(g),
                                    PyArray_DATA(b), eps, PyArray_DATA((PyArrayObject *)y));
    Py_END_ALLOW_THREADS
    if (status != D3SR_OK) {
        Py_CLEAR(y);
        raise_status(status);
    }
done:
    Py_XDECREF(x);
    Py_XDECREF(g);
    Py_XDECREF(b);
    return y;
}

/* One weightless op on [n, h, w, c] arrays: kind is a d3sr_single_kind. */
static PyObject *py_simple_op(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"kind", "a", "b", "size", "device", "dtype", NULL};
    int kind, size[2] = {0, 0};
    PyObject *ao, *bo = Py_None;
    const char *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iO|O(ii)ss", keywords, &kind, &ao, &bo, &size[0], &size[1], &device,
                                     &dtype_name))
        return NULL;
    d3sr_dtype dtype;
    if (device_args(device, dtype_name, &dtype)) return NULL;
    PyArrayObject *a = float32_array(ao, "a", 4), *b = a && bo != Py_None ? float32_array(bo, "b", 4) : NULL;
    PyObject *y = NULL;
    if (!a || (bo != Py_None && !b)) goto done;
    int sa[4], sb[4] = {0, 0, 0, 0}, so[4];
    for (int i = 0; i < 4; i++) {
        sa[i] = (int)PyArray_DIM(a, i);
        if (b) sb[i] = (int)PyArray_DIM(b, i);
    }
    d3sr_status status = d3sr_single_shape((d3sr_single_kind)kind, sa, sb, size, so);
    if (status != D3SR_OK) {
        raise_status(status);
        goto done;
    }
    npy_intp dims[4] = {so[0], so[1], so[2], so[3]};
    y = new_float32(4, dims);
    if (!y) goto done;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_single_run(device, dtype, (d3sr_single_kind)kind, PyArray_DATA(a), sa, b ? PyArray_DATA(b) : NULL, sb,
                             size, PyArray_DATA((PyArrayObject *)y));
    Py_END_ALLOW_THREADS
    if (status != D3SR_OK) {
        Py_CLEAR(y);
        raise_status(status);
    }
done:
    Py_XDECREF(a);
    Py_XDECREF(b);
    return y;
}

/* ---- module ------------------------------------------------------------ */

static PyObject *py_set_num_threads(PyObject *module, PyObject *arg)
{
    (void)module;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "n must be >= 0 (0: all cores), not %ld", n);
    d3sr_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(d3sr_get_num_threads());
}

static PyObject *py_cuda_status(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    const char *why;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = d3sr_device_cuda_available(&why);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(Os)", ok ? Py_True : Py_False, why);
}

/* color_fix(sr, ref, kind): sr [n, h, w, c] float32, C-contiguous and writable,
 * corrected in place; kind 1 adain, 2 wavelet. */
static PyObject *py_color_fix(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *sro, *refo;
    int kind;
    if (!PyArg_ParseTuple(args, "OOi", &sro, &refo, &kind)) return NULL;
    if (!PyArray_Check(sro) || PyArray_TYPE((PyArrayObject *)sro) != NPY_FLOAT32 || PyArray_NDIM((PyArrayObject *)sro) != 4 ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)sro) || !PyArray_ISWRITEABLE((PyArrayObject *)sro)) {
        PyErr_SetString(PyExc_TypeError, "color_fix: sr must be a writable C-contiguous float32 array [n, h, w, c]");
        return NULL;
    }
    PyArrayObject *sr = (PyArrayObject *)sro, *ref = float32_array(refo, "ref", 4);
    if (!ref) return NULL;
    for (int i = 0; i < 4; i++)
        if (PyArray_DIM(ref, i) != PyArray_DIM(sr, i)) {
            Py_DECREF(ref);
            PyErr_SetString(PyExc_ValueError, "color_fix: ref must have the shape of sr");
            return NULL;
        }
    d3sr_status status;
    Py_BEGIN_ALLOW_THREADS
    status = d3sr_color_fix(PyArray_DATA(sr), PyArray_DATA(ref), (int)PyArray_DIM(sr, 0), (int)PyArray_DIM(sr, 1),
                            (int)PyArray_DIM(sr, 2), (int)PyArray_DIM(sr, 3), (d3sr_color_fix_kind)kind);
    Py_END_ALLOW_THREADS
    Py_DECREF(ref);
    if (status != D3SR_OK) return raise_status(status);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"vae_create", (PyCFunction)(void (*)(void))py_vae_create, METH_VARARGS | METH_KEYWORDS,
     "vae_create(config: dict, parts: int, device='cpu', dtype='fp32') -> Model"},
    {"head_create", (PyCFunction)(void (*)(void))py_head_create, METH_VARARGS | METH_KEYWORDS,
     "head_create(in_channels, hidden, activation, negative_slope=0.2, device='cpu', dtype='fp32') -> Model"},
    {"unet_create", (PyCFunction)(void (*)(void))py_unet_create, METH_VARARGS | METH_KEYWORDS,
     "unet_create(config: dict, trunk_only=False, device='cpu', dtype='fp32') -> Model"},
    {"conv2d", (PyCFunction)(void (*)(void))py_conv2d, METH_VARARGS | METH_KEYWORDS,
     "conv2d(x [n,h,w,cin], weight [cout,cin,k,k], bias=None, stride=1, padding=(t,b,l,r), residual=None)"},
    {"linear", (PyCFunction)(void (*)(void))py_linear, METH_VARARGS | METH_KEYWORDS, "linear(x [rows,in], weight [out,in], bias=None)"},
    {"color_fix", (PyCFunction)py_color_fix, METH_VARARGS,
     "color_fix(sr [n,h,w,c] float32, ref, kind): StableSR's colour fix in place (1 adain, 2 wavelet)."},
    {"group_norm", (PyCFunction)(void (*)(void))py_group_norm, METH_VARARGS | METH_KEYWORDS,
     "group_norm(x [n,h,w,c], groups, gamma, beta, eps, silu=False)"},
    {"attention", (PyCFunction)(void (*)(void))py_attention, METH_VARARGS | METH_KEYWORDS,
     "attention(q [n,Lq,c], k [n,Lk,c], v [n,Lk,c], heads)"},
    {"layer_norm", (PyCFunction)(void (*)(void))py_layer_norm, METH_VARARGS | METH_KEYWORDS,
     "layer_norm(x [rows,c], gamma, beta, eps)"},
    {"simple_op", (PyCFunction)(void (*)(void))py_simple_op, METH_VARARGS | METH_KEYWORDS,
     "simple_op(kind, a [n,h,w,c], b=None, size=(h, w)): a weightless op (kinds: OP_*)"},
    {"set_num_threads", py_set_num_threads, METH_O, "Threads of the CPU kernels (0: all cores)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Threads of the CPU kernels."},
    {"cuda_status", py_cuda_status, METH_NOARGS, "(available, why not)"},
    {NULL, NULL, 0, NULL},
};

/* Method tables of the other binding files (binding.h), added to the module. */
static PyMethodDef *const binding_extensions[] = {metrics_methods, NULL};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "d3sr._core", "The C core of d3sr; use the d3sr package instead.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    if (PyType_Ready(&ModelType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    for (int i = 0; binding_extensions[i]; i++)
        if (PyModule_AddFunctions(m, binding_extensions[i]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0 ||
        PyModule_AddIntConstant(m, "VAE_ENCODER", D3SR_VAE_ENCODER) < 0 ||
        PyModule_AddIntConstant(m, "VAE_DECODER", D3SR_VAE_DECODER) < 0 ||
        PyModule_AddIntConstant(m, "OP_SILU", D3SR_SINGLE_SILU) < 0 ||
        PyModule_AddIntConstant(m, "OP_RELU", D3SR_SINGLE_RELU) < 0 ||
        PyModule_AddIntConstant(m, "OP_LEAKY_RELU", D3SR_SINGLE_LEAKY_RELU) < 0 ||
        PyModule_AddIntConstant(m, "OP_GELU", D3SR_SINGLE_GELU) < 0 ||
        PyModule_AddIntConstant(m, "OP_GEGLU", D3SR_SINGLE_GEGLU) < 0 ||
        PyModule_AddIntConstant(m, "OP_ADD", D3SR_SINGLE_ADD) < 0 ||
        PyModule_AddIntConstant(m, "OP_ADD_CHANNEL_OFFSET", D3SR_SINGLE_ADD_CHANNEL_OFFSET) < 0 ||
        PyModule_AddIntConstant(m, "OP_CONCAT", D3SR_SINGLE_CONCAT) < 0 ||
        PyModule_AddIntConstant(m, "OP_UPSAMPLE_NEAREST", D3SR_SINGLE_UPSAMPLE_NEAREST) < 0 ||
        PyModule_AddIntConstant(m, "OP_MAX_POOL", D3SR_SINGLE_MAX_POOL) < 0 ||
        PyModule_AddIntConstant(m, "OP_L2_POOL", D3SR_SINGLE_L2_POOL) < 0 ||
        PyModule_AddIntConstant(m, "OP_PAIR_MOMENTS", D3SR_SINGLE_PAIR_MOMENTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
