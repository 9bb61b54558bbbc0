/* module.c: d3sr._core, the binding between NumPy and the C core: the
 * module, the Model type (VAE, UNet, head) and the argument helpers the
 * other files of this folder share (binding.h).
 *
 * Only this folder includes Python.h and the NumPy C API, and it includes
 * only the core's public headers. It checks and names each argument,
 * borrows input arrays for the length of a call (PyArray_FROM_OTF with
 * NPY_ARRAY_IN_ARRAY, never modified), allocates
 * outputs with the GIL held, releases the GIL around every call into the
 * core and turns a failed status into the matching exception with the
 * core's message. No arithmetic on data happens here.
 */
#define D3SR_BINDING_MAIN
#include "binding.h"

#include <math.h>
#include <pythread.h>


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

PyArrayObject *float32_array(PyObject *obj, const char *arg, int ndim, const char *layout)
{
    char expected[96];
    if (layout) snprintf(expected, sizeof expected, "shape %s", layout);
    else snprintf(expected, sizeof expected, "%d dimensions", ndim);
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of %s, not %s", arg, expected, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        PyObject *name = PyObject_Str((PyObject *)PyArray_DESCR(a));
        PyErr_Format(PyExc_TypeError, "%s must have dtype float32, not %S (%s)", arg, name, expected);
        Py_XDECREF(name);
        return NULL;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyObject *shape = PyObject_GetAttrString(obj, "shape");
        PyErr_Format(PyExc_ValueError, "%s must have %s, got %S", arg, expected, shape ? shape : Py_None);
        Py_XDECREF(shape);
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
    PyArrayObject *x = encode ? float32_array(obj, "x", 4, "[N, C, H, W]")
                              : float32_array(obj, "z", 4, "[N, latent_channels, h, w]");
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

/* vae_norm_layers(encode) -> (GroupNorm layers of the encoder or decoder, groups). */
static PyObject *model_vae_norm_layers(ModelObject *self, PyObject *args)
{
    int encode, layers, groups;
    if (!PyArg_ParseTuple(args, "p", &encode)) return NULL;
    d3sr_status status = d3sr_vae_norm_layers(self->model, encode, &layers, &groups);
    if (status != D3SR_OK) return raise_status(status);
    return Py_BuildValue("(ii)", layers, groups);
}

/* vae_run_tiled(x, tiles [count, 8] int, encode, park_half, statistics=None)
 *   -> (output, parked bytes, statistics used [N, layers, groups, 2] float64). */
static PyObject *model_vae_run_tiled(ModelObject *self, PyObject *args)
{
    PyObject *obj, *tiles_obj, *stats_obj = Py_None;
    int encode, park_half;
    if (!PyArg_ParseTuple(args, "OOpp|O", &obj, &tiles_obj, &encode, &park_half, &stats_obj)) return NULL;
    int layers, groups;
    d3sr_status status = d3sr_vae_norm_layers(self->model, encode, &layers, &groups);
    if (status != D3SR_OK) return raise_status(status);
    PyArrayObject *x = encode ? float32_array(obj, "x", 4, "[N, C, H, W]")
                              : float32_array(obj, "z", 4, "[N, latent_channels, h, w]");
    if (!x) return NULL;
    PyArrayObject *tiles = NULL, *given = NULL, *pooled = NULL, *y = NULL;
    tiles = (PyArrayObject *)PyArray_FROM_OTF(tiles_obj, NPY_INT32, NPY_ARRAY_IN_ARRAY);
    if (!tiles) goto done;
    if (PyArray_NDIM(tiles) != 2 || PyArray_DIM(tiles, 1) != 8 || PyArray_DIM(tiles, 0) < 1) {
        PyErr_SetString(PyExc_ValueError, "tiles must have shape [count, 8]: window y0, y1, x0, x1, core y0, y1, x0, x1");
        goto done;
    }
    const npy_intp stats_dims[4] = {PyArray_DIM(x, 0), layers, groups, 2};
    if (stats_obj != Py_None) {
        given = (PyArrayObject *)PyArray_FROM_OTF(stats_obj, NPY_FLOAT64, NPY_ARRAY_IN_ARRAY);
        if (!given) goto done;
        if (PyArray_NDIM(given) != 4 || memcmp(PyArray_DIMS(given), stats_dims, sizeof stats_dims) != 0) {
            PyErr_Format(PyExc_ValueError, "statistics must have shape [%zd, %d, %d, 2] (samples, GroupNorm layers, "
                         "groups, mean and variance)", (Py_ssize_t)stats_dims[0], layers, groups);
            goto done;
        }
    }
    int64_t in[4], out[4];
    for (int i = 0; i < 4; i++) in[i] = PyArray_DIM(x, i);
    status = d3sr_vae_output_shape(self->model, encode, in, out);
    if (status != D3SR_OK) {
        raise_status(status);
        goto done;
    }
    npy_intp dims[4] = {(npy_intp)out[0], (npy_intp)out[1], (npy_intp)out[2], (npy_intp)out[3]};
    y = (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32);
    pooled = (PyArrayObject *)PyArray_SimpleNew(4, (npy_intp *)stats_dims, NPY_FLOAT64);
    if (!y || !pooled) goto done;
    d3sr_vae_tiling how = {.statistics = given ? PyArray_DATA(given) : NULL, .park_half = park_half,
                           .pooled = PyArray_DATA(pooled)};
    const float *xd = PyArray_DATA(x);
    const int (*td)[8] = (const int (*)[8])PyArray_DATA(tiles);
    int count = (int)PyArray_DIM(tiles, 0);
    float *yd = PyArray_DATA(y);
    RUN_LOCKED(self, d3sr_vae_run_tiled(self->model, encode, xd, (int)in[0], (int)in[2], (int)in[3], td, count, &how, yd));
    if (status != D3SR_OK) {
        raise_status(status);
        goto done;
    }
    Py_DECREF(x);
    Py_DECREF(tiles);
    Py_XDECREF(given);
    return Py_BuildValue("(NnN)", (PyObject *)y, (Py_ssize_t)how.parked_bytes, (PyObject *)pooled);
done:
    Py_DECREF(x);
    Py_XDECREF(tiles);
    Py_XDECREF(given);
    Py_XDECREF(pooled);
    Py_XDECREF(y);
    return NULL;
}

/* vae_plan_tiled((N, H, W), tiles [count, 8] int, encode, park_half)
 *   -> (window bytes, parked bytes): what vae_run_tiled with pooled statistics
 *   would hold (see d3sr_vae_tiling's plan_only); nothing runs. */
static PyObject *model_vae_plan_tiled(ModelObject *self, PyObject *args)
{
    PyObject *tiles_obj;
    Py_ssize_t n, h, w;
    int encode, park_half;
    if (!PyArg_ParseTuple(args, "(nnn)Opp", &n, &h, &w, &tiles_obj, &encode, &park_half)) return NULL;
    if (n < 1 || h < 1 || w < 1 || n > INT32_MAX || h > INT32_MAX || w > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "the input's samples, height and width must be positive, got %zd, %zd, %zd", n, h, w);
        return NULL;
    }
    PyArrayObject *tiles = (PyArrayObject *)PyArray_FROM_OTF(tiles_obj, NPY_INT32, NPY_ARRAY_IN_ARRAY);
    if (!tiles) return NULL;
    if (PyArray_NDIM(tiles) != 2 || PyArray_DIM(tiles, 1) != 8 || PyArray_DIM(tiles, 0) < 1) {
        Py_DECREF(tiles);
        PyErr_SetString(PyExc_ValueError, "tiles must have shape [count, 8]: window y0, y1, x0, x1, core y0, y1, x0, x1");
        return NULL;
    }
    d3sr_vae_tiling how = {.park_half = park_half, .plan_only = 1};
    const int (*td)[8] = (const int (*)[8])PyArray_DATA(tiles);
    int count = (int)PyArray_DIM(tiles, 0);
    d3sr_status status;
    RUN_LOCKED(self, d3sr_vae_run_tiled(self->model, encode, NULL, (int)n, (int)h, (int)w, td, count, &how, NULL));
    Py_DECREF(tiles);
    if (status != D3SR_OK) return raise_status(status);
    return Py_BuildValue("(nn)", (Py_ssize_t)how.window_bytes, (Py_ssize_t)how.parked_bytes);
}

