"""Every op of the core on every backend against a float64 NumPy reference.

One suite for all backends (ggml's test-backend-ops is the model): each test
takes a `backend` (device, dtype) — CPU fp32 always, CUDA fp32/fp16/bf16
where a GPU is present (skipped, naming the reason, elsewhere) — and runs
the op through d3sr._core.op, the one entry point over the core's op table.
The reference is fed the inputs as the device stores them (rounded to
fp16/bf16), so a check measures the kernel, not the input rounding. Shapes
are awkward on purpose and cover each path of each kernel: Winograd,
im2col and direct convolutions on the CPU; cuDNN, its direct fallback and
the GEMM path on CUDA; the attention kernels for each head width.
"""
import numpy as np
import pytest

from d3sr._native import _core
from conftest import assert_close

AVAILABLE, WHY = _core.cuda_status()
needs_gpu = pytest.mark.skipif(not AVAILABLE, reason=f"device 'cuda' is unavailable: {WHY}")

BACKENDS = [pytest.param(("cpu", "fp32"), id="cpu-fp32")] + [
    pytest.param(("cuda", dtype), id=f"cuda-{dtype}", marks=needs_gpu) for dtype in ("fp32", "fp16", "bf16")]

# float32 accumulation against float64; on CUDA fp16 and bf16 round their
# output (and attention its probabilities) once: 2^-11 and 2^-8 relative at most.
TOL = {("cpu", "fp32"): 2e-6, ("cuda", "fp32"): 1e-5, ("cuda", "fp16"): 3e-3, ("cuda", "bf16"): 1e-2}


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def run(backend, name, *args, **kwargs):
    device, dtype = backend
    return _core.op(name, *args, device=device, dtype=dtype, **kwargs)


def stored(x, dtype: str):
    """x as the device holds it in dtype (round to nearest even), back in float32."""
    if x is None or dtype == "fp32":
        return x
    x = np.ascontiguousarray(x, np.float32)
    if dtype == "fp16":
        return x.astype(np.float16).astype(np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- the entry point ------------------------------------------------------

def test_the_table_lists_every_op_with_its_arguments():
    table = {name: (arrays, scalars) for name, arrays, scalars, _ in _core.ops()}
    assert table["conv2d"] == ([("x", 4, False), ("weight", 4, False), ("bias", 1, True), ("residual", 4, True)],
                               [("stride", 1), ("padding", 4)])
    assert {"linear", "group_norm", "layer_norm", "attention", "silu", "geglu", "upsample_nearest", "max_pool",
            "l2_pool", "pair_moments", "lpips_distance"} <= set(table)


def test_arguments_are_named_in_errors():
    x = np.zeros((1, 3, 3, 2), np.float32)
    with pytest.raises(TypeError, match="float32"):
        _core.op("conv2d", np.zeros((1, 3, 3, 2)), np.zeros((1, 2, 1, 1), np.float32))
    with pytest.raises(ValueError, match="no op named 'conv3d'"):
        _core.op("conv3d", x)
    with pytest.raises(ValueError, match="weight must be"):
        _core.op("conv2d", x, np.zeros((1, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match="weight is required"):
        _core.op("conv2d", x)
    with pytest.raises(TypeError, match="heads is required"):
        _core.op("attention", x[0], x[0], x[0])
    with pytest.raises(TypeError, match="padding must be a tuple of 4"):
        _core.op("conv2d", x, np.zeros((1, 2, 1, 1), np.float32), padding=(1, 1))
    with pytest.raises(TypeError, match="unknown keyword"):
        _core.op("silu", x, kernel=3)
    with pytest.raises(TypeError, match="given twice"):
        _core.op("silu", x, a=x)
    with pytest.raises(ValueError, match="out of range"):
        _core.op("conv2d", x, np.zeros((1, 2, 1, 1), np.float32), stride=2 ** 32 + 1)
    with pytest.raises(ValueError, match="dtype must be"):
        _core.op("silu", x, dtype="fp8")


def test_inputs_are_not_modified():
    rng = np.random.default_rng(0)
    a, b = rand(rng, 2, 3, 4, 5), rand(rng, 2, 3, 4, 5)
    copies = a.copy(), b.copy()
    _core.op("add", a, b)
    np.testing.assert_array_equal(a, copies[0])
    np.testing.assert_array_equal(b, copies[1])


# ---- convolution ------------------------------------------------------------

def conv2d_ref(x, w, b, stride, pad):
    """x [n, h, w, cin], w [cout, cin, k, k], pad (top, bottom, left, right) -> [n, ho, wo, cout]."""
    x = np.pad(x.astype(np.float64), ((0, 0), (pad[0], pad[1]), (pad[2], pad[3]), (0, 0)))
    n, hp, wp, _ = x.shape
    cout, _, k, _ = w.shape
    ho, wo = (hp - k) // stride + 1, (wp - k) // stride + 1
    out = np.zeros((n, ho, wo, cout))
    for ky in range(k):
        for kx in range(k):
            patch = x[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride, :]
            out += patch @ w[:, :, ky, kx].astype(np.float64).T
    return out + (0 if b is None else b.astype(np.float64))


CONV_CASES = [
    # n, h, w, cin, cout, k, stride, pad
    (1, 7, 5, 3, 5, 3, 1, (1, 1, 1, 1)),
    (2, 9, 11, 13, 7, 3, 2, (0, 1, 0, 1)),  # the VAE's downsample padding
    (1, 1, 1, 6, 3, 1, 1, (0, 0, 0, 0)),     # 1x1 spatial, pointwise
    (3, 5, 6, 10, 17, 1, 1, (0, 0, 0, 0)),
    (1, 4, 3, 5, 4, 3, 1, (2, 0, 1, 2)),     # asymmetric padding
    (1, 33, 40, 9, 12, 3, 1, (1, 1, 1, 1)),  # many tiles
    (2, 6, 6, 4, 4, 5, 3, (2, 2, 2, 2)),
    (1, 1, 1, 7, 2, 3, 1, (1, 1, 1, 1)),     # 1x1 input, 3x3 kernel
    (2, 40, 38, 64, 72, 3, 1, (1, 1, 1, 1)),  # Winograd over several chunks of tiles
    (1, 6, 9, 5, 3, 3, 1, (0, 0, 0, 0)),     # Winograd without padding, odd output
    (1, 16, 16, 64, 64, 3, 2, (0, 1, 0, 1)),  # the VAE downsample, vectorised padding on CUDA
    (2, 32, 24, 32, 48, 3, 1, (1, 1, 1, 1)),
    (1, 20, 12, 8, 16, 1, 1, (0, 0, 0, 0)),   # 1x1: the GEMM path on CUDA
]


@pytest.mark.parametrize("n,h,w,cin,cout,k,stride,pad", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d(backend, n, h, w, cin, cout, k, stride, pad, bias):
    dtype = backend[1]
    rng = np.random.default_rng(n * 1000 + h * 10 + cin)
    x, wt = rand(rng, n, h, w, cin), rand(rng, cout, cin, k, k)
    b = rand(rng, cout) if bias else None
    expected = conv2d_ref(stored(x, dtype), stored(wt, dtype), stored(b, dtype), stride, pad)
    out = run(backend, "conv2d", x, wt, b, stride=stride, padding=pad)
    assert_close(out, expected, TOL[backend], f"conv2d {backend}")


@pytest.mark.parametrize("k", [1, 3])
def test_conv2d_residual_is_added(backend, k):
    dtype = backend[1]
    rng = np.random.default_rng(5)
    x, wt, b = rand(rng, 2, 6, 5, 8), rand(rng, 16, 8, k, k), rand(rng, 16)
    pad = (k // 2,) * 4
    res = rand(rng, 2, 6, 5, 16)
    expected = conv2d_ref(stored(x, dtype), stored(wt, dtype), stored(b, dtype), 1, pad) + stored(res, dtype)
    out = run(backend, "conv2d", x, wt, b, res, padding=pad)
    assert_close(out, expected, TOL[backend], f"conv2d + residual {backend}")


def test_conv2d_many_threads_same_result():
    rng = np.random.default_rng(6)
    x, wt = rand(rng, 1, 64, 48, 16), rand(rng, 24, 16, 3, 3)
    _core.set_num_threads(1)
    one = _core.op("conv2d", x, wt, padding=(1, 1, 1, 1))
    _core.set_num_threads(0)
    assert_close(_core.op("conv2d", x, wt, padding=(1, 1, 1, 1)), one, 1e-6, "threads")


@needs_gpu
@pytest.mark.parametrize("env", [{"D3SR_CUDA_CONV": "direct"}, {"D3SR_CUDNN_SEARCH": "1"}], ids=["direct", "search"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_conv2d_other_cuda_paths(monkeypatch, env, dtype):
    """The direct kernel (cuDNN's fallback) and timed algorithm choice compute the same."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    rng = np.random.default_rng(7)
    for n, h, w, cin, cout, k, stride, pad in [(2, 9, 11, 16, 8, 3, 2, (0, 1, 0, 1)), (1, 12, 10, 24, 16, 3, 1, (1, 1, 1, 1))]:
        x, wt, b = rand(rng, n, h, w, cin), rand(rng, cout, cin, k, k), rand(rng, cout)
        expected = conv2d_ref(stored(x, dtype), stored(wt, dtype), stored(b, dtype), stride, pad)
        out = _core.op("conv2d", x, wt, b, stride=stride, padding=pad, device="cuda", dtype=dtype)
        assert_close(out, expected, TOL["cuda", dtype], f"conv2d {env} {dtype}")


# ---- linear -----------------------------------------------------------------

@pytest.mark.parametrize("rows,fin,fout", [(1, 1, 1), (5, 13, 7), (300, 40, 33), (77, 1024, 320), (2, 1280, 1280),
                                           (4096, 320, 1280), (64, 640, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(backend, rows, fin, fout, bias):
    dtype = backend[1]
    rng = np.random.default_rng(rows + fin)
    x, wt = rand(rng, rows, fin), rand(rng, fout, fin)
    b = rand(rng, fout) if bias else None
    expected = stored(x, dtype).astype(np.float64) @ stored(wt, dtype).astype(np.float64).T
    expected = expected + (0 if b is None else stored(b, dtype))
    assert_close(run(backend, "linear", x, wt, b), expected, TOL[backend], f"linear {backend}")


# ---- normalisation ----------------------------------------------------------

def group_norm_ref(x, groups, gamma, beta, eps, silu):
    n, h, w, c = x.shape
    xg = x.astype(np.float64).reshape(n, h * w, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = xg.var(axis=(1, 3), keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(n, h, w, c) * gamma + beta
    return y / (1 + np.exp(-y)) if silu else y


@pytest.mark.parametrize("n,h,w,c,groups", [
    (1, 5, 7, 12, 4), (2, 3, 3, 6, 1), (1, 4, 4, 10, 10), (1, 1, 1, 32, 8), (3, 9, 2, 15, 5), (1, 40, 30, 64, 32),
    (1, 64, 64, 128, 32),  # 4 channels a group: the VAE's top level
    (2, 16, 16, 320, 32),  # 10 a group: vectors of 2 on CUDA
    (1, 8, 8, 2560, 32),   # more channel vectors than CUDA threads
    (1, 3, 3, 4100, 4),    # odd groups of 1025 channels: CUDA's per-group kernel
])
@pytest.mark.parametrize("silu", [False, True])
def test_group_norm(backend, n, h, w, c, groups, silu):
    dtype = backend[1]
    rng = np.random.default_rng(c * 7 + groups)
    x = rand(rng, n, h, w, c) * 3 + 5  # a large mean: the variance must not cancel away
    gamma, beta = rand(rng, c), rand(rng, c)
    out = run(backend, "group_norm", x, gamma, beta, groups=groups, eps=1e-6, silu=silu)
    xs, gs, bs = stored(x, dtype), stored(gamma, dtype), stored(beta, dtype)
    if h * w * (c // groups) == 1:  # one value per group: the output is beta (PyTorch agrees)
        expected = np.broadcast_to(bs, x.shape).astype(np.float64)
        expected = expected / (1 + np.exp(-expected)) if silu else expected
    else:
        expected = group_norm_ref(xs, groups, gs, bs, 1e-6, silu)
    assert_close(out, expected, TOL[backend], f"group_norm {backend}")


def test_group_norm_rejects_bad_groups():
    x = np.zeros((1, 2, 2, 6), np.float32)
    with pytest.raises(ValueError, match="groups"):
        _core.op("group_norm", x, np.ones(6, np.float32), np.zeros(6, np.float32), groups=4, eps=1e-6)


@pytest.mark.parametrize("rows,c", [(1, 1), (7, 5), (77, 320), (300, 64), (4096, 320), (5, 1280)])
def test_layer_norm(backend, rows, c):
    dtype = backend[1]
    rng = np.random.default_rng(rows + c)
    x = rand(rng, rows, c) * 2 + 3
    gamma, beta = rand(rng, c), rand(rng, c)
    xd = stored(x, dtype).astype(np.float64)
    expected = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5) * stored(gamma, dtype) \
        + stored(beta, dtype)
    assert_close(run(backend, "layer_norm", x, gamma, beta, eps=1e-5), expected, TOL[backend], f"layer_norm {backend}")


# ---- attention --------------------------------------------------------------

def attention_ref(q, k, v, heads):
    n, lq, width = q.shape
    d = width // heads
    out = np.zeros(q.shape)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        s = q[:, :, sl].astype(np.float64) @ k[:, :, sl].astype(np.float64).transpose(0, 2, 1) / np.sqrt(d)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        out[:, :, sl] = (s / s.sum(axis=-1, keepdims=True)) @ v[:, :, sl].astype(np.float64)
    return out


ATTENTION_CASES = [
    # n, lq, lk, width, heads: d = width / heads
    (1, 1, 1, 8, 1), (2, 77, 13, 24, 3), (1, 130, 130, 40, 5), (1, 65, 77, 64, 1), (3, 7, 200, 12, 2),  # small d
    (2, 77, 77, 640, 10), (1, 300, 200, 64, 1), (1, 128, 64, 128, 2), (2, 129, 7, 320, 5),  # d = 64
    (1, 100, 100, 128, 1),                   # d = 128, the widest float32 flash kernel on CUDA
    (1, 150, 130, 256, 1), (2, 70, 33, 320, 2),  # d > 128: query blocks through cuBLAS on CUDA
]


@pytest.mark.parametrize("n,lq,lk,width,heads", ATTENTION_CASES)
def test_attention(backend, n, lq, lk, width, heads):
    dtype = backend[1]
    rng = np.random.default_rng(lq + lk + width)
    q, k, v = rand(rng, n, lq, width) * 2, rand(rng, n, lk, width) * 2, rand(rng, n, lk, width)
    expected = attention_ref(stored(q, dtype), stored(k, dtype), stored(v, dtype), heads)
    out = run(backend, "attention", q, k, v, heads=heads)
    assert_close(out, expected, TOL[backend], f"attention {backend} d={width // heads}")


def test_attention_rejects_mismatch():
    q = np.zeros((1, 4, 8), np.float32)
    with pytest.raises(ValueError, match="must agree"):
        _core.op("attention", q, np.zeros((1, 4, 6), np.float32), np.zeros((1, 4, 6), np.float32), heads=2)
    with pytest.raises(ValueError, match="heads"):
        _core.op("attention", q, q, q, heads=3)


@needs_gpu
@pytest.mark.parametrize("path", ["generic", "chunked"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_attention_forced_cuda_paths(monkeypatch, path, dtype):
    """Each CUDA path computes every shape it is forced onto (the generic one up to d = 128)."""
    monkeypatch.setenv("D3SR_CUDA_ATTENTION", path)
    rng = np.random.default_rng(3)
    for n, lq, lk, width, heads in [(2, 77, 77, 640, 10), (1, 65, 77, 64, 1), (2, 77, 13, 24, 3)]:
        q, k, v = rand(rng, n, lq, width) * 2, rand(rng, n, lk, width) * 2, rand(rng, n, lk, width)
        expected = attention_ref(stored(q, dtype), stored(k, dtype), stored(v, dtype), heads)
        out = _core.op("attention", q, k, v, heads=heads, device="cuda", dtype=dtype)
        assert_close(out, expected, TOL["cuda", dtype], f"attention {path} {dtype}")


# ---- resizing, activations, elementwise ------------------------------------

def nearest_ref(x, out_h, out_w):
    """PyTorch's F.interpolate(mode="nearest") source indices, on [n, h, w, c]."""
    def index(out, size):
        if out == size:
            return np.arange(out)
        if out == 2 * size:
            return np.arange(out) // 2
        scale = np.float32(size) / np.float32(out)
        return np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(int), size - 1)
    return x[:, index(out_h, x.shape[1])][:, :, index(out_w, x.shape[2])]


@pytest.mark.parametrize("shape,size", [((1, 1, 1, 1), (2, 2)), ((2, 3, 5, 7), (6, 10)), ((1, 4, 4, 16), (7, 9)),
                                        ((1, 5, 3, 2), (5, 3)), ((1, 3, 3, 4), (8, 5)), ((1, 8, 8, 128), (16, 16))])
def test_upsample_nearest(backend, shape, size):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = run(backend, "upsample_nearest", x, size=size)
    np.testing.assert_array_equal(out, nearest_ref(stored(x, backend[1]), *size))


def gelu_ref(x):
    from math import erf
    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 5, 14), (1, 1, 77, 640)])
def test_geglu(backend, shape):
    x = stored((np.random.default_rng(1).standard_normal(shape) * 3).astype(np.float32), backend[1])
    half = shape[-1] // 2
    xd = x.astype(np.float64)
    assert_close(run(backend, "geglu", x), xd[..., :half] * gelu_ref(xd[..., half:]), TOL[backend], "geglu")


@pytest.mark.parametrize("name,ref", [
    ("silu", lambda x: x / (1 + np.exp(-x))),
    ("relu", lambda x: np.maximum(x, 0)),
    ("leaky_relu", lambda x: np.where(x > 0, x, 0.2 * x)),
    ("gelu", gelu_ref),
])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 4, 4, 64)])
def test_activations(backend, name, ref, shape):
    x = stored((np.random.default_rng(2).standard_normal(shape) * 10).astype(np.float32), backend[1])
    assert_close(run(backend, name, x), ref(x.astype(np.float64)), TOL[backend], name)