static PyObject *model_unet_forward(ModelObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"sample", "timesteps", "encoder_hidden_states", "text_embeds", "time_ids", NULL};
    PyObject *so, *to, *co, *eo = Py_None, *io = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OO", keywords, &so, &to, &co, &eo, &io)) return NULL;
    PyArrayObject *s = float32_array(so, "sample", 4, "[N, C, h, w]");
    PyArrayObject *t = s ? float32_array(to, "timesteps", 1, "[N]") : NULL;
    PyArrayObject *c = t ? float32_array(co, "encoder_hidden_states", 3, "[N, L, cross_attention_dim]") : NULL;
    PyArrayObject *e = c && eo != Py_None ? float32_array(eo, "text_embeds", 2, "[N, features]") : NULL;
    PyArrayObject *ids = c && io != Py_None ? float32_array(io, "time_ids", 2, "[N, features]") : NULL;
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
    PyArrayObject *x = float32_array(obj, "features", 4, "[N, C, h, w]");
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
    {"vae_norm_layers", (PyCFunction)model_vae_norm_layers, METH_VARARGS,
     "vae_norm_layers(encode) -> (GroupNorm layers, groups): the sizes of a tiled call's statistics."},
    {"vae_plan_tiled", (PyCFunction)model_vae_plan_tiled, METH_VARARGS,
     "vae_plan_tiled((N, H, W), tiles [count, 8], encode, park_half) -> (window bytes, most bytes parked), nothing run."},
    {"vae_run_tiled", (PyCFunction)model_vae_run_tiled, METH_VARARGS,
     "vae_run_tiled(x, tiles [count, 8], encode, park_half, statistics=None) -> (output, most bytes parked, statistics "
     "used): pooled GroupNorm in one pass, or the given statistics."},
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
    char what[96];
    snprintf(what, sizeof what, "config field '%s'", key);
    return int_in_range(value, what, INT_MIN, INT_MAX, out);
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
    if (!isfinite((float)v)) {
        PyErr_Format(PyExc_ValueError, "config field '%s' = %R is not a finite float32 number", key, value);
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
        char what[96];
        snprintf(what, sizeof what, "config field '%s'[%zd]", key, i);
        if (int_in_range(PyList_GET_ITEM(value, i), what, INT_MIN, INT_MAX, &out[i])) return -1;
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
    PyObject *in_obj, *hidden_obj, *activation_obj;
    const char *device = "cpu", *dtype_name = "fp32";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|fss", keywords, &in_obj, &hidden_obj, &activation_obj,
                                     &cfg.negative_slope, &device, &dtype_name))
        return NULL;
    if (int_in_range(in_obj, "in_channels", 1, D3SR_MAX_CHANNELS, &cfg.in_channels) ||
        int_in_range(hidden_obj, "hidden", 1, D3SR_MAX_CHANNELS, &cfg.hidden) ||
        int_in_range(activation_obj, "activation", D3SR_HEAD_SILU, D3SR_HEAD_GELU, &activation))
        return NULL;
    cfg.activation = (d3sr_head_activation)activation;
    d3sr_dtype dtype;
    if (parse_dtype(dtype_name, &dtype)) return NULL;
    d3sr_model *model;
    d3sr_status status = d3sr_head_create(&cfg, device, dtype, &model);
    if (status != D3SR_OK) return raise_status(status);
    return wrap_model(model);
}