@pytest.mark.parametrize("c", [5, 64])
def test_add_concat_and_channel_offset(backend, c):
    dtype = backend[1]
    rng = np.random.default_rng(3)
    a, b = stored(rand(rng, 2, 3, 4, c), dtype), stored(rand(rng, 2, 3, 4, c), dtype)
    exact = np.testing.assert_array_equal

    def added(got, x, y):  # float32 sums are exact to NumPy's; fp16/bf16 round them once more
        if dtype == "fp32":
            exact(got, x + y)
        else:
            assert_close(got, x.astype(np.float64) + y, TOL[backend], f"add {dtype}")

    added(run(backend, "add", a, b), a, b)
    other = stored(rand(rng, 2, 3, 4, c + 8), dtype)
    exact(run(backend, "concat", a, other), np.concatenate([a, other], axis=-1))
    offset = stored(rand(rng, 2, 1, 1, c), dtype)
    added(run(backend, "add_channel_offset", a, offset), a, offset)


def test_elementwise_shape_errors():
    rng = np.random.default_rng(3)
    a = rand(rng, 2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"b must be \[n, 1, 1, c\]"):
        _core.op("add_channel_offset", a, rand(rng, 2, 1, 1, 4))
    with pytest.raises(ValueError, match="concat"):
        _core.op("concat", a, rand(rng, 2, 3, 3, 5))
    with pytest.raises(ValueError, match="even channel count"):
        _core.op("geglu", a)


# ---- ops of the perceptual metrics (the CPU backend has them; CUDA names them as unsupported) ----

def max_pool_ref(x, k, s):
    n, h, w, c = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.full((n, ho, wo, c), -np.inf, np.float32)
    for ky in range(k):
        for kx in range(k):
            out = np.maximum(out, x[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s])
    return out


@pytest.mark.parametrize("shape,k,s", [((1, 7, 9, 5), 3, 2), ((2, 8, 8, 64), 2, 2), ((1, 3, 3, 1), 3, 2),
                                       ((1, 5, 4, 3), 2, 2), ((3, 11, 6, 17), 3, 1)])
def test_max_pool(shape, k, s):
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(_core.op("max_pool", x, size=(k, s)), max_pool_ref(x, k, s))


def test_max_pool_rejects_small_input():
    with pytest.raises(ValueError, match="smaller than the window"):
        _core.op("max_pool", np.zeros((1, 2, 5, 1), np.float32), size=(3, 2))


def l2_pool_ref(x):
    """DISTS' L2pooling: sqrt(depthwise conv(x^2, hann 3x3 / 16, stride 2, pad 1) + 1e-12)."""
    g = np.array([0.25, 0.5, 0.25])
    window = g[:, None] * g[None, :]
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    out = np.zeros((n, ho, wo, c))
    for ky in range(3):
        for kx in range(3):
            out += window[ky, kx] * sq[:, ky:ky + 2 * (ho - 1) + 1:2, kx:kx + 2 * (wo - 1) + 1:2]
    return np.sqrt(out + 1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 7, 8, 5), (1, 16, 15, 64), (1, 2, 3, 130)])