/* ---- module ------------------------------------------------------------ */

static PyObject *py_set_num_threads(PyObject *module, PyObject *arg)
{
    (void)module;
    int n;
    if (int_in_range(arg, "the thread count n (0: all cores)", 0, d3sr_max_threads(), &n)) return NULL;
    d3sr_set_num_threads(n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(d3sr_get_num_threads());
}

static PyObject *py_max_threads(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(d3sr_max_threads());
}

static PyObject *py_cuda_status(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    const char *why;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = d3sr_cuda_available(&why);
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
    PyArrayObject *sr = (PyArrayObject *)sro, *ref = float32_array(refo, "ref", 4, "[n, h, w, c]");
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
    {"color_fix", (PyCFunction)py_color_fix, METH_VARARGS,
     "color_fix(sr [n,h,w,c] float32, ref, kind): StableSR's colour fix in place (1 adain, 2 wavelet)."},
    {"set_num_threads", py_set_num_threads, METH_O, "Threads of the CPU kernels (0: all cores)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Threads of the CPU kernels."},
    {"max_threads", py_max_threads, METH_NOARGS, "The most threads set_num_threads takes."},
    {"cuda_status", py_cuda_status, METH_NOARGS, "(available, why not)"},
    {NULL, NULL, 0, NULL},
};

/* Method tables of the other binding files (binding.h), added to the module. */
static PyMethodDef *const binding_extensions[] = {metrics_methods, single_op_methods, NULL};

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
        PyModule_AddIntConstant(m, "VAE_DECODER", D3SR_VAE_DECODER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