def test_l2_pool(shape):
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    assert_close(_core.op("l2_pool", x), l2_pool_ref(x), TOL["cpu", "fp32"], "l2_pool")


def lpips_distance_ref(a, b, w):
    a, b = a.astype(np.float64), b.astype(np.float64)
    na = a / (np.sqrt((a ** 2).sum(-1, keepdims=True)) + 1e-10)
    nb = b / (np.sqrt((b ** 2).sum(-1, keepdims=True)) + 1e-10)
    return (((na - nb) ** 2) @ w.astype(np.float64)).mean(axis=(1, 2))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 7, 64), (3, 13, 4, 192), (1, 31, 33, 3)])
def test_lpips_distance(shape):
    rng = np.random.default_rng(10)
    a = np.maximum(rand(rng, *shape), 0) + 0.01  # ReLU features
    b = np.maximum(rand(rng, *shape), 0) + 0.01
    w = np.abs(rand(rng, shape[-1]))
    assert_close(_core.op("lpips_distance", a, b, w), lpips_distance_ref(a, b, w), TOL["cpu", "fp32"], "lpips_distance")


def test_lpips_distance_of_identical_features_is_zero():
    a = np.abs(rand(np.random.default_rng(11), 2, 4, 4, 8))
    np.testing.assert_array_equal(_core.op("lpips_distance", a, a, np.ones(8, np.float32)), [0, 0])


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 9, 7, 5), (1, 40, 30, 64)])
def test_pair_moments(shape):
    rng = np.random.default_rng(12)
    a = rand(rng, *shape) * 2 + 30  # a large mean: the variance must not cancel away
    b = 0.5 * a + rand(rng, *shape)
    ad, bd = a.astype(np.float64), b.astype(np.float64)
    ma, mb = ad.mean(axis=(1, 2)), bd.mean(axis=(1, 2))
    va, vb = ad.var(axis=(1, 2)), bd.var(axis=(1, 2))
    cov = ((ad - ma[:, None, None]) * (bd - mb[:, None, None])).mean(axis=(1, 2))
    expected = np.stack([ma, mb, va, vb, cov], axis=1)[:, None]  # [n, 1, 5, c]
    out = _core.op("pair_moments", a, b)
    assert out.shape == (shape[0], 1, 5, shape[3])
    assert_close(out, expected, TOL["cpu", "fp32"], "pair_moments")
    assert_close(out[:, 0, 2:], expected[:, 0, 2:], 1e-5, "pair_moments variances")
